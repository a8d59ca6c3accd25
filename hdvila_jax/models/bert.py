"""BERT pieces (post-LN, exact GELU) for the text and cross-modal encoders (docs/fidelity.md §4).

Parameter names: ``embeddings/{word,position,token_type,norm}``, per layer
``layer_{i}/{query,key,value,attn_out,attn_norm,ffn_in,ffn_out,ffn_norm}`` with the
absolute BERT layer index ``i``, ``pooler``, and ``visual_embeddings/{row,col,token_type,norm}``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from hdvila_jax.models.config import ModelConfig
from hdvila_jax.models.layers import attention, bert_init, exact_gelu, layer_norm, merge_heads, remat_block, split_heads

MASK_BIAS = -10000.0  # the reference's additive attention mask value


def _dtypes(cfg: ModelConfig) -> tuple[jnp.dtype, jnp.dtype]:
    return jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)


def dense(cfg: ModelConfig, features: int, name: str) -> nn.Dense:
    """``nn.Dense`` with BERT's N(0, 0.02) initialisation and the config's dtypes."""
    dtype, pdtype = _dtypes(cfg)
    return nn.Dense(features, kernel_init=bert_init, dtype=dtype, param_dtype=pdtype, name=name)


def embed(cfg: ModelConfig, num: int, name: str) -> nn.Embed:
    """``nn.Embed`` with BERT's N(0, 0.02) initialisation and the config's dtypes."""
    dtype, pdtype = _dtypes(cfg)
    return nn.Embed(num, cfg.hidden_size, embedding_init=bert_init, dtype=dtype, param_dtype=pdtype, name=name)


def bert_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
    """LayerNorm with BERT's epsilon."""
    return layer_norm(cfg.layer_norm_eps, *_dtypes(cfg), name)


def attention_bias(mask: jax.Array) -> jax.Array:
    """``[B, L]`` 1/0 validity -> additive ``[B, 1, 1, L]`` float32 bias."""
    return (1.0 - mask.astype(jnp.float32))[:, None, None, :] * MASK_BIAS


class TextEmbeddings(nn.Module):
    """Word + position + token-type (all type 0) embeddings, LayerNorm, dropout."""

    config: ModelConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        length = input_ids.shape[1]
        x = embed(cfg, cfg.vocab_size, "word")(input_ids)
        x = x + embed(cfg, cfg.max_position_embeddings, "position")(jnp.arange(length))[None]
        x = x + embed(cfg, cfg.type_vocab_size, "token_type")(jnp.zeros((1, length), jnp.int32))
        x = bert_norm(cfg, "norm")(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertLayer(nn.Module):
    """Post-LN transformer layer: self-attention, then the feed-forward block."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg = self.config
        heads, width = cfg.num_attention_heads, cfg.hidden_size
        q, k, v = (split_heads(dense(cfg, width, n)(x), heads) for n in ("query", "key", "value"))
        probs_dropout = nn.Dropout(cfg.attention_probs_dropout_prob)
        ctx = merge_heads(attention(q, k, v, bias, probs_dropout, deterministic))
        ctx = nn.Dropout(cfg.hidden_dropout_prob)(dense(cfg, width, "attn_out")(ctx), deterministic=deterministic)
        x = bert_norm(cfg, "attn_norm")(ctx + x)
        y = exact_gelu(dense(cfg, cfg.intermediate_size, "ffn_in")(x))
        y = nn.Dropout(cfg.hidden_dropout_prob)(dense(cfg, width, "ffn_out")(y), deterministic=deterministic)
        return bert_norm(cfg, "ffn_norm")(y + x)


class BertStack(nn.Module):
    """BERT layers ``first .. first+count-1`` (named by absolute index), sowing each output."""

    config: ModelConfig
    first: int
    count: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, deterministic: bool = True) -> jax.Array:
        bias = attention_bias(mask)
        layer_cls = remat_block(BertLayer, self.config.active_remat, static_argnums=(3,))
        for i in range(self.first, self.first + self.count):
            x = layer_cls(self.config, name=f"layer_{i}")(x, bias, deterministic)
            self.sow("intermediates", f"bert_layer{i:02d}", x)
        return x


class Pooler(nn.Module):
    """Dense + tanh."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(dense(self.config, self.config.hidden_size, "dense")(x))


class VisualEmbeddings(nn.Module):
    """Visual tokens: grid + row/column position embeddings, optional random token
    sampling (training only), + token-type vector, LayerNorm, dropout."""

    config: ModelConfig

    @nn.compact
    def __call__(self, grid: jax.Array, sample_tokens: bool, deterministic: bool = True) -> jax.Array:
        """``grid [N, H, W, D]`` -> tokens ``[N, H*W or sampled, D]``."""
        cfg = self.config
        n, h, w, d = grid.shape
        grid = grid + embed(cfg, cfg.max_grid_row_position_embeddings, "row")(jnp.arange(h))[None, :, None]
        grid = grid + embed(cfg, cfg.max_grid_col_position_embeddings, "col")(jnp.arange(w))[None, None, :]
        tokens = grid.reshape(n, h * w, d)
        size = cfg.pixel_random_sampling_size
        if sample_tokens and 0 < size < h * w:
            # One sorted sample of cells shared by the whole batch, as in the reference.
            keep = jnp.sort(jax.random.choice(self.make_rng("dropout"), h * w, (size,), replace=False))
            tokens = jnp.take(tokens, keep, axis=1)
        tokens = tokens + embed(cfg, 1, "token_type")(jnp.zeros((1, 1), jnp.int32))
        tokens = bert_norm(cfg, "norm")(tokens)
        return nn.Dropout(cfg.hidden_dropout_prob)(tokens, deterministic=deterministic)


class MLMHead(nn.Module):
    """BERT prediction head: dense, GELU, LayerNorm, decoder with its own weight and bias."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = bert_norm(cfg, "norm")(exact_gelu(dense(cfg, cfg.hidden_size, "dense")(x)))
        dtype, pdtype = _dtypes(cfg)
        decoder = nn.Dense(cfg.vocab_size, use_bias=False, kernel_init=bert_init, dtype=dtype,
                           param_dtype=pdtype, name="decoder")
        bias = self.param("bias", nn.initializers.zeros, (cfg.vocab_size,), pdtype)
        return decoder(x) + bias.astype(dtype)
