"""HD-VILA model configs: ``paper`` (the paper's model: BERT-large, ResNet-50, 640x1024 crops;
docs/fidelity.md §1-§4) and ``tiny``.

``paper`` is the defaults of ``hdvila_jax.models.config.ModelConfig``, the one place they are
written: it has a key for every field, so ``--config.model.FIELD=...`` overrides any of them
(tuples stay tuples: ``--config.model.crop_size="(768, 768)"``). ``tiny`` changes only TINY.

    from configs import model
    cfg = model.get_config("tiny")           # ml_collections.ConfigDict
    from hdvila_jax.models import model_config_from_dict
    mc = model_config_from_dict(cfg.to_dict())
"""
import dataclasses

import ml_collections

from hdvila_jax.models.config import ModelConfig

# The small model of the CPU demos and tests: what it changes of the paper model.
TINY = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, timesformer_depth=2, timesformer_heads=4, crop_size=(128, 192),
            pixel_random_sampling_size=4)


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """Model config for ``variant`` in {paper, tiny}."""
    if variant not in ("paper", "tiny"):
        raise ValueError(f"unknown model config variant {variant!r}; use 'paper' or 'tiny'")
    cfg = ml_collections.ConfigDict(dataclasses.asdict(ModelConfig()))
    if variant == "tiny":
        cfg.update(TINY)
    return cfg
