"""The one train loop of pretraining (stage 1, stage 2) and the downstream tasks, and eval-only mode.

The task (``hdvila_jax.tasks.get_task(config)``) chooses the model stage, the objective
and the evaluation. Resume order: this workdir's latest checkpoint -> ``config.init.restore``
(pretraining: a full train state of another run; fine-tuning tasks: the variables the task
model needs, taken out of any checkpoint, e.g. a converted stage-2 one, with a fresh
optimizer) -> pretrained initialisation (converted BERT/ResNet weights; for stage 2 also
``config.init.stage1_checkpoint`` on top) -> random.
"""
from __future__ import annotations

import json
import os
import signal
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from hdvila_jax import convert
from hdvila_jax.data import pipeline
from hdvila_jax.data.skip_corrupt import SKIP_COUNT_KEYS, pop_skip_counts
from hdvila_jax.models import HDVILA, ModelConfig
from hdvila_jax.tasks import Task, get_task
from hdvila_jax.tasks import qa_eval
from hdvila_jax.tasks import retrieval as retrieval_task
from hdvila_jax import sharding
from hdvila_jax.train import checkpointing, evaluation, train_state
from hdvila_jax.train.best_checkpoint import BestCheckpoint
from hdvila_jax.train.recipe import resolve_epochs, resolve_qa_outputs
from hdvila_jax.train.train_state import abstract_variables
from hdvila_jax.train.config_checks import TrainConfigError, check_config
from hdvila_jax.train.metrics_writer import MetricsWriter, Progress
from hdvila_jax.train.optimizer import Optimizer, flat_paths
from hdvila_jax.train.step_builder import build_step, check_batch_sizes

State = dict[str, Any]


class NonFiniteLossError(RuntimeError):
    """Training hit a non-finite loss or gradient; no checkpoint of that state was written."""


class Preemption:
    """Whether to save and stop now, asked after every step at no cost to the step loop. One process:
    a SIGTERM flag (installed while this object lives). Several: jax's preemption sync point, which
    the coordination service agrees on in the background (its own SIGTERM handler), so all
    processes stop after the same step without a collective per step."""

    def __init__(self):
        self.received = False
        self._previous = None
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.received = True

    def reached(self, step: int) -> bool:
        """Whether all processes agree to save ``step`` and stop."""
        if jax.process_count() == 1:
            return self.received
        return multihost_utils.reached_preemption_sync_point(step)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class PendingMetrics:
    """The train metrics of the steps since the last host sync, kept on the device: fetched only
    at log, eval and checkpoint steps (:meth:`fetch`), so the host dispatches step after step
    while the devices run them."""

    def __init__(self):
        self._steps: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        self._steps.append((step, metrics))

    def fetch(self, latest_good: int | None) -> dict[str, float]:
        """The host values of the newest step's metrics; raises :class:`NonFiniteLossError` naming the
        first pending step whose loss or gradient was not finite (that step left the state unchanged,
        and nothing after it is saved)."""
        fetched = jax.device_get(self._steps)
        self._steps = []
        for step, metrics in fetched:
            if not metrics["finite"]:
                raise NonFiniteLossError(
                    f"step {step}: loss {metrics['loss']} / gradient norm {metrics['grad_norm']} is not finite; "
                    f"stopping without saving (latest good checkpoint: step {latest_good})")
        return {k: float(v) for k, v in fetched[-1][1].items() if k != "finite"}


def _place(tree: Any, target: Any) -> Any:
    """Put host arrays in ``tree`` into the shardings of ``target``'s matching ``ShapeDtypeStruct``s."""
    def put(value, abstract):
        value = np.asarray(value, abstract.dtype)
        return jax.make_array_from_callback(abstract.shape, abstract.sharding, lambda index: value[index])
    return jax.tree.map(put, tree, target)


def pretrained_variables(config: ml_collections.ConfigDict, model_cfg: ModelConfig, variables: dict,
                         target: State) -> dict:
    """Overwrite random ``variables`` with converted BERT/ResNet weights named by ``config.init``."""
    abstract = abstract_variables(model_cfg, config.stage)
    loaded = abstract
    if config.init.bert:
        loaded, report = convert.load_bert(loaded, convert.load_state_dict(config.init.bert), model_cfg)
        logging.info("BERT weights from %s: %s", config.init.bert, report.summary())
    if config.init.resnet:
        loaded, report = convert.load_resnet(loaded, convert.load_state_dict(config.init.resnet), model_cfg)
        logging.info("ResNet weights from %s: %s", config.init.resnet, report.summary())

    def pick(random_leaf, loaded_leaf, abstract_leaf):
        if isinstance(loaded_leaf, jax.ShapeDtypeStruct):
            return random_leaf
        return _place(np.asarray(loaded_leaf), abstract_leaf)

    return jax.tree.map(pick, variables, loaded, {k: target[k] for k in ("params", "batch_stats")})


