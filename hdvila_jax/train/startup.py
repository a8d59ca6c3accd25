"""Where a run starts. Resume order: this workdir's latest checkpoint -> ``config.init.restore``
(pretraining: a full train state of another run; fine-tuning tasks: the variables the task model
needs, taken out of any checkpoint, e.g. a converted stage-2 one, with a fresh optimizer) ->
pretrained initialisation (converted BERT/ResNet weights; for stage 2 also
``config.init.stage1_checkpoint`` on top) -> random.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from jax.sharding import Mesh

from hdvila_jax import convert, variables_io
from hdvila_jax.models import ModelConfig
from hdvila_jax.models.variables import abstract_variables
from hdvila_jax.tasks.base import Task, TrainConfigError
from hdvila_jax.train import checkpointing, train_state
from hdvila_jax.train.optimizer import Optimizer, flat_paths
from hdvila_jax.variables_io import CheckpointError

State = dict[str, Any]


def _place(tree: Any, target: Any) -> Any:
    """Put host arrays in ``tree`` into the shardings of ``target``'s matching ``ShapeDtypeStruct``s."""
    def put(value, abstract):
        value = np.asarray(value, abstract.dtype)
        return jax.make_array_from_callback(abstract.shape, abstract.sharding, lambda index: value[index])
    return jax.tree.map(put, tree, target)


def pretrained_variables(config: ml_collections.ConfigDict, model_cfg: ModelConfig, variables: dict,
                         target: State) -> dict:
    """Overwrite random ``variables`` with converted BERT/ResNet weights named by ``config.init``."""
    loaded = abstract_variables(model_cfg, config.stage)
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
    restored = variables_io.restore_variables(config.init.stage1_checkpoint, subset, "config.init.stage1_checkpoint")
    logging.info("stage-1 parts %s restored from %s", sorted(parts["params"]), restored.directory)
    return {name: {**variables[name], **restored.variables[name]} for name in ("params", "batch_stats")}


def fine_tuning_variables(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh, target: State,
                          task: Task) -> tuple[dict, str]:
    """The task model's variables out of ``config.init.restore`` (any checkpoint holding them, e.g.
    the stage-1 part of a converted stage-2 checkpoint); the task's new parts (the QA head) that
    the checkpoint lacks keep their random initialisation. Logs what was taken, new and dropped."""
    if not config.init.restore:
        raise TrainConfigError(f"config.init.restore is empty: task {config.task} fine-tunes a pretrained "
                               "checkpoint (e.g. a converted stage-2 one, python -m hdvila_jax.convert)")
    field = "config.init.restore"
    stored = variables_io.checkpoint_shapes(variables_io.variables_directory(config.init.restore, field))
    wanted = traverse_util.flatten_dict({name: target[name] for name in ("params", "batch_stats")}, sep="/")
    new = sorted(p for p in wanted if p not in stored and p.startswith(task.new_parts))
    subset = traverse_util.unflatten_dict({p: v for p, v in wanted.items() if p not in new}, sep="/")
    restored = variables_io.restore_variables(config.init.restore, subset, field)
    variables, origin, dropped = restored.variables, restored.directory, restored.unused
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
            raise CheckpointError(f"config.init.restore={config.init.restore!r} holds no checkpoint")
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
