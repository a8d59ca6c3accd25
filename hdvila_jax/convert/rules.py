"""Name rules from the PyTorch layouts (torchvision/mmdetection ResNet, HF BERT, the
HD-VILA state_dict of docs/fidelity.md §6) to our Flax parameter tree."""
from __future__ import annotations

from hdvila_jax.convert.loader import Rules, Target
from hdvila_jax.models.config import ModelConfig
from hdvila_jax.models.resnet import STAGE_BLOCKS

# State_dict entries of the reference that its forward pass never reads.
HDVILA_UNUSED = (
    "*num_batches_tracked",
    "cnn_low.layer4.*",                                          # the LR branch stops after stage 3
    "timesformer.norm.*",                                        # built but not applied
    "transformer.bert.visual_embeddings.position_embeddings.*",  # built but not applied
    "transformer.cls.predictions.decoder.bias",                  # the same tensor as cls.predictions.bias
)
BERT_UNUSED = ("*position_ids", "pooler.*", "bert.pooler.*")     # HD-VILA's poolers start random
RESNET_UNUSED = ("*num_batches_tracked", "fc.*")


def _params(*path: str, layout: str = "same") -> Target:
    return Target("params", tuple(path), layout)


def _linear(prefix: str, *path: str) -> Rules:
    return {f"{prefix}.weight": _params(*path, "kernel", layout="linear"), f"{prefix}.bias": _params(*path, "bias")}


def _norm(prefix: str, *path: str) -> Rules:
    return {f"{prefix}.weight": _params(*path, "scale"), f"{prefix}.bias": _params(*path, "bias")}


def _batch_norm(prefix: str, *path: str) -> Rules:
    return {**_norm(prefix, *path),
            f"{prefix}.running_mean": Target("batch_stats", tuple(path) + ("mean",)),
            f"{prefix}.running_var": Target("batch_stats", tuple(path) + ("var",))}


def _conv(prefix: str, *path: str) -> Rules:
    return {f"{prefix}.weight": _params(*path, "kernel", layout="conv")}


def resnet_rules(torch_prefix: str, flax_path: tuple[str, ...], depth: int, num_stages: int = 4) -> Rules:
    """torchvision / mmdetection ResNet keys (``conv1``, ``bn1``, ``layerS.B.*``)."""
    p = torch_prefix
    rules = {**_conv(f"{p}conv1", *flax_path, "conv1"), **_batch_norm(f"{p}bn1", *flax_path, "bn1")}
    convs = 2 if depth in (18, 34) else 3
    for s, blocks in enumerate(STAGE_BLOCKS[depth][:num_stages], start=1):
        for b in range(blocks):
            tp, fp = f"{p}layer{s}.{b}", (*flax_path, f"layer{s}_{b}")
            for i in range(1, convs + 1):
                rules.update(_conv(f"{tp}.conv{i}", *fp, f"conv{i}"))
                rules.update(_batch_norm(f"{tp}.bn{i}", *fp, f"bn{i}"))
            if b == 0 and (s > 1 or convs == 3):
                rules.update(_conv(f"{tp}.downsample.0", *fp, "downsample_conv"))
                rules.update(_batch_norm(f"{tp}.downsample.1", *fp, "downsample_bn"))
    return rules


def bert_layer_rules(torch_prefix: str, flax_path: tuple[str, ...]) -> Rules:
    """One HF ``BertLayer`` (``attention.self.query`` ... ``output.LayerNorm``)."""
    p = torch_prefix
    return {**_linear(f"{p}.attention.self.query", *flax_path, "query"),
            **_linear(f"{p}.attention.self.key", *flax_path, "key"),
            **_linear(f"{p}.attention.self.value", *flax_path, "value"),
            **_linear(f"{p}.attention.output.dense", *flax_path, "attn_out"),
            **_norm(f"{p}.attention.output.LayerNorm", *flax_path, "attn_norm"),
            **_linear(f"{p}.intermediate.dense", *flax_path, "ffn_in"),
            **_linear(f"{p}.output.dense", *flax_path, "ffn_out"),
            **_norm(f"{p}.output.LayerNorm", *flax_path, "ffn_norm")}


