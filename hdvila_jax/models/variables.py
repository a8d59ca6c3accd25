"""Creating the model's variables: example inputs, random init and abstract shapes."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from hdvila_jax.models.config import ModelConfig
from hdvila_jax.models.hdvila import HDVILA


def example_batch(cfg: ModelConfig, batch: int = 1, clips: int = 1, text_len: int = 8) -> dict[str, jax.Array]:
    """A batch of the right shapes and dtypes for ``cfg`` (values are arbitrary)."""
    h, w = cfg.crop_size
    return dict(img_middle=jnp.zeros((batch, clips, h, w, 3), jnp.uint8),
                img_other=jnp.zeros((batch, clips, cfg.num_frames - 1, h // 4, w // 4, 3), jnp.uint8),
                text_input_ids=jnp.zeros((batch, text_len), jnp.int32),
                text_input_mask=jnp.ones((batch, text_len), jnp.int32))


@functools.lru_cache(maxsize=8)
def _jitted_init(cfg: ModelConfig, stage: int):
    model = HDVILA(cfg)
    return jax.jit(lambda r: model.init(r, example_batch(cfg), stage=stage))


def init_variables(cfg: ModelConfig, rng: jax.Array, stage: int) -> dict:
    """Randomly initialised ``{'params', 'batch_stats'}`` of the stage-``stage`` model."""
    return _jitted_init(cfg, stage)(rng)


def abstract_variables(cfg: ModelConfig, stage: int) -> dict:
    """Shapes and dtypes (``ShapeDtypeStruct``) of :func:`init_variables`, without computing anything."""
    model = HDVILA(cfg)
    return jax.eval_shape(lambda r: model.init(r, example_batch(cfg), stage=stage), jax.random.PRNGKey(0))
