"""Typed, validated model configuration.

The experiment configs in ``configs/`` are ml_collections ``ConfigDict``s; the model
takes a frozen :class:`ModelConfig` built from one with :func:`model_config_from_dict`,
which checks every field before anything is traced or compiled.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

RESNET_DEPTHS = (18, 34, 50, 101, 152)
SCORE_AGG_FUNCS = ("lse", "mean", "max")
DTYPES = ("float32", "bfloat16", "float16", "float64")  # float64 needs jax_enable_x64 (numerical checks)
# What ``remat=True`` recomputes in the backward pass (see ``ModelConfig.remat_policy``).
REMAT_POLICIES = ("elementwise", "stage", "block", "block_dots")
# Platforms the model can be lowered for (``ModelConfig.lowering_platform``; "" = the default backend).
LOWERING_PLATFORMS = ("", "cpu", "gpu", "tpu")


class ConfigError(ValueError):
    """A model config field has a bad value; the message names the field."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every number that shapes the HD-VILA model (docs/fidelity.md §2-§4).

    Names follow the reference's BERT-style config where one exists.
    """

    # BERT (text encoder = first half of the layers, cross-modal = second half).
    vocab_size: int = 30522
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    bert_mean: bool = True
    # Visual tokens of the cross-modal encoder.
    max_grid_row_position_embeddings: int = 100
    max_grid_col_position_embeddings: int = 100
    pixel_random_sampling_size: int = 160
    score_agg_func: str = "lse"
    # Video QA head ``heads/qa_classifier`` (docs/fidelity.md §13): number of answers, 1 for
    # multiple choice; 0 = no QA head (pretraining / retrieval parameter trees).
    num_qa_outputs: int = 0
    # Video encoder.
    resnet_depth: int = 50
    timesformer_depth: int = 4
    timesformer_heads: int = 16
    timesformer_mlp_ratio: float = 4.0
    timesformer_drop_path_rate: float = 0.1
    timesformer_grid: tuple[int, int] = (10, 16)
    timesformer_frames: int = 7
    num_frames: int = 7
    crop_size: tuple[int, int] = (640, 1024)
    # Numerics.
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    # With ``remat``: "stage" recomputes each ResNet stage as a whole (keeping only its input) and
    # each transformer layer; "block" recomputes each residual block and transformer layer;
    # "block_dots" does too but keeps their matmul / convolution outputs; "elementwise" keeps every
    # projection's output and the ResNets' hidden maps, recomputing LayerNorms, GELUs, attention scores,
    # the stems and stage 1's block outputs (about 2% more FLOPs; the paper configs' policy). "stage" needs the
    # least memory by XLA's analysis of the paper config (docs/performance.md).
    remat_policy: str = "stage"
    # Lowering (no parameters, the same function; only how it is lowered). The platform the model is
    # traced for: "cpu", "gpu" or "tpu", the devices a step will run on; "" = JAX's default backend
    # where the model is traced. Its convolution and max-pool forms follow it (``models.conv``,
    # ``layers.max_pool``): a TPU step compiled ahead of time on a CPU host needs "tpu"
    # (``train.step_builder.build_step`` sets it from the mesh).
    lowering_platform: str = ""
    # On CPU, kxk convolutions on large maps in oneDNN (``hdvila_jax.kernels``; the [onednn] extra,
    # a single CPU device); XLA's own convolutions where it cannot be built.
    onednn_conv: bool = False
    # The TimeSformer's attentions as Pallas kernels, one per direction: the spatial one over 160 tokens
    # per frame (``hdvila_jax.kernels.fused_attention``), the temporal one over 7 frames per cell
    # (``hdvila_jax.kernels.temporal_attention``). Their scores and probabilities never reach HBM and the
    # backward pass recomputes them; the same roundings as XLA's formulation (round-off apart). With it
    # both attentions take q, k, v token-major (``timesformer.GridAttention``). TPU kernels: on other
    # platforms Pallas interprets them, slowly (for tests).
    fused_attention: bool = False

    @property
    def active_remat(self) -> str:
        """The remat policy in force: ``remat_policy`` when ``remat`` is on, else ""."""
        return self.remat_policy if self.remat else ""

    @property
    def num_text_layers(self) -> int:
        """Layers 0 .. n/2-1 form the text encoder (stage 1)."""
        return self.num_hidden_layers // 2

    @property
    def grid_size(self) -> tuple[int, int]:
        """Visual grid (H/64, W/64) of the HR crop."""
        return self.crop_size[0] // 64, self.crop_size[1] // 64

    @property
    def backbone_channels(self) -> tuple[int, int, int, int]:
        """Channels of ResNet stages C2..C5 for ``resnet_depth``."""
        expansion = 1 if self.resnet_depth in (18, 34) else 4
        return tuple(64 * expansion * 2**i for i in range(4))


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"model config field '{field}': {message}")


def validate(cfg: ModelConfig) -> ModelConfig:
    """Raise :class:`ConfigError` naming the first bad field; return ``cfg``."""
    for name in ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size", "timesformer_heads",
                 "timesformer_depth", "num_frames", "timesformer_frames"):
        _check(int(getattr(cfg, name)) > 0, name, f"must be a positive integer, got {getattr(cfg, name)!r}")
    _check(cfg.num_hidden_layers >= 2 and cfg.num_hidden_layers % 2 == 0, "num_hidden_layers",
           f"must be even (split in halves into text and cross-modal encoders), got {cfg.num_hidden_layers}")
    _check(cfg.hidden_size % cfg.num_attention_heads == 0, "hidden_size",
           f"{cfg.hidden_size} is not divisible by num_attention_heads={cfg.num_attention_heads}")
    _check(cfg.hidden_size % cfg.timesformer_heads == 0, "hidden_size",
           f"{cfg.hidden_size} is not divisible by timesformer_heads={cfg.timesformer_heads}")
    _check(cfg.resnet_depth in RESNET_DEPTHS, "resnet_depth", f"must be one of {RESNET_DEPTHS}, got {cfg.resnet_depth}")
    _check(cfg.score_agg_func in SCORE_AGG_FUNCS, "score_agg_func",
           f"must be one of {SCORE_AGG_FUNCS}, got {cfg.score_agg_func!r}")
    _check(len(cfg.crop_size) == 2 and all(int(s) > 0 and int(s) % 64 == 0 for s in cfg.crop_size),
           "crop_size", f"both sides must be positive multiples of 64 (grid stride), got {tuple(cfg.crop_size)}")
    _check(cfg.num_frames >= 2, "num_frames", f"needs the middle frame and at least one neighbour, got {cfg.num_frames}")
    rows, cols = cfg.grid_size
    _check(rows <= cfg.max_grid_row_position_embeddings, "max_grid_row_position_embeddings",
           f"{cfg.max_grid_row_position_embeddings} rows is fewer than the grid's {rows}")
    _check(cfg.max_grid_col_position_embeddings >= cols, "max_grid_col_position_embeddings",
           f"{cfg.max_grid_col_position_embeddings} columns is fewer than the grid's {cols}")
    _check(cfg.num_qa_outputs >= 0, "num_qa_outputs", f"must be >= 0, got {cfg.num_qa_outputs}")
    _check(cfg.pixel_random_sampling_size >= 0, "pixel_random_sampling_size", "must be >= 0")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "timesformer_drop_path_rate"):
        _check(0.0 <= getattr(cfg, name) < 1.0, name, f"must be in [0, 1), got {getattr(cfg, name)}")
    _check(cfg.dtype in DTYPES, "dtype", f"must be one of {DTYPES}, got {cfg.dtype!r}")
    _check(cfg.remat_policy in REMAT_POLICIES, "remat_policy",
           f"must be one of {REMAT_POLICIES}, got {cfg.remat_policy!r}")
    _check(cfg.lowering_platform in LOWERING_PLATFORMS, "lowering_platform",
           f"must be one of {LOWERING_PLATFORMS} (\"\" = the default backend), got {cfg.lowering_platform!r}")
    _check(isinstance(cfg.onednn_conv, bool), "onednn_conv", f"must be true or false, got {cfg.onednn_conv!r}")
    _check(isinstance(cfg.fused_attention, bool), "fused_attention",
           f"must be true or false, got {cfg.fused_attention!r}")
    _check(cfg.param_dtype in DTYPES, "param_dtype", f"must be one of {DTYPES}, got {cfg.param_dtype!r}")
    return cfg


def model_config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
    """Build and validate a :class:`ModelConfig`; unknown keys are an error."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown model config field(s) {unknown}; known fields: {sorted(fields)}")
    kwargs = dict(values)
    for name in ("timesformer_grid", "crop_size"):
        if name in kwargs:
            kwargs[name] = tuple(int(v) for v in kwargs[name])
    return validate(ModelConfig(**kwargs))
