"""Model configs from the reference's BERT-style ``config.json``."""
from __future__ import annotations

from typing import Any, Mapping

from hdvila_jax.models.config import ModelConfig, model_config_from_dict

# Fields of ours that the reference's config carries under the same name.
SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "max_grid_row_position_embeddings",
                 "max_grid_col_position_embeddings", "pixel_random_sampling_size", "score_agg_func",
                 "resnet_depth", "timesformer_depth", "timesformer_heads")


def model_config_from_reference(ref: Mapping[str, Any], crop_size: tuple[int, int], frames: int = 7,
                                **overrides: Any) -> ModelConfig:
    """Our :class:`ModelConfig` for a reference config dict, an HR crop size and F frames per clip.

    The original's TimeSformer keeps a 7-row ``time_embed`` whatever F is (resized linearly to F).

    Fails if the reference uses a hidden activation or backbone channels we do not implement.
    """
    if ref.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"reference hidden_act {ref['hidden_act']!r} is not supported (only exact 'gelu')")
    values: dict[str, Any] = {k: ref[k] for k in SHARED_FIELDS if k in ref}
    values["bert_mean"] = bool(ref.get("bert_mean", 1))
    values["crop_size"] = tuple(crop_size)
    values["num_frames"] = int(frames)
    values.update(overrides)
    cfg = model_config_from_dict(values)
    if "backbone_channels" in ref and tuple(ref["backbone_channels"]) != cfg.backbone_channels:
        raise ValueError(f"reference backbone_channels {ref['backbone_channels']} do not match "
                         f"ResNet-{cfg.resnet_depth} ({cfg.backbone_channels})")
    return cfg