def stage1_variables(config: ml_collections.ConfigDict, model_cfg: ModelConfig, variables: dict,
                     target: State) -> dict:
    """Put the stage-1 parts of a stage-1 checkpoint (``config.init.stage1_checkpoint``) into ``variables``."""
    if not config.init.stage1_checkpoint:
        raise TrainConfigError("config.init.stage1_checkpoint is empty: stage 2 starts from a stage-1 checkpoint")
    parts = abstract_variables(model_cfg, 1)
    subset = {name: {k: target[name][k] for k in parts[name]} for name in ("params", "batch_stats")}
    restored, origin = checkpointing.restore_variables(config.init.stage1_checkpoint, subset,
                                                       "init.stage1_checkpoint")
    logging.info("stage-1 parts %s restored from %s", sorted(parts["params"]), origin)
    return {name: {**variables[name], **restored[name]} for name in ("params", "batch_stats")}


def fine_tuning_variables(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh, target: State,
                          task: Task) -> tuple[dict, str]:
    """The task model's variables out of ``config.init.restore`` (any checkpoint holding them, e.g.
    the stage-1 part of a converted stage-2 checkpoint); the task's new parts (the QA head) that
    the checkpoint lacks keep their random initialisation. Logs what was taken, new and dropped."""
    if not config.init.restore:
        raise TrainConfigError(f"config.init.restore is empty: task {config.task} fine-tunes a pretrained "
                               "checkpoint (e.g. a converted stage-2 one, python -m hdvila_jax.convert)")
    stored = checkpointing.checkpoint_shapes(checkpointing.variables_directory(config.init.restore, "init.restore"))
    wanted = traverse_util.flatten_dict({name: target[name] for name in ("params", "batch_stats")}, sep="/")
    new = sorted(p for p in wanted if p not in stored and p.startswith(task.new_parts))
    subset = traverse_util.unflatten_dict({p: v for p, v in wanted.items() if p not in new}, sep="/")
    variables, origin, dropped = checkpointing.restore_variables_subset(config.init.restore, subset, "init.restore")
    if new:
        fresh = traverse_util.flatten_dict(train_state.init_variables_sharded(config, model_cfg, mesh), sep="/")
        variables = traverse_util.unflatten_dict(
            {**traverse_util.flatten_dict(variables, sep="/"), **{p: fresh[p] for p in new}}, sep="/")
    taken = sorted({path.split("/")[1] for path in flat_paths(subset)})
    dropped_parts = sorted({"/".join(path.split("/")[:2]) for path in dropped})
    new_parts = sorted({"/".join(path.split("/")[:-2]) for path in new})
    logging.info("task %s: took %s (%d arrays) from %s; new (random init): %s; dropped %d arrays not in the task "
                 "model: %s", config.task, taken, len(wanted) - len(new), origin, new_parts or "none", len(dropped),
                 dropped_parts or "none")
    return variables, (f"pretrained variables of {origin} (new: {new_parts or 'nothing'}; "
                       f"dropped {dropped_parts or 'nothing'})")


def initial_state(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh, optimizer: Optimizer,
                  specs: State, checkpointer: checkpointing.Checkpointer, train_iter,
                  task: Task) -> tuple[State, str]:
    """The state to start from, following the resume order, and where it came from."""
    target = train_state.abstract_state(config, model_cfg, mesh, optimizer, specs)
    restored = checkpointer.restore_newest_intact(target, train_iter)
    if restored is not None:
        state, step, skipped = restored
        for line in skipped:
            logging.warning("damaged checkpoint skipped: %s", line)
        return state, (f"resumed from {checkpointer.directory} step {step}"
                       + (f" (skipped damaged: {'; '.join(skipped)})" if skipped else ""))
    if task.fine_tuning:
        variables, origin = fine_tuning_variables(config, model_cfg, mesh, target, task)
        return train_state.new_train_state(config, variables, mesh, specs, optimizer), origin
    if config.init.restore:
        other = checkpointing.Checkpointer(config.init.restore, keep=1, read_only=True)
        step = other.latest_step()
        if step is None:
            raise checkpointing.CheckpointError(f"config.init.restore={config.init.restore!r} holds no checkpoint")
        state = other.restore(step, target, train_iter)
        other.close()
        return state, f"restored from {config.init.restore} step {step}"
    variables = train_state.init_variables_sharded(config, model_cfg, mesh)
    origin = "random initialisation"
    if config.init.bert or config.init.resnet:
        variables = pretrained_variables(config, model_cfg, variables, target)
        origin = "pretrained BERT/ResNet weights"
    if config.stage == 2:
        variables = stage1_variables(config, model_cfg, variables, target)
        origin += f" + stage-1 checkpoint {config.init.stage1_checkpoint}"
    return train_state.new_train_state(config, variables, mesh, specs, optimizer), origin


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2) + "\n")


