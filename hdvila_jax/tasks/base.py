"""What every task gives the trainer, the step builder, eval-only mode and the AOT compiler: its
model stage, its loss and gradient, its batch shapes, its evaluator and its config checks."""
from __future__ import annotations

import abc
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hdvila_jax.data import pipeline
from hdvila_jax.models import HDVILA, ModelConfig
from hdvila_jax.tasks.gradients import StepContext

BatchShapes = dict[str, tuple[tuple[int, ...], Any]]
Metrics = dict[str, jax.Array]


class TrainConfigError(ValueError):
    """A trainer config field is missing or has a bad value; the message names it."""


def require(ok: bool, field: str, message: str) -> None:
    """Raise :class:`TrainConfigError` naming ``config.<field>`` unless ``ok``."""
    if not ok:
        raise TrainConfigError(f"config.{field}: {message}")


class Evaluator(Protocol):
    """A task's evaluation: ``(variables, mesh, step) -> metrics`` (it may also write files)."""

    def __call__(self, variables: dict, mesh: Mesh, step: int) -> dict[str, float]:
        ...


def eval_batches(config: ml_collections.ConfigDict, files: str, mlm_probability: float | None = 0.0
                 ) -> Iterator[dict[str, np.ndarray]]:
    """This process's padded eval batches (``eval_batch_size`` globally) of the records ``files``, with
    captions never masked (``mlm_probability`` None keeps the config's)."""
    eval_config = config.copy_and_resolve_references()
    if mlm_probability is not None:
        eval_config.data.mlm_probability = mlm_probability
    eval_config.data.val_files = files
    return pipeline.make_eval_iterator(eval_config, jax.process_index(), jax.process_count(),
                                       batch_size=config.eval_batch_size)


def clip_batch_shapes(config: ml_collections.ConfigDict, model_cfg: ModelConfig, batch_size: int,
                      clips: int) -> BatchShapes:
    """Frames (``clips`` per video) and text of a global batch as the input pipeline makes it."""
    b, (h, w), length = batch_size, model_cfg.crop_size, config.data.max_txt_len
    return dict(img_middle=((b, clips, h, w, 3), jnp.uint8),
                img_other=((b, clips, model_cfg.num_frames - 1, h // 4, w // 4, 3), jnp.uint8),
                text_input_ids=((b, length), jnp.int32), text_input_mask=((b, length), jnp.int32))


class Task(abc.ABC):
    """One task on the one trainer. Subclasses set ``name`` and ``stage`` (1: the dual encoder; 2: with
    the cross-modal encoder and heads) and, for fine-tuning tasks, ``fine_tuning`` (the run starts
    from the variables of ``config.init.restore`` with a fresh optimizer) and ``new_parts`` (variable
    path prefixes a pretrained checkpoint may lack: they keep their random initialisation)."""

    name: str
    stage: int
    fine_tuning: bool = False
    new_parts: tuple[str, ...] = ()

    def check(self, config: ml_collections.ConfigDict) -> None:
        """Raise :class:`TrainConfigError` for a config this task cannot run (before anything compiles)."""

    def resolve(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """``config`` with the fields this task derives from its data filled in (default: unchanged)."""
        return config

    def batch_shapes(self, config: ml_collections.ConfigDict, model_cfg: ModelConfig, batch_size: int,
                     clips: int, train: bool) -> BatchShapes:
        """A global batch, ``name -> (shape, dtype)``, as the input pipeline makes it for training
        (``train``) or evaluation."""
        return clip_batch_shapes(config, model_cfg, batch_size, clips)

    @abc.abstractmethod
    def loss_and_grads(self, ctx: StepContext, trainable: dict, batch: Mapping[str, jax.Array],
                       rng: jax.Array) -> tuple[jax.Array, Metrics, dict]:
        """The global batch's loss, its metrics and the gradient with respect to ``trainable``
        (flat ``path -> array``), over ``ctx.accum_steps`` micro-batches."""

    @abc.abstractmethod
    def eval_step(self, model: HDVILA) -> tuple[Callable, Sequence[str]]:
        """The jitted ``(variables, batch) -> outputs`` the evaluation runs on each eval batch, and the
        batch keys it reads (what ``hdvila_jax.aot`` compiles)."""

    @abc.abstractmethod
    def evaluator(self, config: ml_collections.ConfigDict, model: HDVILA, workdir: str) -> Evaluator:
        """The evaluation of ``config`` (run by the trainer and by eval-only mode)."""
