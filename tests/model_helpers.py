"""Small model configs and random inputs for fast CPU tests."""
from __future__ import annotations

import jax
import numpy as np

from configs import model as model_configs
from hdvila_jax.models import ModelConfig, model_config_from_dict


def small_config(**overrides) -> ModelConfig:
    """The ``tiny`` model shrunk further (ResNet-18, 64x128 crop) for quick tests."""
    values = model_configs.get_config("tiny").to_dict()
    values.update(resnet_depth=18, crop_size=(64, 128), hidden_size=32, intermediate_size=64,
                  timesformer_heads=2, num_attention_heads=2, pixel_random_sampling_size=1)
    values.update(overrides)
    return model_config_from_dict(values)


def random_batch(cfg: ModelConfig, batch: int = 2, clips: int = 2, text_len: int = 8, seed: int = 0,
                 with_labels: bool = True) -> dict[str, np.ndarray]:
    """Random pixels, ids and a mask with padding; MLM labels on a few positions."""
    rng = np.random.default_rng(seed)
    h, w = cfg.crop_size
    mask = np.ones((batch, text_len), np.int32)
    mask[0, text_len - 2:] = 0
    out = dict(img_middle=rng.integers(0, 256, (batch, clips, h, w, 3), dtype=np.uint8),
               img_other=rng.integers(0, 256, (batch, clips, cfg.num_frames - 1, h // 4, w // 4, 3), dtype=np.uint8),
               text_input_ids=rng.integers(5, cfg.vocab_size, (batch, text_len)).astype(np.int32),
               text_input_mask=mask)
    if with_labels:
        labels = np.full((batch, text_len), -100, np.int32)
        labels[:, 1:3] = rng.integers(5, cfg.vocab_size, (batch, 2))
        out["mlm_labels"] = labels
    return out


def relative_error(a, b) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def init_small(cfg: ModelConfig, stage: int, seed: int = 0) -> dict:
    """Random variables of ``cfg`` as numpy arrays."""
    from hdvila_jax.models.variables import init_variables
    return jax.device_get(init_variables(cfg, jax.random.PRNGKey(seed), stage))
