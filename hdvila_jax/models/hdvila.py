"""The HD-VILA model: video and text towers (stage 1) and the cross-modal encoder (stage 2).

Parameter tree (top level):
  video/        cnn_hr, cnn_lr, grid_hr, grid_lr, timesformer, fuse   (stage 1)
  text/         embeddings, layer_0 .. layer_{n/2-1}, pooler           (stage 1)
  contrastive/  text_proj, video_proj                                  (stage 1)
  fusion/       visual_embeddings, layer_{n/2} .. layer_{n-1}, pooler  (stage 2)
  heads/        mlm, itm                                               (stage 2)
                qa_classifier/{hidden,out}   (video QA, only when ``num_qa_outputs`` > 0)
A QA model (``qa_logits``) has no ``contrastive`` projections and no MLM/ITM heads.
BatchNorm running statistics live in the ``batch_stats`` collection. Every named
intermediate the parity fixtures check is sown into ``intermediates``.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from hdvila_jax.models.bert import (BertStack, MLMHead, Pooler, TextEmbeddings, VisualEmbeddings,
                                    dense)
from hdvila_jax.models.config import ModelConfig
from hdvila_jax.models.layers import at_least_float32
from hdvila_jax.models.qa_head import QAClassifier, flatten_choices
from hdvila_jax.losses import masked_lm_loss
from hdvila_jax.models.video_encoder import HybridVideoEncoder

Batch = dict[str, jax.Array]


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along the last axis, in float32 or float64 (``F.normalize``)."""
    x = x.astype(at_least_float32(x.dtype))
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def aggregate_clips(x: jax.Array, how: str, axis: int = 1) -> jax.Array:
    """Pool per-clip outputs over ``axis`` with ``lse``, ``mean`` or ``max``."""
    if how == "lse":
        return jax.nn.logsumexp(x.astype(at_least_float32(x.dtype)), axis=axis).astype(x.dtype)
    if how == "mean":
        return x.mean(axis=axis)
    if how == "max":
        return x.max(axis=axis)
    raise ValueError(f"score_agg_func must be lse, mean or max, got {how!r}")


class TextTower(nn.Module):
    """Embeddings + layers 0 .. n/2-1 + ``pooler`` (pooler1 of the reference)."""

    config: ModelConfig

    def setup(self):
        self.embeddings = TextEmbeddings(self.config)
        self.encoder = BertStack(self.config, 0, self.config.num_text_layers)
        self.pooler = Pooler(self.config)

    def __call__(self, input_ids: jax.Array, mask: jax.Array, deterministic: bool = True):
        """Token outputs of the last text layer ``[B, L, D]`` and the pooled text ``[B, D]``."""
        x = self.embeddings(input_ids, deterministic)
        self.sow("intermediates", "text_embeddings", x)
        x = self.encoder(x, mask, deterministic)
        if self.config.bert_mean:
            m = mask.astype(x.dtype)[..., None]
            pooled_in = (x * m).sum(1) / m.sum(1)
        else:
            pooled_in = x[:, 0]
        return x, self.pooler(pooled_in)


