"""Checks of a trainer config that run before anything is traced or compiled."""
from __future__ import annotations

import ml_collections

from hdvila_jax.models import ModelConfig, model_config_from_dict
from hdvila_jax.tasks import TASKS, get_task
from hdvila_jax.tasks.qa import AGGREGATIONS

RNG_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
REQUIRED = ("task", "stage", "seed", "rng_impl", "total_steps", "batch_size", "grad_accum_steps",
            "eval_batch_size", "log_every_steps", "eval_every_steps", "ckpt_every_steps", "keep_checkpoints", "mesh",
            "sharding_rules", "fsdp_min_size", "init", "model", "data", "optimizer", "demo_data_dir")


class TrainConfigError(ValueError):
    """A trainer config field is missing or has a bad value; the message names it."""


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise TrainConfigError(f"config.{field}: {message}")


def check_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """Validate ``config``; return the model's :class:`ModelConfig`."""
    for name in REQUIRED:
        _require(name in config, name, "missing")
    _require(config.stage in (1, 2), "stage", f"must be 1 or 2, got {config.stage!r}")
    _require(config.rng_impl in RNG_IMPLS, "rng_impl", f"must be one of {RNG_IMPLS}, got {config.rng_impl!r}")
    _require(config.task in TASKS, "task", f"must be one of {TASKS}, got {config.task!r}")
    try:
        task = get_task(config)
    except ValueError as e:
        raise TrainConfigError(str(e)) from None
    _require(task.stage == config.stage, "stage", f"task {task.name} uses the stage-{task.stage} model")
    epochs = config.get("epochs", 0)
    _require(isinstance(epochs, (int, float)) and epochs >= 0, "epochs", f"must be >= 0, got {epochs!r}")
    if not epochs:  # with epochs, total_steps is computed from the number of training records
        _require(isinstance(config.total_steps, int) and config.total_steps > 0, "total_steps",
                 f"must be a positive integer (or set config.epochs), got {config.total_steps!r}")
    for name in ("batch_size", "grad_accum_steps", "eval_batch_size", "log_every_steps",
                 "eval_every_steps", "ckpt_every_steps", "keep_checkpoints"):
        value = config[name]
        _require(isinstance(value, int) and value > 0, name, f"must be a positive integer, got {value!r}")
    _require(config.batch_size % config.grad_accum_steps == 0, "grad_accum_steps",
             f"{config.grad_accum_steps} does not divide batch_size {config.batch_size}")
    if task.objective == "contrastive":
        _require("temperature" in config and config.temperature > 0, "temperature",
                 f"task {task.name} (stage {task.stage}) needs a positive temperature, "
                 f"got {config.get('temperature')!r}")
    elif task.objective == "mlm":
        _require(config.data.mlm_probability > 0, "data.mlm_probability",
                 f"stage 2 trains MLM and needs masked tokens, got {config.data.mlm_probability}")
    else:
        _require(config.qa.get("aggregation") in AGGREGATIONS, "qa.aggregation",
                 f"must be one of {AGGREGATIONS}, got {config.qa.get('aggregation')!r}")
        _require(config.data.mlm_probability == 0, "data.mlm_probability",
                 f"video QA never masks its questions, got {config.data.mlm_probability}")
        if task.qa_type == "open":
            _require(bool(config.data.get("ans2label")), "data.ans2label",
                     "open-ended QA needs the answer vocabulary json (answer -> index)")
    model_cfg = model_config_from_dict(config.model.to_dict())
    _require(tuple(config.data.crop_size) == tuple(model_cfg.crop_size), "data.crop_size",
             f"{tuple(config.data.crop_size)} differs from model.crop_size {model_cfg.crop_size}")
    _require(config.data.num_frm == model_cfg.num_frames, "data.num_frm",
             f"{config.data.num_frm} differs from model.num_frames {model_cfg.num_frames}")
    _require(config.data.max_txt_len <= model_cfg.max_position_embeddings, "data.max_txt_len",
             f"{config.data.max_txt_len} exceeds model.max_position_embeddings {model_cfg.max_position_embeddings}")
    for name in ("num_workers", "num_parallel_calls", "prefetch_buffer_size", "per_worker_buffer_size"):
        value, least = config.data.get(name, 0), 0 if name == "num_workers" else 1
        _require(isinstance(value, int) and value >= least, f"data.{name}", f"must be an integer >= {least}, "
                 f"got {value!r}")
    for name in ("bert", "resnet", "stage1_checkpoint", "restore", "demo_config"):
        _require(name in config.init, f"init.{name}", "missing (use '' for none)")
    if config.stage == 1:
        _require(not config.init.stage1_checkpoint, "init.stage1_checkpoint", "is a stage-2 setting")
    for i, rule in enumerate(config.sharding_rules):
        _require(len(rule) == 2 and isinstance(rule[0], str), f"sharding_rules[{i}]",
                 f"must be (regex, partition spec tuple), got {rule!r}")
    return model_cfg
