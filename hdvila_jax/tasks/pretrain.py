"""Pretraining: stage 1 trains the dual encoder contrastively (``retrieval.ContrastiveTask``),
stage 2 the cross-modal encoder and heads with masked language modelling on top of the frozen
stage-1 towers (docs/fidelity.md §6). Both are evaluated by zero-shot retrieval."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from hdvila_jax.inference import make_encode_fn
from hdvila_jax.models import HDVILA, ModelConfig
from hdvila_jax.tasks.base import BatchShapes, Task, require
from hdvila_jax.tasks.gradients import StepContext, accumulate_grads
from hdvila_jax.tasks.retrieval import ENCODER_KEYS, RetrievalEvaluator, pretrain_stage1_task

MLM_INPUTS = (*ENCODER_KEYS, "mlm_labels")


class MLMTask(Task):
    """Stage-2 pretraining: the MLM loss over the batch's masked tokens."""

    name = "pretrain"
    stage = 2

    def check(self, config: ml_collections.ConfigDict) -> None:
        require(config.data.mlm_probability > 0, "data.mlm_probability",
                f"stage 2 trains MLM and needs masked tokens, got {config.data.mlm_probability}")

    def batch_shapes(self, config: ml_collections.ConfigDict, model_cfg: ModelConfig, batch_size: int,
                     clips: int, train: bool) -> BatchShapes:
        """Frames and text, and in training the MLM labels (-100 where a token is not a target)."""
        shapes = super().batch_shapes(config, model_cfg, batch_size, clips, train)
        if train:
            shapes["mlm_labels"] = ((batch_size, config.data.max_txt_len), jnp.int32)
        return shapes

    def loss_and_grads(self, ctx: StepContext, trainable: dict, batch: Mapping[str, jax.Array], rng: jax.Array):
        """Each micro-batch's mean MLM loss weighted by its share of the batch's masked tokens: the
        gradient of the whole batch's mean."""
        micro = ctx.micro_batches(batch)
        counts = (micro["mlm_labels"] != -100).sum(axis=tuple(range(1, micro["mlm_labels"].ndim)))
        weights = counts.astype(jnp.float32) / jnp.maximum(counts.sum(), 1).astype(jnp.float32)

        def loss_fn(tr, b, r):
            out = ctx.apply(tr, r, {key: b[key] for key in MLM_INPUTS}, stage=2)
            return out["mlm_loss"], out["mlm_acc"]

        loss, mlm_acc, grads = accumulate_grads(trainable, micro, weights, rng, loss_fn)
        return loss, {"mlm_acc": mlm_acc, "mlm_tokens": counts.sum()}, grads

    def eval_step(self, model: HDVILA) -> tuple[Callable, Sequence[str]]:
        return make_encode_fn(model), ENCODER_KEYS

    def evaluator(self, config: ml_collections.ConfigDict, model: HDVILA, workdir: str) -> RetrievalEvaluator:
        return RetrievalEvaluator(config, model)


def pretrain_task(config: ml_collections.ConfigDict) -> Task:
    """Stage-1 (contrastive) or stage-2 (MLM) pretraining, by ``config.stage``."""
    return pretrain_stage1_task(config) if config.stage == 1 else MLMTask()
