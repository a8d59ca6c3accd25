"""Small building blocks shared by the video and text towers."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from hdvila_jax.models.platform import resolve_platform

Dtype = jnp.dtype

bert_init = nn.initializers.normal(stddev=0.02)
trunc_init = nn.initializers.truncated_normal(stddev=0.02)
exact_gelu = functools.partial(nn.gelu, approximate=False)


def at_least_float32(dtype) -> jnp.dtype:
    """float32 for bfloat16 / float16 / float32; float64 stays float64 (needs ``jax_enable_x64``)."""
    return jnp.promote_types(dtype, jnp.float32)


# What a rematerialised block keeps for the backward pass under each ``ModelConfig.remat_policy`` (the
# others keep only the block's inputs): "block_dots" every matmul and convolution output; "elementwise"
# the matmuls without batch dimensions (the projections, not attention's scores or weighted values).
_SAVED = {"block_dots": jax.checkpoint_policies.dots_saveable,
          "elementwise": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_block(cls: type[nn.Module], remat: str, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
    """``cls`` recomputed in the backward pass under the remat policy ``remat`` (``ModelConfig.remat_policy``;
    "" = no remat), keeping what the policy saves (``_SAVED``; by default only the block's inputs)."""
    if not remat:
        return cls
    return nn.remat(cls, policy=_SAVED.get(remat), static_argnums=static_argnums)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def relu(x: jax.Array, name: str = "") -> jax.Array:
    """``max(x, 0)`` with ``jax.nn.relu``'s gradient (0 at 0), whose backward pass reads its output
    (``y > 0`` exactly where ``x > 0``) instead of keeping a mask of ``x``: where the output is saved
    anyway (the next convolution's input), the mask's bytes are not kept. Same values and gradients.
    A ``name`` names the output for a remat policy (``jax.ad_checkpoint.checkpoint_name``)."""
    return jnp.maximum(x, 0)


def _relu_forward(x: jax.Array, name: str) -> tuple[jax.Array, jax.Array]:
    y = jnp.maximum(x, 0)
    if name:
        y = checkpoint_name(y, name)
    # Behind a barrier (which copies nothing), so that XLA cannot rewrite the backward pass's ``y > 0``
    # into ``x > 0`` and keep ``x`` as well.
    return y, jax.lax.optimization_barrier(y)


def _relu_backward(name: str, y: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.where(y > 0, g, jnp.zeros_like(g)),)


relu.defvjp(_relu_forward, _relu_backward)


def layer_norm(eps: float, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.LayerNorm:
    """LayerNorm with PyTorch's two-pass variance (exact parity with ``torch.nn.LayerNorm``)."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                        use_fast_variance=False, name=name)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
              dropout: nn.Module | None, deterministic: bool,
              equations: tuple[str, str] = ("...qd,...kd->...qk", "...qk,...kd->...qd")) -> jax.Array:
    """Scaled dot-product attention over ``[..., heads, len, head_dim]``; softmax in float32 (or float64).
    ``equations`` (scores, then output; the scores' last axis is the keys') lay q, k, v out otherwise."""
    scale = q.shape[-1] ** -0.5
    logits = jnp.einsum(equations[0], q, k).astype(at_least_float32(q.dtype)) * scale
    if bias is not None:
        logits = logits + bias
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if dropout is not None:
        probs = dropout(probs, deterministic=deterministic)
    return jnp.einsum(equations[1], probs, v)


def max_pool(x: jax.Array, window: int, stride: int, pad: int = 0, *, platform: str) -> jax.Array:
    """Max over ``window x window`` patches of ``x [N, H, W, C]`` (padded by ``pad`` with -inf),
    as PyTorch's ``max_pool2d``: the gradient goes to the first maximum of each patch in row-major
    order. Lowered for ``platform`` ("cpu", "gpu", "tpu"; "" = the default backend): on CPU a running
    ``where`` over the strided views, which XLA:CPU differentiates far faster than ``reduce_window``
    (whose gradient, select-and-scatter, is slow there); elsewhere ``reduce_window``, which pads
    inside the window instead of writing a padded copy."""
    if resolve_platform(platform) != "cpu":
        padding = ((0, 0), (pad, pad), (pad, pad), (0, 0))
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                     padding)
    _, h, w, _ = x.shape
    ho, wo = (h + 2 * pad - window) // stride + 1, (w + 2 * pad - window) // stride + 1
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-jnp.inf)
    out, *rest = window_views(x, window, stride, ho, wo)
    for view in rest:
        out = jnp.where(view > out, view, out)
    return out


def window_views(x: jax.Array, window: int, stride: int, out_h: int, out_w: int) -> list[jax.Array]:
    """The ``window * window`` strided views ``[N, out_h, out_w, C]`` of a padded ``x [N, H, W, C]``
    in row-major window order: view ``(i, j)`` holds ``x[:, i + stride * r, j + stride * c]``."""
    return [x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]
            for i in range(window) for j in range(window)]


def split_heads(x: jax.Array, num_heads: int) -> jax.Array:
    """``[..., L, H*d] -> [..., H, L, d]``."""
    *lead, length, width = x.shape
    x = x.reshape(*lead, length, num_heads, width // num_heads)
    return jnp.swapaxes(x, -2, -3)


def merge_heads(x: jax.Array) -> jax.Array:
    """``[..., H, L, d] -> [..., L, H*d]``."""
    x = jnp.swapaxes(x, -2, -3)
    return x.reshape(*x.shape[:-2], -1)


def linear_resize_matrix(size_in: int, size_out: int, dtype=np.float32) -> np.ndarray:
    """``[size_out, size_in]`` weights of PyTorch's linear interpolation with
    ``align_corners=False`` (half-pixel centres, source index clamped at 0, no antialias)."""
    weights = np.zeros((size_out, size_in), np.float64)
    scale = size_in / size_out
    for i in range(size_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(np.floor(src)), size_in - 1)
        hi = min(lo + 1, size_in - 1)
        frac = src - lo
        weights[i, lo] += 1.0 - frac
        weights[i, hi] += frac
    return weights.astype(dtype)
