"""Restoring a trained model's variables, sharded over a mesh, for indexing and querying."""
from __future__ import annotations

import ml_collections
from jax.sharding import Mesh

from hdvila_jax.encoder import EncoderError, restore_stage1_variables
from hdvila_jax.models import ModelConfig
from hdvila_jax.search.index import SearchError


def restore_variables(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh,
                      checkpoint: str) -> tuple[dict, str]:
    """``{'params', 'batch_stats'}`` of the stage-1 dual encoder (all that search uses) from
    ``checkpoint`` (a run's checkpoints dir, a step dir or a converted variables checkpoint, of
    stage 1 or 2: the stage-1 part is taken) in their shardings, and the directory they came
    from. Errors name ``--checkpoint``."""
    try:
        return restore_stage1_variables(config, model_cfg, mesh, checkpoint)
    except EncoderError as err:
        raise SearchError(str(err)) from err
