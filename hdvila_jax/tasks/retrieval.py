"""Contrastive tasks on the stage-1 dual encoder: stage-1 pretraining and text-video retrieval
fine-tuning (docs/fidelity.md §12), evaluated by retrieval recall (docs/fidelity.md §8) and MSRVTT
multiple choice (docs/fidelity.md §14).

Training minimises the InfoNCE of the global batch (the negatives are every example on every
device); pretraining averages its two directions, the original's retrieval loss
(NCEContrastiveLoss) sums them. Evaluation encodes every validation clip with all its
``inference_n_clips`` clips (the video feature averages the grid over clips); similarity is
``text_features . video_features^T`` and the ground truth of query ``i`` is candidate ``i``.
Multiple choice scores each video against its candidate captions.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hdvila_jax.inference import encode_batches, encoder_inputs, make_encode_fn
from hdvila_jax.losses import contrastive_loss
from hdvila_jax.models import HDVILA
from hdvila_jax.tasks.base import Task, TrainConfigError, eval_batches, require
from hdvila_jax.tasks.gradients import StepContext, contrastive_grads

RECALL_AT = (1, 5, 10, 50)
ENCODER_KEYS = encoder_inputs(("text", "video"))
MC_INPUTS = ("img_middle", "img_other", "mc_text_input_ids", "mc_text_input_mask")
# Weight of each InfoNCE direction: pretraining stage 1 averages CE(S) and CE(S^T), the original's
# retrieval NCEContrastiveLoss sums them.
PRETRAIN_DIRECTION_WEIGHT = 0.5
RETRIEVAL_DIRECTION_WEIGHT = 1.0


def ranks_of_ground_truth(similarity: np.ndarray) -> np.ndarray:
    """0-based rank of the diagonal entry in each row: how many candidates score strictly higher."""
    truth = np.diagonal(similarity)[:, None]
    return (similarity > truth).sum(axis=1)


def retrieval_metrics(similarity: np.ndarray) -> dict[str, float]:
    """R@1/5/10/50 (percent), MedR and MeanR (1-based) for t2v (rows = texts) and v2t."""
    metrics = {}
    for name, sim in (("t2v", similarity), ("v2t", similarity.T)):
        ranks = ranks_of_ground_truth(sim)
        for k in RECALL_AT:
            metrics[f"{name}_R{k}"] = float(100.0 * np.mean(ranks < k))
        metrics[f"{name}_MedR"] = float(np.median(ranks) + 1)
        metrics[f"{name}_MeanR"] = float(np.mean(ranks) + 1)
    return metrics


def evaluate_retrieval(encode: Callable, variables: Any, batches: Iterable[Mapping[str, np.ndarray]],
                       mesh: Mesh) -> dict[str, float]:
    """Encode every (per-process) eval batch with ``encode`` (``inference.make_encode_fn``), gather all
    processes' features, drop padding, score."""
    features = encode_batches(encode, variables, batches, mesh, ENCODER_KEYS)
    text, video = features["text_features"], features["video_features"]
    metrics = retrieval_metrics(text @ video.T)
    metrics["num_videos"] = float(len(text))
    return metrics


def multiple_choice_scores(video_features: jax.Array, option_features: jax.Array) -> jax.Array:
    """Cosine score of video ``b`` with each of its options: ``[B, D] x [B, N, D] -> [B, N]``."""
    return jnp.einsum("bd,bnd->bn", video_features.astype(jnp.float32), option_features.astype(jnp.float32))


def multiple_choice_accuracy(scores: np.ndarray, answers: np.ndarray) -> float:
    """Percentage of videos whose highest-scoring option is the answer."""
    scores, answers = np.asarray(scores), np.asarray(answers)
    if scores.ndim != 2 or answers.shape != scores.shape[:1]:
        raise ValueError(f"scores must be [B, N] and answers [B], got {scores.shape} and {answers.shape}")
    return float(100.0 * np.mean(scores.argmax(axis=1) == answers))


def make_mc_score_fn(model: HDVILA) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
    """Jitted ``(variables, batch) -> {"scores": [B, N]}``: each video's feature against its N option captions."""
    def score(variables, batch):
        _, video = model.apply(variables, batch["img_middle"], batch["img_other"], True, method=HDVILA.encode_video)
        b, n, length = batch["mc_text_input_ids"].shape
        _, options = model.apply(variables, batch["mc_text_input_ids"].reshape(b * n, length),
                                 batch["mc_text_input_mask"].reshape(b * n, length), True,
                                 method=HDVILA.encode_text)
        return {"scores": multiple_choice_scores(video, options.reshape(b, n, -1))}
    return jax.jit(score)


