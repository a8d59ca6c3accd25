"""Flax modules of HD-VILA."""
from hdvila_jax.models.config import ConfigError, ModelConfig, model_config_from_dict, validate
from hdvila_jax.models.hdvila import HDVILA, aggregate_clips, l2_normalize

__all__ = ["ConfigError", "HDVILA", "ModelConfig", "aggregate_clips", "l2_normalize",
           "model_config_from_dict", "validate"]
