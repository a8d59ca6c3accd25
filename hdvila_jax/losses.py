"""Training objectives of HD-VILA (docs/fidelity.md §5)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def contrastive_loss(text_features: jax.Array, video_features: jax.Array, temperature: float,
                     direction_weight: float = 0.5) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Symmetric InfoNCE over the (global) batch: ``w * (CE(T V^T / t, I) + CE(V T^T / t, I))``
    with ``w = direction_weight`` (0.5 in pretraining, 1.0 in retrieval fine-tuning).

    Returns the loss and both directions' in-batch top-1 accuracy.
    """
    logits = (text_features.astype(jnp.float32) @ video_features.astype(jnp.float32).T) / temperature
    labels = jnp.arange(logits.shape[0])
    t2v = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), labels[:, None], axis=1).mean()
    v2t = -jnp.take_along_axis(jax.nn.log_softmax(logits, axis=0), labels[None, :], axis=0).mean()
    metrics = dict(t2v_acc=(logits.argmax(axis=1) == labels).mean(), v2t_acc=(logits.argmax(axis=0) == labels).mean())
    return direction_weight * (t2v + v2t), metrics


def masked_lm_loss(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy over positions whose label is not -100."""
    valid = labels != -100
    safe = jnp.where(valid, labels, 0)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    count = jnp.maximum(valid.sum(), 1)
    loss = jnp.where(valid, nll, 0.0).sum() / count
    acc = jnp.where(valid, logits.argmax(-1) == safe, False).sum() / count
    return loss, acc
