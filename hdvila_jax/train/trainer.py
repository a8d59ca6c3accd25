"""The train loop of both pretraining stages, and eval-only mode.

Resume order: this workdir's latest checkpoint -> ``config.init.restore`` (a full train
state of another run) -> pretrained initialisation (converted BERT/ResNet weights; for
stage 2 also ``config.init.stage1_checkpoint`` on top) -> random.
"""
from __future__ import annotations

import glob
import json
import os
import signal
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from hdvila_jax import convert
from hdvila_jax.data import pipeline
from hdvila_jax.models import HDVILA, ModelConfig
from hdvila_jax.train import checkpointing, evaluation, sharding, train_state
from hdvila_jax.train.train_state import abstract_variables
from hdvila_jax.train.config_checks import TrainConfigError, check_config
from hdvila_jax.train.metrics_writer import MetricsWriter, Progress
from hdvila_jax.train.optimizer import Optimizer, make_optimizer
from hdvila_jax.train.train_step import jit_train_step

State = dict[str, Any]


class NonFiniteLossError(RuntimeError):
    """Training hit a non-finite loss or gradient; no checkpoint of that state was written."""


class PreemptionFlag:
    """Set by SIGTERM while installed; all processes agree on it before acting."""

    def __init__(self):
        self.received = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.received = True

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.received
        return bool(multihost_utils.process_allgather(np.int32(self.received)).max())

    def uninstall(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def prepare_demo_data(config: ml_collections.ConfigDict) -> None:
    """Write the demo records with ``data_pipelines.make_demo`` when the config asks and they are missing."""
    if not config.demo_data_dir or glob.glob(config.data.train_files):
        return
    if jax.process_index() == 0:
        from data_pipelines import make_demo
        logging.info("demo data missing: generating it in %s", config.demo_data_dir)
        make_demo.main(["--output", config.demo_data_dir, "--workers", str(os.cpu_count() or 1)])
    multihost_utils.sync_global_devices("demo data ready")


def check_batch_sizes(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Every (micro-)batch must split evenly over the batch shards and processes."""
    shards = sharding.data_parallel_size(mesh)
    micro = config.batch_size // config.grad_accum_steps
    if micro % shards:
        raise TrainConfigError(f"config.batch_size {config.batch_size} / grad_accum_steps {config.grad_accum_steps} "
                               f"= {micro} does not split over {shards} batch shards (config.mesh)")
    if config.eval_batch_size % shards:
        raise TrainConfigError(f"config.eval_batch_size {config.eval_batch_size} does not split over {shards} "
                               "batch shards (config.mesh)")


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


def initial_state(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh, optimizer: Optimizer,
                  specs: State, checkpointer: checkpointing.Checkpointer, train_iter) -> tuple[State, str]:
    """The state to start from, following the resume order, and where it came from."""
    target = train_state.abstract_state(config, model_cfg, mesh, optimizer, specs)
    latest = checkpointer.latest_step()
    if latest is not None:
        return checkpointer.restore(latest, target, train_iter), f"resumed from {checkpointer.directory} step {latest}"
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


def run_evaluation(config: ml_collections.ConfigDict, encode, variables: dict, mesh: Mesh) -> dict[str, float]:
    """Retrieval metrics on the validation records (captions never MLM-masked)."""
    eval_config = config.copy_and_resolve_references()
    eval_config.data.mlm_probability = 0.0
    batches = pipeline.make_eval_iterator(eval_config, jax.process_index(), jax.process_count(),
                                          batch_size=config.eval_batch_size)
    return evaluation.evaluate_retrieval(encode, variables, batches, mesh)


def _variables(state: State) -> dict:
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _host_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train ``config`` in ``workdir`` (resuming when it holds checkpoints); return the last eval metrics."""
    model_cfg = check_config(config)
    mesh = sharding.make_mesh(config.mesh)
    check_batch_sizes(config, mesh)
    os.makedirs(workdir, exist_ok=True)
    prepare_demo_data(config)
    write_config(config, workdir)

    model = HDVILA(model_cfg)
    optimizer = make_optimizer(config.optimizer, abstract_variables(model_cfg, config.stage)["params"],
                               config.total_steps)
    specs = train_state.state_specs(config, model_cfg, mesh, optimizer)
    train_iter = pipeline.make_train_iterator(config, jax.process_index(), jax.process_count())
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config.keep_checkpoints)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    preemption = PreemptionFlag()
    try:
        state, origin = initial_state(config, model_cfg, mesh, optimizer, specs, checkpointer, train_iter)
        step = int(jax.device_get(state["step"]))
        logging.info("stage %d: starting at step %d from %s; mesh %s", config.stage, step, origin, dict(mesh.shape))
        train_step = jit_train_step(config, model, optimizer, mesh, specs)
        encode = evaluation.make_encode_fn(model)
        eval_metrics = {}
        if step == 0:
            eval_metrics = run_evaluation(config, encode, _variables(state), mesh)
            writer.write(0, {f"eval/{k}": v for k, v in eval_metrics.items()})
            logging.info("step 0 eval: %s", eval_metrics)
        progress = Progress(config.total_steps, config.batch_size)
        while step < config.total_steps:
            batch = sharding.global_batch(next(train_iter), mesh)
            state, metrics = train_step(state, batch)
            metrics = _host_metrics(metrics)
            step += 1
            if not metrics.pop("finite"):
                raise NonFiniteLossError(
                    f"step {step}: loss {metrics['loss']} / gradient norm {metrics['grad_norm']} is not finite; "
                    f"stopping without saving (latest good checkpoint: step {checkpointer.latest_step()})")
            if step % config.log_every_steps == 0 or step == config.total_steps:
                metrics.update(progress.update(step))
                writer.write(step, {f"train/{k}": v for k, v in metrics.items()})
                progress.log(step, metrics)
            if step % config.eval_every_steps == 0 or step == config.total_steps:
                eval_metrics = run_evaluation(config, encode, _variables(state), mesh)
                writer.write(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
                logging.info("step %d eval: %s", step, eval_metrics)
            preempted = preemption.agreed()
            if step % config.ckpt_every_steps == 0 or step == config.total_steps or preempted:
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


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Eval-only mode: restore the variables of this workdir's latest checkpoint (else of
    ``config.init.restore``) and write retrieval metrics to ``workdir/metrics.jsonl``."""
    model_cfg = check_config(config)
    mesh = sharding.make_mesh(config.mesh)
    check_batch_sizes(config, mesh)
    prepare_demo_data(config)
    own = os.path.join(workdir, "checkpoints")
    source, field = (own, "workdir") if os.path.isdir(own) else (config.init.restore, "init.restore")
    if not source:
        raise TrainConfigError(f"eval mode: {own} has no checkpoints and config.init.restore is empty")
    specs = train_state.variable_specs(config, model_cfg, mesh)
    target = jax.tree.map(lambda s, spec: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.NamedSharding(mesh, spec)),
                          abstract_variables(model_cfg, config.stage), specs,
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    variables, origin = checkpointing.restore_variables(source, target, field)
    step = int(os.path.basename(origin)) if os.path.basename(origin).isdigit() else 0
    metrics = run_evaluation(config, evaluation.make_encode_fn(HDVILA(model_cfg)), variables, mesh)
    os.makedirs(workdir, exist_ok=True)
    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    writer.write(step, {f"eval/{k}": v for k, v in metrics.items()})
    writer.close()
    logging.info("eval of %s: %s", origin, json.dumps(metrics))
    return metrics
