"""Creating the model's variables: example inputs, random init and abstract shapes."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hdvila_jax.models.config import ModelConfig
from hdvila_jax.models.hdvila import HDVILA


def example_batch(cfg: ModelConfig, batch: int = 1, clips: int = 1, text_len: int = 8,
                  num_choices: int = 0) -> dict[str, jax.Array]:
    """A batch of the right shapes and dtypes for ``cfg`` (values are arbitrary); with
    ``num_choices`` the text is ``[B, C, L]`` (multiple-choice QA)."""
    h, w = cfg.crop_size
    text_shape = (batch, num_choices, text_len) if num_choices else (batch, text_len)
    return dict(img_middle=jnp.zeros((batch, clips, h, w, 3), jnp.uint8),
                img_other=jnp.zeros((batch, clips, cfg.num_frames - 1, h // 4, w // 4, 3), jnp.uint8),
                text_input_ids=jnp.zeros(text_shape, jnp.int32),
                text_input_mask=jnp.ones(text_shape, jnp.int32))


def initialize(cfg: ModelConfig, stage: int, rng: jax.Array) -> dict:
    """``model.init`` of the stage-``stage`` model; stage 2 with ``cfg.num_qa_outputs`` > 0 is the
    video QA model (docs/fidelity.md §13.1): the stage-2 encoder (with ``pooler1``, no contrastive
    projections, no MLM/ITM heads) and ``heads/qa_classifier``."""
    model = HDVILA(cfg)
    if stage == 2 and cfg.num_qa_outputs > 0:
        return model.init(rng, example_batch(cfg), method=HDVILA.qa_logits)
    return model.init(rng, example_batch(cfg), stage=stage)


@functools.lru_cache(maxsize=8)
def _jitted_init(cfg: ModelConfig, stage: int):
    return jax.jit(functools.partial(initialize, cfg, stage))


def init_variables(cfg: ModelConfig, rng: jax.Array, stage: int) -> dict:
    """Randomly initialised ``{'params', 'batch_stats'}`` of the stage-``stage`` model (the QA
    model when stage is 2 and ``cfg.num_qa_outputs`` > 0)."""
    return _jitted_init(cfg, stage)(rng)


@functools.lru_cache(maxsize=8)
def abstract_variables(cfg: ModelConfig, stage: int) -> dict:
    """Shapes and dtypes (``ShapeDtypeStruct``) of :func:`init_variables`, without computing anything
    (traced once per model config and stage)."""
    return jax.eval_shape(functools.partial(initialize, cfg, stage), jax.random.PRNGKey(0))
