"""Checks of a trainer config that run before anything is traced or compiled: the fields every
task needs here, the task's own in its ``Task.check``. Each entry point checks its config once."""
from __future__ import annotations

import ml_collections
from jax.sharding import Mesh

from hdvila_jax import sharding, tpu_flags
from hdvila_jax.models import ModelConfig, model_config_from_dict
from hdvila_jax.tasks import Task, get_task
from hdvila_jax.tasks.base import TrainConfigError, require

RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
REQUIRED = ("task", "stage", "seed", "rng_impl", "total_steps", "batch_size", "grad_accum_steps",
            "eval_batch_size", "log_every_steps", "eval_every_steps", "ckpt_every_steps", "keep_checkpoints", "mesh",
            "sharding_rules", "fsdp_min_size", "init", "model", "data", "optimizer", "demo_data_dir")


def check_config(config: ml_collections.ConfigDict) -> tuple[ModelConfig, Task]:
    """Validate ``config``; return the model's :class:`ModelConfig` and the config's task."""
    for name in REQUIRED:
        require(name in config, name, "missing")
    require(config.stage in (1, 2), "stage", f"must be 1 or 2, got {config.stage!r}")
    require(config.rng_impl in RNG_IMPLS, "rng_impl", f"must be one of {RNG_IMPLS}, got {config.rng_impl!r}")
    tpu_flags.check(config.get("libtpu_flags", ""))
    task = get_task(config)  # an unknown config.task is a TrainConfigError naming it
    require(task.stage == config.stage, "stage", f"task {task.name} uses the stage-{task.stage} model")
    epochs = config.get("epochs", 0)
    require(isinstance(epochs, (int, float)) and epochs >= 0, "epochs", f"must be >= 0, got {epochs!r}")
    if not epochs:  # with epochs, total_steps is computed from the number of training records
        require(isinstance(config.total_steps, int) and config.total_steps > 0, "total_steps",
                f"must be a positive integer (or set config.epochs), got {config.total_steps!r}")
    for name in ("batch_size", "grad_accum_steps", "eval_batch_size", "log_every_steps",
                 "eval_every_steps", "ckpt_every_steps", "keep_checkpoints"):
        value = config[name]
        require(isinstance(value, int) and value > 0, name, f"must be a positive integer, got {value!r}")
    require(config.batch_size % config.grad_accum_steps == 0, "grad_accum_steps",
             f"{config.grad_accum_steps} does not divide batch_size {config.batch_size}")
    task.check(config)
    model_cfg = model_config_from_dict(config.model.to_dict())
    require(config.data.max_txt_len <= model_cfg.max_position_embeddings, "data.max_txt_len",
             f"{config.data.max_txt_len} exceeds model.max_position_embeddings {model_cfg.max_position_embeddings}")
    for name in ("num_workers", "num_parallel_calls", "prefetch_buffer_size", "per_worker_buffer_size"):
        value, least = config.data.get(name, 0), 0 if name == "num_workers" else 1
        require(isinstance(value, int) and value >= least, f"data.{name}", f"must be an integer >= {least}, "
                f"got {value!r}")
    for name in ("bert", "resnet", "stage1_checkpoint", "restore", "demo_config"):
        require(name in config.init, f"init.{name}", "missing (use '' for none)")
    if config.stage == 1:
        require(not config.init.stage1_checkpoint, "init.stage1_checkpoint", "is a stage-2 setting")
    for i, rule in enumerate(config.sharding_rules):
        require(len(rule) == 2 and isinstance(rule[0], str), f"sharding_rules[{i}]",
                f"must be (regex, partition spec tuple), got {rule!r}")
    return model_cfg, task


def check_batch_sizes(config: ml_collections.ConfigDict, mesh: Mesh) -> None:
    """Every (micro-)batch must split evenly over the batch shards of ``mesh``."""
    shards = sharding.data_parallel_size(mesh)
    micro = config.batch_size // config.grad_accum_steps
    if micro % shards:
        raise TrainConfigError(f"config.batch_size {config.batch_size} / grad_accum_steps {config.grad_accum_steps} "
                               f"= {micro} does not split over {shards} batch shards (config.mesh)")
    if config.eval_batch_size % shards:
        raise TrainConfigError(f"config.eval_batch_size {config.eval_batch_size} does not split over {shards} "
                               "batch shards (config.mesh)")
