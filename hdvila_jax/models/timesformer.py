"""TimeSformer with divided space-time attention over grids of features (SPEC section 3).

Input and output are ``[N, T, H, W, D]``: no patch embedding and no cls token, the
grid cells are the tokens. ``pos_embed`` (native grid, e.g. 10x16) and ``time_embed``
(native frame count, 7) are resized like the reference (bilinear / linear,
half-pixel centres) when the input differs. The reference's final ``norm`` is never
applied in its forward pass, so this module does not create it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from hdvila_jax.models.layers import (Dtype, at_least_float32, attention, exact_gelu, layer_norm,
                                      linear_resize_matrix, merge_heads, remat_block, split_heads, trunc_init)


class GridAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection over ``[..., L, D]``."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        dense = lambda f, name: nn.Dense(f, kernel_init=trunc_init, dtype=self.dtype,
                                         param_dtype=self.param_dtype, name=name)
        qkv = dense(3 * width, "qkv")(x)
        # The reference lays the 3*D outputs out as [3, heads, head_dim].
        q, k, v = (split_heads(t, self.num_heads) for t in jnp.split(qkv, 3, axis=-1))
        out = merge_heads(attention(q, k, v, None, None, True))
        return dense(width, "proj")(out)


class TimeSformerBlock(nn.Module):
    """Temporal attention per cell, spatial attention per frame, then the MLP."""

    num_heads: int
    mlp_ratio: float
    drop_path: float
    zero_temporal_fc: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        n, t, h, w, d = x.shape
        dt, pd = self.dtype, self.param_dtype
        norm = lambda name: layer_norm(1e-6, dt, pd, name)
        # Drop-path masks one sample of the reference's reshaped batch: a (n, h, w)
        # cell for temporal attention, an (n, t) frame for spatial, an n for the MLP.
        drop = lambda shared_dims: nn.Dropout(self.drop_path, broadcast_dims=shared_dims)

        xt = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(n * h * w, t, d)
        res = GridAttention(self.num_heads, dt, pd, name="temporal_attn")(norm("temporal_norm1")(xt))
        res = jnp.transpose(res.reshape(n, h, w, t, d), (0, 3, 1, 2, 4))
        res = drop((1, 4))(res, deterministic=deterministic)
        fc_init = nn.initializers.zeros if self.zero_temporal_fc else trunc_init
        res = nn.Dense(d, kernel_init=fc_init, dtype=dt, param_dtype=pd, name="temporal_fc")(res)
        x = x + res

        xs = x.reshape(n * t, h * w, d)
        res = GridAttention(self.num_heads, dt, pd, name="attn")(norm("norm1")(xs)).reshape(n, t, h, w, d)
        x = x + drop((2, 3, 4))(res, deterministic=deterministic)

        hidden = int(d * self.mlp_ratio)
        y = nn.Dense(hidden, kernel_init=trunc_init, dtype=dt, param_dtype=pd, name="fc1")(norm("norm2")(x))
        y = nn.Dense(d, kernel_init=trunc_init, dtype=dt, param_dtype=pd, name="fc2")(exact_gelu(y))
        return x + drop((1, 2, 3, 4))(y, deterministic=deterministic)


class TimeSformer(nn.Module):
    """Divided space-time transformer over ``[N, T, H, W, D]`` grids."""

    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    native_grid: tuple[int, int] = (10, 16)
    native_frames: int = 7
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = ""  # a ModelConfig.remat_policy ("" = off): each block is recomputed in the backward pass

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        _, t, h, w, d = x.shape
        gh, gw = self.native_grid
        pos = self.param("pos_embed", trunc_init, (1, gh * gw, d), self.param_dtype)
        time = self.param("time_embed", nn.initializers.zeros, (1, self.native_frames, d), self.param_dtype)
        pos = pos.reshape(gh, gw, d)
        if (h, w) != (gh, gw):
            pos = jnp.einsum("hH,wW,HWd->hwd", linear_resize_matrix(gh, h, at_least_float32(pos.dtype)),
                             linear_resize_matrix(gw, w, at_least_float32(pos.dtype)), pos)
        time = time[0]
        if t != self.native_frames:
            time = jnp.asarray(linear_resize_matrix(self.native_frames, t, at_least_float32(time.dtype))) @ time
        x = x + pos[None, None].astype(x.dtype) + time[None, :, None, None].astype(x.dtype)
        rates = np.linspace(0.0, self.drop_path_rate, self.depth)
        block_cls = remat_block(TimeSformerBlock, self.remat, static_argnums=(2,))
        for i in range(self.depth):
            x = block_cls(self.num_heads, self.mlp_ratio, float(rates[i]), i > 0, self.dtype,
                                 self.param_dtype, name=f"block_{i}")(x, deterministic)
        return x