class Evaluator:
    """The evaluation of a config. Video QA: accuracy (overall, per answer type) on
    ``data.val_files`` with every question's prediction written to
    ``workdir/predictions/step_N.jsonl``. Otherwise retrieval recall on ``data.val_files``
    (captions never MLM-masked) when set, and multiple-choice accuracy on ``data.mc_files``."""

    def __init__(self, config: ml_collections.ConfigDict, model: HDVILA, workdir: str):
        self.config = config
        self.workdir = workdir
        task = get_task(config)
        if task.objective == "qa":
            if not config.data.val_files:
                raise TrainConfigError("config.data.val_files is empty: task qa evaluates on its records")
            self.qa = qa_eval.QAEvaluator(task, model, config.data.val_files, config.data.ans2label)
            self.encode = self.score_mc = None
            return
        self.qa = None
        self.encode = evaluation.make_encode_fn(model) if config.data.val_files else None
        self.mc_files = config.data.get("mc_files", "")
        self.score_mc = retrieval_task.make_mc_score_fn(model) if self.mc_files else None
        if self.encode is None and self.score_mc is None:
            raise TrainConfigError("config.data.val_files (and data.mc_files) are empty: nothing to evaluate")

    def _batches(self, files: str):
        eval_config = self.config.copy_and_resolve_references()
        eval_config.data.mlm_probability = 0.0
        eval_config.data.val_files = files
        return pipeline.make_eval_iterator(eval_config, jax.process_index(), jax.process_count(),
                                           batch_size=self.config.eval_batch_size)

    def __call__(self, variables: dict, mesh: Mesh, step: int) -> dict[str, float]:
        metrics = {}
        if self.qa is not None:
            metrics, rows = self.qa(variables, mesh, self._batches(self.config.data.val_files))
            if jax.process_index() == 0:
                qa_eval.write_predictions(os.path.join(self.workdir, "predictions", f"step_{step}.jsonl"), rows)
        if self.encode is not None:
            metrics.update(evaluation.evaluate_retrieval(self.encode, variables,
                                                         self._batches(self.config.data.val_files), mesh))
        if self.score_mc is not None:
            metrics.update(retrieval_task.evaluate_multiple_choice(self.score_mc, variables,
                                                                   self._batches(self.mc_files), mesh))
        return metrics


def _variables(state: State) -> dict:
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _skip_metrics(local_counts: np.ndarray) -> dict[str, float]:
    """Damaged records / shards skipped so far by all processes' readers (``skip_corrupt``)."""
    if jax.process_count() > 1:
        local_counts = multihost_utils.process_allgather(local_counts).sum(axis=0)
    return {f"data_{key}": float(n) for key, n in zip(SKIP_COUNT_KEYS, local_counts)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train ``config`` in ``workdir`` (resuming when it holds checkpoints); return the last eval metrics.

    Between log, eval and checkpoint steps the loop only fetches batches and dispatches steps: the
    metrics stay on the device (:class:`PendingMetrics`) and preemption costs no collective."""
    check_config(config)
    task = get_task(config)
    os.makedirs(workdir, exist_ok=True)
    config = resolve_epochs(resolve_qa_outputs(config))
    built = build_step(config)
    mesh, model_cfg = built.mesh, built.model_cfg
    write_config(config, workdir)

    train_iter = pipeline.make_train_iterator(config, jax.process_index(), jax.process_count())
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    best = BestCheckpoint(workdir, config.best_metric) if config.best_metric else None
    preemption = Preemption()
    try:
        state, origin = initial_state(config, model_cfg, mesh, built.optimizer, built.specs, checkpointer,
                                      train_iter, task)
        step = int(jax.device_get(state["step"]))
        logging.info("task %s, stage %d: starting at step %d of %d from %s; mesh %s", task.name, config.stage, step,
                     config.total_steps, origin, dict(mesh.shape))
        evaluate = Evaluator(config, HDVILA(model_cfg), workdir)

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
        preemption.uninstall()
        checkpointer.wait()
        checkpointer.close()
        writer.close()
        train_iter.close()  # stops data.num_workers worker processes


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Eval-only mode: restore the variables of this workdir's latest checkpoint (else of
    ``config.init.restore``, which may hold more than the task model needs, e.g. a stage-2
    checkpoint for a retrieval eval) and write the task's metrics to ``workdir/metrics.jsonl``."""
    check_config(config)
    mesh = sharding.make_mesh(config.mesh)
    check_batch_sizes(config, mesh)
    config = resolve_qa_outputs(config)
    model_cfg = check_config(config)
    own = os.path.join(workdir, "checkpoints")
    source, field = (own, "workdir") if os.path.isdir(own) else (config.init.restore, "init.restore")
    if not source:
        raise TrainConfigError(f"eval mode: {own} has no checkpoints and config.init.restore is empty")
    target = train_state.sharded_variable_shapes(config, model_cfg, mesh)
    variables, origin, dropped = checkpointing.restore_variables_subset(source, target, field)
    if dropped:
        logging.info("eval of the stage-%d model: %d stored arrays of %s not used", config.stage, len(dropped), origin)
    step_dir = os.path.basename(os.path.dirname(origin)) if origin.endswith("variables") else ""
    step = int(step_dir) if step_dir.isdigit() else 0
    os.makedirs(workdir, exist_ok=True)
    metrics = Evaluator(config, HDVILA(model_cfg), workdir)(variables, mesh, step)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
    writer.close()
    logging.info("eval of %s: %s", origin, json.dumps(metrics))
    return metrics
