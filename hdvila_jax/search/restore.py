"""Restoring a trained model's variables, sharded over a mesh, for indexing and querying."""
from __future__ import annotations

import os

import ml_collections
from jax.sharding import Mesh

from hdvila_jax.models import ModelConfig
from hdvila_jax.search.index import SearchError
from hdvila_jax.train import checkpointing, train_state


def restore_variables(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh,
                      checkpoint: str) -> tuple[dict, str]:
    """``{'params', 'batch_stats'}`` of the stage-1 dual encoder (all that search uses) from
    ``checkpoint`` (a run's checkpoints dir, a step dir or a converted variables checkpoint, of
    stage 1 or 2: the stage-1 part is taken) in their shardings, and the directory they came
    from. Errors name ``--checkpoint``."""
    if not checkpoint:
        raise SearchError("--checkpoint is empty: pass a checkpoints dir, a step dir or converted variables")
    if not os.path.isdir(checkpoint):
        raise SearchError(f"--checkpoint={checkpoint!r} does not exist")
    target = train_state.sharded_variable_shapes(config, model_cfg, mesh, stage=1)
    try:
        variables, origin, _ = checkpointing.restore_variables_subset(checkpoint, target, "checkpoint")
    except checkpointing.CheckpointError as err:
        raise SearchError(f"--{str(err)[len('config.'):]}") from err
    return variables, origin
