"""TimeSformer with divided space-time attention over grids of features (docs/fidelity.md §3).

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

from hdvila_jax.kernels.fused_attention import fused_attention
from hdvila_jax.kernels.temporal_attention import temporal_attention
from hdvila_jax.models.layers import (Dtype, at_least_float32, attention, exact_gelu, layer_norm,
                                      linear_resize_matrix, remat_block, trunc_init)
from hdvila_jax.sharding import BATCH_AXES


class HeadsDense(nn.Module):
    """``nn.Dense``'s parameters (``kernel [in, out]``, ``bias [out]``, same initialisers) applied as
    ``einsum(equation, x, kernel.reshape(kernel_shape)) + bias.reshape(bias_shape)``: splitting or
    merging attention heads inside the matmul, so no transposed copy of the activations is made."""

    features: int
    equation: str
    kernel_shape: tuple[int, ...]
    bias_shape: tuple[int, ...]
    contracted: int  # input features (the kernel's first dimension)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", trunc_init, (self.contracted, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return jnp.einsum(self.equation, x, kernel.reshape(self.kernel_shape)) + bias.reshape(self.bias_shape)


class SplitDense(nn.Module):
    """``nn.Dense``'s parameters (``kernel [in, out]``, ``bias [out]``, ``HeadsDense``'s initialisers)
    applied as ``parts`` matmuls, one per equal slice of the outputs, each split into ``part_shape``:
    ``x [..., in]`` -> ``parts`` arrays ``[..., *part_shape]`` (a fused q/k/v projection computed as
    three, each written in ``x``'s own layout with its heads split out)."""

    features: int
    parts: int
    part_shape: tuple[int, ...]
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        kernel = self.param("kernel", trunc_init, (x.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        size, out = self.features // self.parts, "hkjl"[:len(self.part_shape)]
        columns = [slice(i * size, (i + 1) * size) for i in range(self.parts)]
        return tuple(jnp.einsum(f"...z,z{out}->...{out}", x, kernel[:, c].reshape(-1, *self.part_shape))
                     + bias[c].reshape(self.part_shape) for c in columns)


class GridAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection over the ``axis`` of ``x [..., D]``
    (the other leading axes are batch); the output keeps ``x``'s layout.

    By default q, k and v come out of one einsum in a heads-major layout for ``layers.attention``.
    ``token_major`` computes them in ``x``'s own layout with the heads split out (``[..., heads,
    head_dim]``, one matmul each) and runs the attention's einsums over ``axis``: fewer bytes on TPU
    without remat, but more memory with the ``elementwise`` policy (docs/performance.md), so it comes
    with ``ModelConfig.fused_attention`` only. ``fused`` (token-major, ``axis=1``) attends in one kernel
    per direction lowered for ``lowering_platform``: over the sequence of ``x [B, L, D]``
    (``kernels.fused_attention``, the spatial attention) or over the frames ``T`` of a grid ``x [B, T,
    cells..., D]`` for each cell (``kernels.temporal_attention``), with q, k, v ``[..., D]`` (heads side
    by side), per shard of the mesh the step is traced for (``jax.sharding.use_abstract_mesh``, as the
    train step does); traced without one (evaluation, search), it is the token-major XLA formulation.
    All give the same numbers from the same parameters."""

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    token_major: bool = False
    fused: bool = False
    lowering_platform: str = ""

    @nn.compact
    def __call__(self, x: jax.Array, axis: int) -> jax.Array:
        width, heads = x.shape[-1], self.num_heads
        head_dim = width // heads
        dims = "abcdefg"[:x.ndim - 1]  # x's leading axes; "z" features, "s" q/k/v, "h" heads, "k" head_dim
        dense = lambda name, **kw: HeadsDense(contracted=width, dtype=self.dtype, param_dtype=self.param_dtype,
                                              name=name, **kw)
        if not (self.token_major or self.fused):
            tokens = dims[axis]
            batch = dims.replace(tokens, "")
            ones = (1,) * len(batch)
            # The reference lays the 3*D outputs out as [3, heads, head_dim].
            q, k, v = dense("qkv", features=3 * width, equation=f"{dims}z,zshk->s{batch}h{tokens}k",
                            kernel_shape=(width, 3, heads, head_dim),
                            bias_shape=(3, *ones, heads, 1, head_dim))(x)
            out = attention(q, k, v, None, None, True)  # [batch..., heads, tokens, head_dim]
            return dense("proj", features=width, equation=f"{batch}h{tokens}k,hkz->{dims}z",
                         kernel_shape=(heads, head_dim, width), bias_shape=(width,))(out)
        if not (self.fused and not jax.sharding.get_abstract_mesh().empty):  # no mesh declared: XLA's formulation
            q, k, v = SplitDense(3 * width, 3, (heads, head_dim), self.dtype, self.param_dtype, name="qkv")(x)
            return dense("proj", features=width, equation=f"{dims}hk,hkz->{dims}z",
                         kernel_shape=(heads, head_dim, width), bias_shape=(width,))(attention_over_axis(q, k, v, axis))
        # Traced for a mesh (the train step): the kernels, on q, k, v with the heads side by side ([..., D], so
        # that XLA neither pads a 64-wide head dimension to 128 lanes nor copies between layouts).
        if x.ndim < 3 or axis != 1:
            raise ValueError(f"GridAttention(fused=True) attends over axis 1 of x [B, L, ..., D], got {x.shape}, {axis=}")
        q, k, v = SplitDense(3 * width, 3, (width,), self.dtype, self.param_dtype, name="qkv")(x)
        # [B, L, D]: a sequence per row (the spatial attention); [B, T, cells..., D]: over T for each cell.
        kernel = fused_attention if x.ndim == 3 else temporal_attention
        rows = lambda a: a.reshape(*x.shape[:2], -1, width) if x.ndim > 3 else a  # noqa: E731
        out = kernel(rows(q), rows(k), rows(v), heads, platform=self.lowering_platform, batch_axes=BATCH_AXES)
        return dense("proj", features=width, equation=f"{dims}y,yz->{dims}z", kernel_shape=(width, width),
                     bias_shape=(width,))(out.reshape(x.shape))


def attention_over_axis(q: jax.Array, k: jax.Array, v: jax.Array, axis: int) -> jax.Array:
    """``models.layers.attention`` of ``q, k, v [..., heads, head_dim]`` over their leading ``axis``, the
    other leading axes batch; the output has ``q``'s layout."""
    dims = "abcdefg"[:q.ndim - 2]
    tokens = dims[axis]
    keys = dims.replace(tokens, "y")
    scores = f"{dims.replace(tokens, '')}h{tokens}y"
    return attention(q, k, v, None, None, True, (f"{dims}hk,{keys}hk->{scores}", f"{scores},{keys}hk->{dims}hk"))


class TimeSformerBlock(nn.Module):
    """Temporal attention per cell, spatial attention per frame, then the MLP."""

    num_heads: int
    mlp_ratio: float
    drop_path: float
    zero_temporal_fc: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    fused_attention: bool = False  # ModelConfig.fused_attention: GridAttention's ``token_major`` and spatial ``fused``
    lowering_platform: str = ""

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        n, t, h, w, d = x.shape
        dt, pd = self.dtype, self.param_dtype
        norm = lambda name: layer_norm(1e-6, dt, pd, name)
        # Drop-path masks one sample of the reference's reshaped batch: a (n, h, w)
        # cell for temporal attention, an (n, t) frame for spatial, an n for the MLP.
        drop = lambda shared_dims: nn.Dropout(self.drop_path, broadcast_dims=shared_dims)

        # Temporal attention over t for each (n, h, w) cell, in x's own layout.
        lean = self.fused_attention  # token-major q, k, v, both attentions fused (GridAttention)
        temporal = GridAttention(self.num_heads, dt, pd, lean, lean, self.lowering_platform, name="temporal_attn")
        res = temporal(norm("temporal_norm1")(x), axis=1)
        res = drop((1, 4))(res, deterministic=deterministic)
        fc_init = nn.initializers.zeros if self.zero_temporal_fc else trunc_init
        res = nn.Dense(d, kernel_init=fc_init, dtype=dt, param_dtype=pd, name="temporal_fc")(res)
        x = x + res

        xs = x.reshape(n * t, h * w, d)
        spatial = GridAttention(self.num_heads, dt, pd, lean, lean, self.lowering_platform, name="attn")
        res = spatial(norm("norm1")(xs), axis=1).reshape(n, t, h, w, d)
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
    fused_attention: bool = False  # ModelConfig.fused_attention
    lowering_platform: str = ""

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
            x = block_cls(self.num_heads, self.mlp_ratio, float(rates[i]), i > 0, self.dtype, self.param_dtype,
                          self.fused_attention, self.lowering_platform, name=f"block_{i}")(x, deterministic)
        return x
