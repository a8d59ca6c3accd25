"""Zero-shot text-to-video and video-to-text retrieval (SPEC section 8).

Every validation clip is encoded with all its ``inference_n_clips`` clips (the video
feature averages the grid over clips); similarity is ``text_features . video_features^T``
and the ground truth of query ``i`` is candidate ``i``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from hdvila_jax import sharding
from hdvila_jax.models import HDVILA
from hdvila_jax.sharding import gather_to_host

RECALL_AT = (1, 5, 10, 50)
ENCODER_KEYS = ("img_middle", "img_other", "text_input_ids", "text_input_mask")


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


def make_encode_fn(model: HDVILA) -> Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, jax.Array]]:
    """Jitted ``(variables, batch) -> (text_features, video_features)`` without dropout or sampling."""
    def encode(variables, batch):
        out = model.apply(variables, {k: batch[k] for k in ENCODER_KEYS}, stage=1, deterministic=True)
        return out["text_features"], out["video_features"]
    return jax.jit(encode)


def evaluate_retrieval(encode: Callable, variables: Any, batches: Iterable[Mapping[str, np.ndarray]],
                       mesh: Mesh) -> dict[str, float]:
    """Encode every (per-process) eval batch, gather all processes' features, drop padding, score."""
    texts, videos, valid = [], [], []
    for local in batches:
        batch = sharding.global_batch({k: local[k] for k in (*ENCODER_KEYS, "valid")}, mesh)
        text, video = encode(variables, batch)
        texts.append(gather_to_host(text))
        videos.append(gather_to_host(video))
        valid.append(gather_to_host(batch["valid"]))
    keep = np.concatenate(valid)
    text, video = np.concatenate(texts)[keep], np.concatenate(videos)[keep]
    metrics = retrieval_metrics(text @ video.T)
    metrics["num_videos"] = float(len(text))
    return metrics
