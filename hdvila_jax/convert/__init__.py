"""PyTorch -> Flax weight conversion: full HD-VILA checkpoints, HF BERT and ResNet.

    from hdvila_jax.convert import convert_hdvila, load_bert, load_resnet, load_state_dict
    variables = convert_hdvila(load_state_dict("hdvila_stage2.pt"), model_cfg, stage=2)
    variables, report = load_bert(variables, load_state_dict("bert/model.safetensors"), model_cfg)
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from hdvila_jax.convert.loader import ConversionError, ConversionReport, export_rules, load_rules, unfilled_leaves
from hdvila_jax.convert.rules import (BERT_UNUSED, HDVILA_UNUSED, RESNET_UNUSED, bert_rules, hdvila_rules,
                                      resnet_rules)
from hdvila_jax.convert.torch_io import load_state_dict
from hdvila_jax.models.config import ModelConfig
from hdvila_jax.models.variables import abstract_variables

StateDict = Mapping[str, np.ndarray]

__all__ = ["ConversionError", "ConversionReport", "convert_hdvila", "export_hdvila", "load_bert", "load_resnet",
           "load_state_dict"]


def convert_hdvila(state_dict: StateDict, cfg: ModelConfig, stage: int) -> dict:
    """A full HD-VILA state_dict (layout: docs/fidelity.md §6) -> ``{'params', 'batch_stats'}`` of numpy arrays.

    With ``cfg.num_qa_outputs`` > 0 and ``stage`` 2 the state_dict is a video QA model's
    (``transformer.classifier.*`` head, no ``t_proj``/``v_proj``/``cls``; docs/fidelity.md §13.1).

    Every model variable must come from the checkpoint; keys the reference never reads
    (``cnn_low.layer4``, ``timesformer.norm``, ...) are ignored, any other extra key is an error.
    """
    decoder_bias = state_dict.get("transformer.cls.predictions.decoder.bias")
    bias = state_dict.get("transformer.cls.predictions.bias")
    if decoder_bias is not None and bias is not None and not np.array_equal(decoder_bias, bias):
        raise ConversionError("transformer.cls.predictions.decoder.bias differs from transformer.cls.predictions.bias; "
                              "the reference ties them, so the checkpoint is inconsistent")
    variables, _ = load_rules(abstract_variables(cfg, stage), state_dict, hdvila_rules(cfg, stage),
                              ignore=HDVILA_UNUSED)
    unfilled = unfilled_leaves(variables)
    if unfilled:
        raise ConversionError(f"no checkpoint entry fills these model variables: {unfilled}")
    return variables


def export_hdvila(variables: Mapping, cfg: ModelConfig, stage: int) -> dict[str, np.ndarray]:
    """Our variables as a reference-layout state_dict (the inverse of :func:`convert_hdvila`),
    without the entries the reference never reads."""
    return export_rules(variables, hdvila_rules(cfg, stage))


def _bert_prefix(state_dict: StateDict) -> str:
    return "bert." if any(k.startswith("bert.") for k in state_dict) else ""


def _rename_legacy_layer_norm(state_dict: StateDict) -> dict[str, np.ndarray]:
    """Old TF-converted BERT checkpoints call LayerNorm's weight/bias gamma/beta."""
    renamed = {}
    for key, value in state_dict.items():
        if ".LayerNorm." in key:
            key = key.replace(".gamma", ".weight").replace(".beta", ".bias")
        renamed[key] = value
    return renamed


def load_bert(variables: Mapping, state_dict: StateDict, cfg: ModelConfig, *,
              allow_missing: bool = False) -> tuple[dict, ConversionReport]:
    """Load an HF BERT checkpoint (keys with or without ``bert.``, with or without ``cls.``) into
    the text layers (first half) and, when the model has them, the cross-modal layers and MLM/ITM heads.

    As in the reference, an MLM decoder missing from a tied checkpoint starts as a copy of the
    word embeddings; BERT's pooler is not used (HD-VILA's poolers start random).
    """
    state_dict = _rename_legacy_layer_norm(state_dict)
    has_fusion = "fusion" in variables["params"]
    has_cls = any(k.startswith("cls.") for k in state_dict)
    rules = bert_rules(cfg, _bert_prefix(state_dict), with_mlm_head=has_fusion and has_cls)
    ignore = list(BERT_UNUSED)
    if not has_fusion:  # a stage-1 model: the second half of BERT and its heads have no place
        ignore += [k for k, t in rules.items() if t.path[0] == "fusion"] + ["cls.*"]
        rules = {k: t for k, t in rules.items() if t.path[0] != "fusion"}
    if has_fusion and has_cls and "cls.predictions.decoder.weight" not in state_dict:
        word = state_dict.get(f"{_bert_prefix(state_dict)}embeddings.word_embeddings.weight")
        if word is not None:
            state_dict = {**state_dict, "cls.predictions.decoder.weight": word}
    state_dict = {k: v for k, v in state_dict.items() if k != "cls.predictions.decoder.bias"}
    return load_rules(variables, state_dict, rules, ignore=ignore, allow_missing=allow_missing)


def load_resnet(variables: Mapping, state_dict: StateDict, cfg: ModelConfig) -> tuple[dict, ConversionReport]:
    """Load a torchvision / mmdetection ResNet (optionally under ``backbone.``) into both
    ``video/cnn_hr`` and ``video/cnn_lr`` (the LR branch takes stages 1-3), as the reference does."""
    prefix = "backbone." if any(k.startswith("backbone.") for k in state_dict) else ""
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    variables, report = load_rules(variables, state_dict, resnet_rules("", ("video", "cnn_hr"), cfg.resnet_depth),
                                   ignore=RESNET_UNUSED)
    lr_rules = resnet_rules("", ("video", "cnn_lr"), cfg.resnet_depth, num_stages=3)
    variables, _ = load_rules(variables, state_dict, lr_rules, ignore=RESNET_UNUSED + ("layer4.*",))
    return variables, report
