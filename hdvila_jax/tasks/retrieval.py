"""Text-video retrieval fine-tuning and MSRVTT multiple choice (SPEC_DOWNSTREAM sections 3 and 5).

The model is the stage-1 dual encoder. Training minimises the summed two-direction InfoNCE
over the global batch; evaluation ranks cosine similarities (``hdvila_jax.train.evaluation``);
multiple choice scores each video against its candidate captions.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from hdvila_jax import sharding
from hdvila_jax.losses import contrastive_loss
from hdvila_jax.models import HDVILA
from hdvila_jax.sharding import gather_to_host
from hdvila_jax.tasks import RETRIEVAL_DIRECTION_WEIGHT

MC_KEYS = ("img_middle", "img_other", "mc_text_input_ids", "mc_text_input_mask", "mc_answer", "valid")


def retrieval_loss(text_features: jax.Array, video_features: jax.Array,
                   temperature: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``CE(V T^T / t, I) + CE(T V^T / t, I)`` over the rows given (the global batch under jit)."""
    return contrastive_loss(text_features, video_features, temperature, direction_weight=RETRIEVAL_DIRECTION_WEIGHT)


def multiple_choice_scores(video_features: jax.Array, option_features: jax.Array) -> jax.Array:
    """Cosine score of video ``b`` with each of its options: ``[B, D] x [B, N, D] -> [B, N]``."""
    return jnp.einsum("bd,bnd->bn", video_features.astype(jnp.float32), option_features.astype(jnp.float32))


def multiple_choice_accuracy(scores: np.ndarray, answers: np.ndarray) -> float:
    """Percentage of videos whose highest-scoring option is the answer."""
    scores, answers = np.asarray(scores), np.asarray(answers)
    if scores.ndim != 2 or answers.shape != scores.shape[:1]:
        raise ValueError(f"scores must be [B, N] and answers [B], got {scores.shape} and {answers.shape}")
    return float(100.0 * np.mean(scores.argmax(axis=1) == answers))


def make_mc_score_fn(model: HDVILA) -> Callable[[Any, Mapping[str, jax.Array]], jax.Array]:
    """Jitted ``(variables, batch) -> scores [B, N]``: each video's feature against its N option captions."""
    def score(variables, batch):
        _, video = model.apply(variables, batch["img_middle"], batch["img_other"], True, method=HDVILA.encode_video)
        b, n, length = batch["mc_text_input_ids"].shape
        _, options = model.apply(variables, batch["mc_text_input_ids"].reshape(b * n, length),
                                 batch["mc_text_input_mask"].reshape(b * n, length), True,
                                 method=HDVILA.encode_text)
        return multiple_choice_scores(video, options.reshape(b, n, -1))
    return jax.jit(score)


def evaluate_multiple_choice(score_fn: Callable, variables: Any, batches: Iterable[Mapping[str, np.ndarray]],
                             mesh: Mesh) -> dict[str, float]:
    """MSRVTT-MC accuracy (percent) over every question of the (per-process) batches, padding dropped."""
    scores, answers, valid = [], [], []
    for local in batches:
        batch = sharding.global_batch({k: local[k] for k in MC_KEYS}, mesh)
        scores.append(gather_to_host(score_fn(variables, batch)))
        answers.append(gather_to_host(batch["mc_answer"]))
        valid.append(gather_to_host(batch["valid"]))
    keep = np.concatenate(valid)
    return {"mc_accuracy": multiple_choice_accuracy(np.concatenate(scores)[keep], np.concatenate(answers)[keep]),
            "mc_questions": float(keep.sum())}
