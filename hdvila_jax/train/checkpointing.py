"""Orbax checkpoints of the train state and the input pipeline.

A checkpoint step directory holds three items: ``variables`` (``params`` and
``batch_stats``, what a later stage or eval-only mode restores), ``train`` (``opt_state``,
``step``, ``rng``) and ``data`` (each process's grain iterator state). Saves are
asynchronous; the last ``keep`` steps are kept.
"""
from __future__ import annotations

import os
from typing import Any

import grain
import orbax.checkpoint as ocp
from etils import epath

from hdvila_jax import variables_io

State = dict[str, Any]
VARIABLE_KEYS = ("params", "batch_stats")
TRAIN_KEYS = ("opt_state", "step", "rng")


class CheckpointError(ValueError):
    """A checkpoint path holds no usable checkpoint."""


class Checkpointer:
    """The checkpoints of one run directory (``<workdir>/checkpoints``)."""

    def __init__(self, directory: str, keep: int, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=not read_only,
                                               create=not read_only, read_only=read_only)
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(epath.Path(self.directory), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: State, data_iterator: grain.DatasetIterator) -> None:
        """Start an asynchronous save of ``state`` and the iterator's position at ``step``."""
        self.manager.save(step, args=ocp.args.Composite(
            variables=ocp.args.StandardSave({k: state[k] for k in VARIABLE_KEYS}),
            train=ocp.args.StandardSave({k: state[k] for k in TRAIN_KEYS}),
            data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)

    def restore(self, step: int, target: State, data_iterator: grain.DatasetIterator | None) -> State:
        """The full state at ``step`` in the shardings of ``target`` (``ShapeDtypeStruct``s); also
        moves ``data_iterator`` (when given) to where that step left it."""
        items = dict(variables=ocp.args.StandardRestore({k: target[k] for k in VARIABLE_KEYS}),
                     train=ocp.args.StandardRestore({k: target[k] for k in TRAIN_KEYS}))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {**restored["variables"], **restored["train"]}

    def restore_variables(self, step: int, target: dict) -> dict:
        """Only the ``variables`` item (a sub-tree of it when ``target`` is one)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(target)))
        return restored["variables"]

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def restore_variables(path: str, target: dict, field: str) -> tuple[dict, str]:
    """``{'params', 'batch_stats'}`` from a run's checkpoint directory (its latest step), from
    one step directory, or from a variables checkpoint written by ``python -m hdvila_jax.convert``.
    ``field`` names the config key holding ``path`` for error messages. Returns the variables
    and the directory they came from."""
    path = os.path.abspath(path)
    if os.path.isfile(os.path.join(path, "_METADATA")):  # converted weights: variables only
        return variables_io.restore_variables(path, target), path
    if os.path.isdir(os.path.join(path, "variables")):
        step_dir = path
        restored = ocp.StandardCheckpointer().restore(os.path.join(path, "variables"), target)
        return restored, step_dir
    if not os.path.isdir(path):
        raise CheckpointError(f"config.{field}={path!r} does not exist")
    checkpointer = Checkpointer(path, keep=1, read_only=True)
    step = checkpointer.latest_step()
    if step is None:
        raise CheckpointError(f"config.{field}={path!r} holds no checkpoint step")
    variables = checkpointer.restore_variables(step, target)
    checkpointer.close()
    return variables, os.path.join(path, str(step))