class CrossModalEncoder(nn.Module):
    """Layers n/2 .. n-1 over [text tokens ; visual tokens] of each clip, + ``pooler`` (pooler2)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.visual_embeddings = VisualEmbeddings(cfg)
        self.encoder = BertStack(cfg, cfg.num_text_layers, cfg.num_hidden_layers - cfg.num_text_layers)
        self.pooler = Pooler(cfg)

    def __call__(self, text_seq: jax.Array, text_mask: jax.Array, grid: jax.Array,
                 sample_tokens: bool, deterministic: bool = True):
        """``text_seq [B, L, D]``, ``grid [B, C, h, w, D]`` -> sequence ``[B, C, L+Lv, D]``, pooled ``[B, C, D]``."""
        batch, clips = grid.shape[:2]
        tokens = self.visual_embeddings(grid.reshape(batch * clips, *grid.shape[2:]), sample_tokens, deterministic)
        self.sow("intermediates", "visual_tokens", tokens)
        text = jnp.repeat(text_seq, clips, axis=0)
        mask = jnp.concatenate([jnp.repeat(text_mask, clips, axis=0),
                                jnp.ones(tokens.shape[:2], text_mask.dtype)], axis=1)
        seq = self.encoder(jnp.concatenate([text, tokens.astype(text.dtype)], axis=1), mask, deterministic)
        pooled = self.pooler(seq[:, 0])
        return seq.reshape(batch, clips, *seq.shape[1:]), pooled.reshape(batch, clips, -1)


class HDVILA(nn.Module):
    """HD-VILA pretraining model.

    ``__call__(batch, stage, deterministic)`` returns a dict: stage 1 gives
    ``text_features``/``video_features`` (L2-normalised, float32); stage 2 adds
    ``mlm_logits``, ``itm_logits``, ``vtoken_output`` and, when ``mlm_labels`` is in the
    batch, ``mlm_loss``/``mlm_acc``. Pixels are uint8 or float RGB 0..255, NHWC.
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.video = HybridVideoEncoder(cfg)
        self.text = TextTower(cfg)
        self.contrastive = ContrastiveHeads(cfg)
        self.fusion = CrossModalEncoder(cfg)
        self.heads = PretrainingHeads(cfg)

    def encode_text(self, input_ids: jax.Array, mask: jax.Array, deterministic: bool = True):
        """Text tokens ``[B, L, D]`` of the last text layer and normalised features ``[B, D]``."""
        seq, pooled = self.text(input_ids, mask, deterministic)
        self.sow("intermediates", "text_pooled", pooled)
        return seq, self.contrastive.text(pooled)

    def encode_video(self, img_middle: jax.Array, img_other: jax.Array, deterministic: bool = True):
        """Visual grid ``[B, C, h, w, D]`` and normalised features ``[B, D]`` (mean over clips, h, w)."""
        grid = self.video(img_middle, img_other, deterministic)
        pooled = grid.mean(axis=(1, 2, 3))
        self.sow("intermediates", "vis_pooled", pooled)
        return grid, self.contrastive.video(pooled)

    def __call__(self, batch: Batch, stage: int = 1, deterministic: bool = True,
                 sample_visual_tokens: bool | None = None) -> dict[str, Any]:
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage!r}")
        text_seq, text_features = self.encode_text(batch["text_input_ids"], batch["text_input_mask"], deterministic)
        grid, video_features = self.encode_video(batch["img_middle"], batch["img_other"], deterministic)
        self.sow("intermediates", "text_seq_stage1", text_seq)
        out = dict(text_features=text_features, video_features=video_features)
        if stage == 1:
            return out
        if sample_visual_tokens is None:
            sample_visual_tokens = not deterministic
        out.update(self.cross_modal(text_seq, batch["text_input_mask"], grid, sample_visual_tokens, deterministic))
        if "mlm_labels" in batch:
            out["mlm_loss"], out["mlm_acc"] = masked_lm_loss(out["mlm_logits"], batch["mlm_labels"])
        return out

    def cross_modal(self, text_seq: jax.Array, text_mask: jax.Array, grid: jax.Array,
                    sample_visual_tokens: bool, deterministic: bool = True) -> dict[str, jax.Array]:
        """Stage-2 outputs from stage-1 text tokens and the visual grid."""
        seq, pooled = self.fusion(text_seq, text_mask, grid, sample_visual_tokens, deterministic)
        self.sow("intermediates", "pooled2", pooled)
        length = text_seq.shape[1]
        agg = self.config.score_agg_func
        text_out = aggregate_clips(seq[:, :, :length], agg)
        self.sow("intermediates", "cls_in", text_out)
        return dict(vtoken_output=seq[:, :, length:],
                    mlm_logits=self.heads.mlm(text_out),
                    itm_logits=self.heads.itm(aggregate_clips(pooled, agg)))

    def qa_logits(self, batch: Batch, deterministic: bool = True) -> jax.Array:
        """Video QA scores ``[K, B, C]``, clip-major as the original (docs/fidelity.md §13.1).

        Open-ended: text ``[B, L]``, C = ``num_qa_outputs`` answers. Multiple choice: text
        ``[B, C, L]`` (question + option i), run as rows ``b*C + i`` of ``[B*C, L]``, every clip's
        visual tokens repeated C times; needs ``num_qa_outputs`` == 1. The text layers run once
        per sequence, the cross-modal layers per (clip, sequence); no visual token sampling.
        Intermediates: ``head_in`` ``[K, R, D]`` (R = rows of text), ``head_hidden``.
        """
        if self.config.num_qa_outputs <= 0:
            raise ValueError("qa_logits needs ModelConfig.num_qa_outputs > 0 (answers, or 1 for multiple choice)")
        ids, mask = batch["text_input_ids"], batch["text_input_mask"]
        choices = ids.shape[1] if ids.ndim == 3 else 0
        if choices:
            if self.config.num_qa_outputs != 1:
                raise ValueError(f"multiple choice needs num_qa_outputs=1, got {self.config.num_qa_outputs}")
            ids, mask = flatten_choices(ids), flatten_choices(mask)
        text_seq, _ = self.text(ids, mask, deterministic)  # pooler1 runs; its output is discarded
        self.sow("intermediates", "text_seq_stage1", text_seq)
        grid = self.video(batch["img_middle"], batch["img_other"], deterministic)  # [B, K, h, w, D]
        if choices:
            grid = jnp.repeat(grid, choices, axis=0)  # [B*C, K, h, w, D]
        _, pooled = self.fusion(text_seq, mask, grid, False, deterministic)  # pooled [R, K, D]
        head_in = jnp.swapaxes(pooled, 0, 1)  # [K, R, D]
        self.sow("intermediates", "head_in", head_in)
        logits = self.heads.qa_classifier(head_in, deterministic)  # [K, R, out]
        if choices:
            return logits[..., 0].reshape(logits.shape[0], -1, choices)  # [K, B, C], [k, b, i] = row b*C+i
        return logits


class ContrastiveHeads(nn.Module):
    """``text_proj`` / ``video_proj`` (t_proj / v_proj of the reference) + L2 normalisation."""

    config: ModelConfig

    def setup(self):
        self.text_proj = dense(self.config, self.config.hidden_size, "text_proj")
        self.video_proj = dense(self.config, self.config.hidden_size, "video_proj")

    def text(self, pooled: jax.Array) -> jax.Array:
        return l2_normalize(self.text_proj(pooled))

    def video(self, pooled: jax.Array) -> jax.Array:
        return l2_normalize(self.video_proj(pooled))


class PretrainingHeads(nn.Module):
    """MLM head on text positions and the ITM (``seq_relationship``) head on pooler2; with
    ``num_qa_outputs`` > 0 also the video QA head ``qa_classifier`` (created only when used)."""

    config: ModelConfig

    def setup(self):
        self.mlm = MLMHead(self.config)
        self.itm = dense(self.config, 2, "itm")
        if self.config.num_qa_outputs > 0:
            self.qa_classifier = QAClassifier(self.config, self.config.num_qa_outputs)
