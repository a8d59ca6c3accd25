"""The video QA head of the original (``transformer.classifier``) and the multiple-choice row layout."""
from __future__ import annotations

import jax
from flax import linen as nn

from hdvila_jax.models.bert import dense
from hdvila_jax.models.config import ModelConfig

class QAClassifier(nn.Module):
    """``transformer.classifier`` of the original: Dropout, Linear(D, 2D), ReLU, Linear(2D, out).

    The dropout rate is BERT's ``hidden_dropout_prob`` (0.1), as in the original (its config key
    ``dropout`` is never read, docs/fidelity.md §11.2).

    Parameters ``hidden`` (classifier.0) and ``out`` (classifier.2), N(0, 0.02) kernels, zero biases.
    The hidden layer (after the ReLU) is sown as ``head_hidden``.
    """

    config: ModelConfig
    num_outputs: int

    @nn.compact
    def __call__(self, pooled: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        x = nn.Dropout(cfg.hidden_dropout_prob)(pooled, deterministic=deterministic)
        x = nn.relu(dense(cfg, 2 * cfg.hidden_size, "hidden")(x))
        self.sow("intermediates", "head_hidden", x)
        return dense(cfg, self.num_outputs, "out")(x)


def flatten_choices(x: jax.Array) -> jax.Array:
    """``[B, C, ...]`` per-option texts -> ``[B*C, ...]``, row ``b*C + i`` (question b, option i)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


