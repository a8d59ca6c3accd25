"""Eval-only mode: one checkpoint's variables evaluated by its config's task, the metrics written to
``<workdir>/metrics.jsonl`` (``python -m hdvila_jax.main --mode=eval``, ``hdvila_jax.evaluate``)."""
from __future__ import annotations

import json

import jax
import ml_collections
from absl import logging

from hdvila_jax import sharding, storage, variables_io
from hdvila_jax.config_checks import check_batch_sizes, check_config
from hdvila_jax.metrics_writer import MetricsWriter
from hdvila_jax.models import HDVILA, model_config_from_dict
from hdvila_jax.tasks.base import Task, TrainConfigError


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, task: Task | None = None) -> dict[str, float]:
    """Restore the variables of this workdir's latest checkpoint (else of ``config.init.restore``,
    which may hold more than the task model needs, e.g. a stage-2 checkpoint for a retrieval eval),
    evaluate them and write the metrics to ``workdir/metrics.jsonl``. ``task``: the task of the
    checked ``config`` (checked here when None)."""
    if task is None:
        _, task = check_config(config)
    mesh = sharding.make_mesh(config.mesh)
    check_batch_sizes(config, mesh)
    config = task.resolve(config)
    model_cfg = model_config_from_dict(config.model.to_dict())
    own = storage.join(workdir, "checkpoints")
    source, field = (own, "workdir") if storage.isdir(own) else (config.init.restore, "config.init.restore")
    if not source:
        raise TrainConfigError(f"eval mode: {own} has no checkpoints and config.init.restore is empty")
    target = variables_io.sharded_variable_shapes(config, model_cfg, mesh)
    restored = variables_io.restore_variables(source, target, field)
    if restored.unused:
        logging.info("eval of the stage-%d model: %d stored arrays of %s not used", config.stage, len(restored.unused),
                     restored.directory)
    storage.makedirs(workdir)
    metrics = task.evaluator(config, HDVILA(model_cfg), workdir)(restored.variables, mesh, restored.step)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    writer.write(restored.step, {f"eval/{k}": v for k, v in metrics.items()})
    writer.close()
    logging.info("eval of %s: %s", restored.directory, json.dumps(metrics))
    return metrics
