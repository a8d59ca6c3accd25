"""Moved to :mod:`hdvila_jax.sharding`, which train, tasks and search share without importing each other.

These names stay here only while ``train/trainer.py``, ``train/train_step.py`` and ``search/`` still
import ``hdvila_jax.train.sharding``; they are the same objects as there.
"""
from hdvila_jax.sharding import (BATCH_AXES, ShardingConfigError, batch_sharding, data_parallel_size,  # noqa: F401
                                 gather_to_host, global_batch, make_mesh, mesh_shape, named, param_specs,
                                 replicated)
