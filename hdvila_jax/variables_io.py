"""Reading and writing a model's variables (``{'params', 'batch_stats'}``) as orbax checkpoints: the
one restore layer under training and inference alike.

A variables path may be a converted variables checkpoint (``hdvila_jax.convert``), a step directory
of a run (its ``variables`` item) or a run's checkpoint directory (its latest step). Restoring
takes exactly what a target tree names, sharded as its ``ShapeDtypeStruct``s say: all of a stage-1
model, or the stage-1 part of a stage-2 checkpoint. Paths are local or ``gs://`` (``hdvila_jax.storage``).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.sharding import Mesh, PartitionSpec as P

from hdvila_jax import sharding, storage
from hdvila_jax.models import ModelConfig
from hdvila_jax.models.variables import abstract_variables


class CheckpointError(ValueError):
    """A checkpoint path holds no usable checkpoint; the message names the path and the flag or field."""


@dataclasses.dataclass
class RestoredVariables:
    """Variables read by :func:`restore_variables`, the orbax directory they came from and the stored
    leaf paths that the target did not take."""

    variables: dict
    directory: str
    unused: list[str]

    @property
    def step(self) -> int:
        """The run step of a ``<run>/checkpoints/<step>/variables`` directory; 0 for converted weights."""
        step_dir = os.path.basename(os.path.dirname(self.directory))
        return int(step_dir) if self.directory.endswith("variables") and step_dir.isdigit() else 0


def save_variables(path: str | os.PathLike, variables: dict[str, Any]) -> None:
    """Write ``variables`` to a new orbax checkpoint directory ``path`` (absolute, relative or gs://)."""
    path = storage.absolute(path)
    if storage.exists(path):
        raise FileExistsError(f"refusing to overwrite existing checkpoint directory {path}")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(storage.path(path), variables)
    checkpointer.wait_until_finished()


def latest_step(directory: str) -> int | None:
    """The newest complete step of a run's checkpoint directory (None without one)."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    manager = ocp.CheckpointManager(storage.path(storage.absolute(directory)), options=options)
    try:
        return manager.latest_step()
    finally:
        manager.close()


def has_checkpoint(directory: str) -> bool:
    """Whether ``directory`` is a run's checkpoint directory holding a complete step."""
    return storage.isdir(directory) and latest_step(directory) is not None


def variables_directory(path: str, field: str) -> str:
    """The orbax directory of the ``{'params', 'batch_stats'}`` tree behind ``path`` (see the module
    docstring); ``field`` names the config key or flag holding ``path`` in error messages."""
    path = storage.absolute(path)
    if storage.isfile(storage.join(path, "_METADATA")):
        return path
    if storage.isdir(storage.join(path, "variables")):
        return storage.join(path, "variables")
    if not storage.isdir(path):
        raise CheckpointError(f"{field}={path!r} does not exist")
    step = latest_step(path)
    if step is None:
        raise CheckpointError(f"{field}={path!r} holds no checkpoint step")
    return storage.join(path, str(step), "variables")


def checkpoint_shapes(directory: str) -> dict[str, tuple[int, ...]]:
    """Shape of every leaf stored in a variables directory, by '/'-joined path (``params/text/...``)."""
    metadata = ocp.PyTreeCheckpointer().metadata(storage.path(directory)).item_metadata
    tree = dict(metadata.tree if hasattr(metadata, "tree") else metadata)
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(tree, sep="/").items()}


def restore_variables(path: str | os.PathLike, target: Any = None, field: str = "checkpoint") -> RestoredVariables:
    """The variables behind ``path`` (any path :func:`variables_directory` accepts). ``target``
    (``ShapeDtypeStruct``s with shardings, or arrays) takes just the leaves it names, in its
    shardings, from a checkpoint that may hold more (e.g. the stage-1 model out of a stage-2
    checkpoint); a leaf it names that is missing or of another shape raises CheckpointError naming
    it. Without ``target`` everything stored is read as saved. ``field`` names the config key or
    flag holding ``path`` in error messages."""
    path = os.fspath(path)
    directory = variables_directory(path, field)
    if target is None:
        return RestoredVariables(ocp.StandardCheckpointer().restore(storage.path(directory)), directory, [])
    stored = checkpoint_shapes(directory)
    wanted = traverse_util.flatten_dict(target, sep="/")
    missing = sorted(set(wanted) - set(stored))
    if missing:
        raise CheckpointError(f"{field}={path!r} lacks {len(missing)} variables the model needs, e.g. "
                              + ", ".join(missing[:5]))
    wrong = [f"{p} {stored[p]} (model {tuple(leaf.shape)})" for p, leaf in wanted.items()
             if stored[p] != tuple(leaf.shape)]
    if wrong:
        raise CheckpointError(f"{field}={path!r} has variables of other shapes than the model: "
                              + ", ".join(wrong[:5]))
    restore_args = jax.tree.map(_restore_args, target)
    try:
        restored = ocp.PyTreeCheckpointer().restore(storage.path(directory), args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    except ValueError as e:
        raise CheckpointError(f"{field}={path!r}: {e}") from e
    return RestoredVariables(restored, directory, sorted(set(stored) - set(wanted)))


def _restore_args(leaf: Any) -> ocp.RestoreArgs:
    """Restore a leaf into the sharding of a ``jax.Array`` / ``ShapeDtypeStruct``, else as numpy."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        return ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype)
    return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=leaf.shape, dtype=leaf.dtype)


def variable_specs(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh,
                   stage: int | None = None) -> dict:
    """PartitionSpecs of ``{'params', 'batch_stats'}`` of the ``stage`` (default ``config.stage``) model
    under ``config.sharding_rules`` and ``config.fsdp_min_size``."""
    rules = [tuple(rule) for rule in config.sharding_rules]
    return {name: sharding.param_specs(tree, mesh, rules, config.fsdp_min_size)
            for name, tree in abstract_variables(model_cfg, stage or config.stage).items()}


def sharded_variable_shapes(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh,
                            stage: int | None = None) -> dict:
    """``ShapeDtypeStruct``s with shardings of the ``stage`` model's variables (a restore target)."""
    stage = stage or config.stage
    return jax.tree.map(lambda s, spec: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.NamedSharding(mesh, spec)),
                        abstract_variables(model_cfg, stage), variable_specs(config, model_cfg, mesh, stage),
                        is_leaf=lambda x: isinstance(x, P))