def evaluate_multiple_choice(score_fn: Callable, variables: Any, batches: Iterable[Mapping[str, np.ndarray]],
                             mesh: Mesh) -> dict[str, float]:
    """MSRVTT-MC accuracy (percent) over every question of the (per-process) batches, padding dropped."""
    out = encode_batches(score_fn, variables, batches, mesh, MC_INPUTS, carry=("mc_answer",))
    return {"mc_accuracy": multiple_choice_accuracy(out["scores"], out["mc_answer"]),
            "mc_questions": float(len(out["mc_answer"]))}


class RetrievalEvaluator:
    """Retrieval recall on ``data.val_files`` (captions never MLM-masked) when set, and multiple-choice
    accuracy on ``data.mc_files`` when set."""

    def __init__(self, config: ml_collections.ConfigDict, model: HDVILA):
        self.config = config
        self.mc_files = config.data.get("mc_files", "")
        self.encode = make_encode_fn(model) if config.data.val_files else None
        self.score_mc = make_mc_score_fn(model) if self.mc_files else None
        if self.encode is None and self.score_mc is None:
            raise TrainConfigError("config.data.val_files (and data.mc_files) are empty: nothing to evaluate")

    def __call__(self, variables: dict, mesh: Mesh, step: int) -> dict[str, float]:
        metrics = {}
        if self.encode is not None:
            metrics.update(evaluate_retrieval(self.encode, variables,
                                              eval_batches(self.config, self.config.data.val_files), mesh))
        if self.score_mc is not None:
            metrics.update(evaluate_multiple_choice(self.score_mc, variables, eval_batches(self.config, self.mc_files),
                                                    mesh))
        return metrics


class ContrastiveTask(Task):
    """The stage-1 dual encoder trained with the InfoNCE of the global batch: stage-1 pretraining
    (each direction weighted 0.5) or retrieval fine-tuning (summed, from ``config.init.restore``)."""

    stage = 1

    def __init__(self, name: str, direction_weight: float, temperature: float, fine_tuning: bool):
        self.name = name
        self.direction_weight = direction_weight
        self.temperature = temperature
        self.fine_tuning = fine_tuning

    def contrastive_loss(self, text_features: jax.Array, video_features: jax.Array):
        """InfoNCE of the (global) batch with this task's temperature and direction weight."""
        return contrastive_loss(text_features, video_features, self.temperature, self.direction_weight)

    def check(self, config: ml_collections.ConfigDict) -> None:
        require("temperature" in config and config.temperature > 0, "temperature",
                f"task {self.name} (stage {self.stage}) needs a positive temperature, got {config.get('temperature')!r}")

    def loss_and_grads(self, ctx: StepContext, trainable: dict, batch: Mapping[str, jax.Array], rng: jax.Array):
        def features(tr, b, r):
            out = ctx.apply(tr, r, {key: b[key] for key in ENCODER_KEYS}, stage=1)
            return out["text_features"], out["video_features"]

        def loss_of_features(text, video):
            return self.contrastive_loss(text.reshape(-1, text.shape[-1]), video.reshape(-1, video.shape[-1]))

        return contrastive_grads(ctx, trainable, batch, rng, features, loss_of_features)

    def eval_step(self, model: HDVILA) -> tuple[Callable, Sequence[str]]:
        return make_encode_fn(model), ENCODER_KEYS

    def evaluator(self, config: ml_collections.ConfigDict, model: HDVILA, workdir: str) -> RetrievalEvaluator:
        return RetrievalEvaluator(config, model)


def pretrain_stage1_task(config: ml_collections.ConfigDict) -> ContrastiveTask:
    """Stage-1 pretraining: 0.5 x both InfoNCE directions, from random or converted weights."""
    return ContrastiveTask("pretrain", PRETRAIN_DIRECTION_WEIGHT, float(config.get("temperature", 0.0)), False)


def retrieval_task(config: ml_collections.ConfigDict) -> ContrastiveTask:
    """Retrieval fine-tuning: the summed two-direction InfoNCE, from ``config.init.restore``."""
    return ContrastiveTask("retrieval", RETRIEVAL_DIRECTION_WEIGHT, float(config.get("temperature", 0.0)), True)
