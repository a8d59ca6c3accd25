"""The one train loop of pretraining (stage 1, stage 2) and the downstream tasks.

The task (``hdvila_jax.tasks``) gives the loss, the batch shapes and the evaluation; where the run
starts (resume, another run, converted weights, random) is ``startup``'s; eval-only mode is
``hdvila_jax.eval_only``.
"""
from __future__ import annotations

import sys
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from hdvila_jax import sharding, storage
from hdvila_jax.config_checks import check_config
from hdvila_jax.data import pipeline
from hdvila_jax.data.skip_corrupt import SKIP_COUNT_KEYS, pop_skip_counts
from hdvila_jax.metrics_writer import MetricsWriter
from hdvila_jax.models import HDVILA
from hdvila_jax.tasks.base import Task
from hdvila_jax.train import checkpointing, startup
from hdvila_jax.train.shared_workdir import check_shared_workdir
from hdvila_jax.train.workdir_lock import WorkdirLock
from hdvila_jax.train.best_checkpoint import BestCheckpoint
from hdvila_jax.train.pending_metrics import PendingMetrics
from hdvila_jax.train.preemption import Preemption
from hdvila_jax.train.progress import Progress
from hdvila_jax.train.recipe import resolve_epochs
from hdvila_jax.train.step_builder import build_step

State = dict[str, Any]


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The run's resolved config as ``<workdir>/config.json`` (by process 0; replaced atomically)."""
    if jax.process_index() == 0:
        storage.write_text(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=2) + "\n")


def _variables(state: State) -> dict:
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _skip_metrics(local_counts: np.ndarray) -> dict[str, float]:
    """Damaged records / shards skipped so far by all processes' readers (``skip_corrupt``)."""
    if jax.process_count() > 1:
        local_counts = multihost_utils.process_allgather(local_counts).sum(axis=0)
    return {f"data_{key}": float(n) for key, n in zip(SKIP_COUNT_KEYS, local_counts)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, task: Task | None = None) -> dict[str, float]:
    """Train ``config`` in ``workdir`` (a local folder or ``gs://bucket/run``; resuming when it holds
    checkpoints); return the last eval metrics.
    ``task``: the task of ``config`` as ``config_checks.check_config`` gave it (checked here when None).

    Between log, eval and checkpoint steps the loop only fetches batches and dispatches steps: the
    metrics stay on the device (:class:`PendingMetrics`) and preemption costs no collective."""
    if task is None:
        _, task = check_config(config)
    storage.makedirs(workdir)
    check_shared_workdir(workdir)  # several processes: all see one workdir, or all stop here
    lock = WorkdirLock(workdir)  # one run per workdir, or this one stops here
    try:
        return _train(config, workdir, task)
    finally:
        lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str, task: Task) -> dict[str, float]:
    """:func:`train_and_evaluate` once the workdir is checked and locked."""
    config = resolve_epochs(task.resolve(config))
    built = build_step(config, task=task)
    mesh, model_cfg = built.mesh, built.model_cfg
    write_config(config, workdir)

    train_iter = pipeline.make_train_iterator(config, jax.process_index(), jax.process_count())
    checkpointer = checkpointing.Checkpointer(storage.join(workdir, "checkpoints"), config.keep_checkpoints)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    best = BestCheckpoint(workdir, config.best_metric) if config.best_metric else None
    preemption = Preemption()
    try:
        state, origin = startup.initial_state(config, model_cfg, mesh, built.optimizer, built.specs, checkpointer,
                                              train_iter, task)
        step = int(jax.device_get(state["step"]))
        if writer.drop_after(step):
            logging.info("metrics.jsonl: dropped the lines after step %d (written before the interruption)", step)
        logging.info("task %s, stage %d: starting at step %d of %d from %s; mesh %s", task.name, config.stage, step,
                     config.total_steps, origin, dict(mesh.shape))
        evaluate = task.evaluator(config, HDVILA(model_cfg), workdir)

        def run_eval(at_step: int) -> dict[str, float]:
            metrics = evaluate(_variables(state), mesh, at_step)
            writer.write(at_step, {f"eval/{k}": v for k, v in metrics.items()})
            logging.info("step %d eval: %s", at_step, metrics)
            if best is not None and best.update(at_step, metrics, _variables(state)):
                logging.info("new best %s = %.3f at step %d: %s", best.metric, best.best_value, at_step,
                             best.record["path"])
            return metrics

        eval_metrics = {}
        if step == 0:
            eval_metrics = run_eval(0)
        progress = Progress(config.total_steps, config.batch_size)
        skipped = np.zeros(len(SKIP_COUNT_KEYS), np.int64)  # this run's, this process's
        pending = PendingMetrics()
        while step < config.total_steps:
            local = next(train_iter)
            skipped += pop_skip_counts(local)
            state, metrics = built.step(state, sharding.global_batch(local, mesh))
            step += 1
            pending.add(step, metrics)
            last = step == config.total_steps
            log = step % config.log_every_steps == 0 or last
            run_eval_now = step % config.eval_every_steps == 0 or last
            preempted = preemption.reached(step)
            save = step % config.ckpt_every_steps == 0 or last or preempted
            if not (log or run_eval_now or save):
                continue  # no host sync: the next batch is prepared while the devices run this step
            metrics = pending.fetch(latest_good=checkpointer.latest_step())
            if log:
                metrics.update(progress.update(step))
                metrics.update(_skip_metrics(skipped))
                writer.write(step, {f"train/{k}": v for k, v in metrics.items()})
                progress.log(step, metrics)
            if run_eval_now:
                eval_metrics = run_eval(step)
            if save:
                checkpointer.save(step, state, train_iter)
            if preempted:
                logging.warning("preempted: checkpoint of step %d written, exiting", step)
                break
        return eval_metrics
    finally:
        failing = sys.exc_info()[0] is not None
        preemption.uninstall()
        checkpointer.finish(failing)
        writer.close(failing)
        train_iter.close()  # stops data.num_workers worker processes