def bert_rules(cfg: ModelConfig, prefix: str, with_mlm_head: bool, cls_prefix: str = "cls") -> Rules:
    """HF BERT keys under ``prefix`` (``''``, ``'bert.'`` or ``'transformer.bert.'``):
    embeddings and every layer, split into ``text`` (first half) and ``fusion`` (second half);
    with ``with_mlm_head`` also ``{cls_prefix}.predictions`` and ``{cls_prefix}.seq_relationship``."""
    e = f"{prefix}embeddings"
    rules = {f"{e}.word_embeddings.weight": _params("text", "embeddings", "word", "embedding"),
             f"{e}.position_embeddings.weight": _params("text", "embeddings", "position", "embedding"),
             f"{e}.token_type_embeddings.weight": _params("text", "embeddings", "token_type", "embedding"),
             **_norm(f"{e}.LayerNorm", "text", "embeddings", "norm")}
    for i in range(cfg.num_hidden_layers):
        tower = "text" if i < cfg.num_text_layers else "fusion"
        rules.update(bert_layer_rules(f"{prefix}encoder.layer.{i}", (tower, "encoder", f"layer_{i}")))
    if with_mlm_head:
        c = f"{cls_prefix}.predictions"
        rules.update({f"{c}.bias": _params("heads", "mlm", "bias"),
                      f"{c}.decoder.weight": _params("heads", "mlm", "decoder", "kernel", layout="linear"),
                      **_linear(f"{c}.transform.dense", "heads", "mlm", "dense"),
                      **_norm(f"{c}.transform.LayerNorm", "heads", "mlm", "norm"),
                      **_linear(f"{cls_prefix}.seq_relationship", "heads", "itm")})
    return rules


def timesformer_rules(cfg: ModelConfig) -> Rules:
    """``timesformer.*`` of the reference (final ``norm`` excluded: never applied)."""
    t = ("video", "timesformer")
    rules = {"timesformer.pos_embed": _params(*t, "pos_embed"), "timesformer.time_embed": _params(*t, "time_embed")}
    for i in range(cfg.timesformer_depth):
        p, f = f"timesformer.blocks.{i}", (*t, f"block_{i}")
        for norm in ("norm1", "temporal_norm1", "norm2"):
            rules.update(_norm(f"{p}.{norm}", *f, norm))
        for attn in ("attn", "temporal_attn"):
            rules.update(_linear(f"{p}.{attn}.qkv", *f, attn, "qkv"))
            rules.update(_linear(f"{p}.{attn}.proj", *f, attn, "proj"))
        rules.update(_linear(f"{p}.temporal_fc", *f, "temporal_fc"))
        rules.update(_linear(f"{p}.mlp.fc1", *f, "fc1"))
        rules.update(_linear(f"{p}.mlp.fc2", *f, "fc2"))
    return rules


def qa_head_rules() -> Rules:
    """``transformer.classifier`` (Linear, ReLU, Linear) of the video QA models -> ``heads/qa_classifier``."""
    return {**_linear("transformer.classifier.0", "heads", "qa_classifier", "hidden"),
            **_linear("transformer.classifier.2", "heads", "qa_classifier", "out")}


def hdvila_rules(cfg: ModelConfig, stage: int) -> Rules:
    """Every key of a released-layout HD-VILA state_dict for ``stage`` 1 or 2.

    With ``cfg.num_qa_outputs`` > 0 (stage 2) the layout is the video QA model's
    (``HDVILAForSequenceClassification`` / ``HDVILAForMultipleChoice``): the stage-2 encoder
    with ``pooler1`` and the ``transformer.classifier`` head, no ``t_proj``/``v_proj``/``cls``.
    """
    rules = {**resnet_rules("cnn.", ("video", "cnn_hr"), cfg.resnet_depth),
             **resnet_rules("cnn_low.", ("video", "cnn_lr"), cfg.resnet_depth, num_stages=3),
             **_conv("grid_encoder.0", "video", "grid_hr"),
             **_conv("grid_encoder_low.0", "video", "grid_lr"),
             **_conv("grid_encoder_combine.0", "video", "fuse"),
             **timesformer_rules(cfg),
             **_linear("transformer.bert.pooler1.dense", "text", "pooler", "dense"),
             **_linear("transformer.t_proj", "contrastive", "text_proj"),
             **_linear("transformer.v_proj", "contrastive", "video_proj")}
    bert = bert_rules(cfg, "transformer.bert.", with_mlm_head=stage == 2, cls_prefix="transformer.cls")
    if stage == 1:  # a stage-1 model has only the text half of BERT
        bert = {k: v for k, v in bert.items() if v.path[0] != "fusion"}
    rules.update(bert)
    if stage == 2:
        v = "transformer.bert.visual_embeddings"
        f = ("fusion", "visual_embeddings")
        rules.update({f"{v}.row_position_embeddings.weight": _params(*f, "row", "embedding"),
                      f"{v}.col_position_embeddings.weight": _params(*f, "col", "embedding"),
                      f"{v}.token_type_embeddings.weight": _params(*f, "token_type", "embedding"),
                      **_norm(f"{v}.LayerNorm", *f, "norm"),
                      **_linear("transformer.bert.pooler2.dense", "fusion", "pooler", "dense")})
        if cfg.num_qa_outputs > 0:
            rules = {k: t for k, t in rules.items() if t.path[0] not in ("contrastive", "heads")}
            rules.update(qa_head_rules())
    return rules
