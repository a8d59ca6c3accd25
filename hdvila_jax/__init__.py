"""HD-VILA high-resolution video-language pretraining in JAX/Flax.

``from hdvila_jax import Encoder`` (hdvila_jax/encoder.py) embeds texts and video files with a
trained model; it is imported on first use, so ``import hdvila_jax`` stays cheap.
"""

_LAZY = {"Encoder": "hdvila_jax.encoder", "EncodedVideo": "hdvila_jax.encoder", "EncoderError": "hdvila_jax.encoder"}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hdvila_jax' has no attribute {name!r}")
