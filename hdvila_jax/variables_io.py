"""Saving and restoring a model's variables (``{'params', 'batch_stats'}``) as orbax checkpoints."""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


def save_variables(path: str | os.PathLike, variables: dict[str, Any]) -> None:
    """Write ``variables`` to a new orbax checkpoint directory ``path`` (absolute or relative)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        raise FileExistsError(f"refusing to overwrite existing checkpoint directory {path}")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, variables)
    checkpointer.wait_until_finished()


def restore_variables(path: str | os.PathLike, target: Any = None) -> dict[str, Any]:
    """Read variables saved by :func:`save_variables`; ``target`` (arrays or
    ``jax.ShapeDtypeStruct``s with shardings) restores them with that structure and placement."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no orbax checkpoint directory at {path}")
    return ocp.StandardCheckpointer().restore(path, target)
