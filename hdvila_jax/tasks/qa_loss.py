"""Video QA: open-ended (MSRVTT-QA, TGIF FrameQA) and multiple choice (TGIF Action/Transition).

docs/fidelity.md §13. The stage-2 model runs the text layers once per sequence and the
cross-modal layers per (clip, sequence), without visual token sampling; the head
(``heads/qa_classifier``: Dropout(0.1), Dense D->2D, ReLU, Dense 2D->out) scores the ``pooler2``
output of every clip. Logits are clip-major ``[K, B, C]`` as in the original
(``HDVILA.qa_logits``); the clip aggregation (``mean``/``max``/``lse``) and the softmax
cross-entropy are computed from them outside the model (:func:`qa_loss`).

Multiple choice: the text of question b, option i is row ``b*C + i`` of a ``[B*C, L]`` batch
(:func:`flatten_choices`); the head has one output and the scores of row b*C+i land at
``logits[k, b, i]``.

The head module and the row layout live in ``hdvila_jax.models.qa_head``.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from hdvila_jax.models.hdvila import aggregate_clips

AGGREGATIONS = ("mean", "max", "lse")
IMAGE_KEYS = ("img_middle", "img_other")


def qa_model_inputs(batch: Mapping[str, jax.Array], qa_type: str) -> dict:
    """The inputs of :meth:`HDVILA.qa_logits` of a QA batch: the frames and the question
    (``text_input_*``, open-ended) or the question with each option (``mc_text_input_*`` ``[B, C, L]``)."""
    inputs = {key: batch[key] for key in IMAGE_KEYS}
    prefix = "mc_" if qa_type == "multiple_choice" else ""
    inputs.update(text_input_ids=batch[f"{prefix}text_input_ids"], text_input_mask=batch[f"{prefix}text_input_mask"])
    return inputs


def qa_inputs(batch: Mapping[str, jax.Array], qa_type: str) -> tuple[dict, jax.Array]:
    """:func:`qa_model_inputs` and the labels ``[B]``: ``qa_label`` (the answer's index, -1 outside the
    vocabulary) of open-ended batches, ``mc_answer`` of multiple-choice ones."""
    return qa_model_inputs(batch, qa_type), batch["mc_answer" if qa_type == "multiple_choice" else "qa_label"]


def unflatten_choices(x: jax.Array, num_choices: int) -> jax.Array:
    """Inverse of :func:`flatten_choices`: ``[B*C, ...]`` -> ``[B, C, ...]``."""
    if x.shape[0] % num_choices:
        raise ValueError(f"{x.shape[0]} rows are not a multiple of {num_choices} choices")
    return x.reshape(x.shape[0] // num_choices, num_choices, *x.shape[1:])


def aggregate_logits(logits: jax.Array, agg: str) -> jax.Array:
    """Clip aggregation of ``[K, B, C]`` logits -> ``[B, C]`` (float32)."""
    if agg not in AGGREGATIONS:
        raise ValueError(f"agg must be one of {AGGREGATIONS}, got {agg!r}")
    return aggregate_clips(logits.astype(jnp.float32), agg, axis=0)


def qa_loss_per_example(logits: jax.Array, labels: jax.Array, agg: str) -> jax.Array:
    """Per-example training loss of the original from ``[K, B, C]`` logits and ``[B]`` labels.

    ``lse``: logsumexp over (k, c) of z[k, c] minus logsumexp over k of z[k, y] (the original's
    formula; equal to the softmax CE of the lse-aggregated logits). ``mean``/``max``: softmax CE of
    the clip mean / max.
    """
    z = logits.astype(jnp.float32)
    labels = labels.astype(jnp.int32)
    if agg == "lse":
        zk = jnp.swapaxes(z, 0, 1)  # [B, K, C]
        total = jax.nn.logsumexp(zk.reshape(zk.shape[0], -1), axis=-1)
        index = jnp.broadcast_to(labels[:, None, None], (*zk.shape[:2], 1))
        label_logits = jnp.take_along_axis(zk, index, axis=2)[..., 0]  # [B, K]
        return total - jax.nn.logsumexp(label_logits, axis=-1)
    agg_logits = aggregate_logits(z, agg)
    log_p = jax.nn.log_softmax(agg_logits, axis=-1)
    return -jnp.take_along_axis(log_p, labels[:, None], axis=1)[:, 0]


def qa_loss(logits: jax.Array, labels: jax.Array, agg: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Batch-mean loss and metrics (``loss_per_example``, ``agg_logits``, ``pred``, ``correct``)."""
    per_example = qa_loss_per_example(logits, labels, agg)
    agg_logits = aggregate_logits(logits, agg)
    pred = jnp.argmax(agg_logits, axis=-1)
    return per_example.mean(), dict(loss_per_example=per_example, agg_logits=agg_logits, pred=pred,
                                    correct=(pred == labels).astype(jnp.float32))


def qa_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of questions whose prediction equals the label (``-1`` labels, e.g. an
    answer outside the vocabulary, always count as wrong)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim != 1:
        raise ValueError(f"pred and labels must both be [N], got {pred.shape} and {labels.shape}")
    if pred.size == 0:
        raise ValueError("no questions to score")
    return float(100.0 * np.mean((pred == labels) & (labels >= 0)))
