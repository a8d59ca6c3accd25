"""NHWC convolutions ("same" padding ``k // 2``, HWIO kernels), lowered for speed on XLA:CPU.

XLA:CPU runs a convolution fast only in its canonical NHWC/HWIO form (YNNPACK in jaxlib 0.10);
on maps smaller than the kernel window (the 2x3 and 4x6 maps of small crops) its algebraic
simplifier swaps the operands and the result falls back to a naive loop, 30-70x slower, in the
forward pass and in the input gradient. So on CPU: a 1x1 convolution is a matmul, and a kxk
convolution with at most ``IM2COL_MAX_CELLS`` output cells is a matmul over its k*k shifted
copies of the input (im2col). Opted in (``onednn=True``, from ``ModelConfig.onednn_conv``, and
the ``[onednn]`` extra), larger kxk convolutions run in oneDNN (``hdvila_jax.kernels``), which uses
every core where YNNPACK uses one, on a single CPU device. Other platforms get
``lax.conv_general_dilated`` unchanged.

Both choices are arguments (``ModelConfig.lowering_platform`` and ``onednn_conv``, passed down the
module tree): the platform is the one the step is compiled for (``hdvila_jax.models.platform``), not
necessarily the default backend, so a TPU step compiled ahead of time on a CPU host gets TPU convolutions.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from hdvila_jax.models.layers import Dtype, window_views
from hdvila_jax.models.platform import resolve_platform

IM2COL_MAX_CELLS = 24  # largest output map (rows x columns) a kxk convolution is run as im2col on CPU


def output_size(size: int, stride: int) -> int:
    """Output length of a "same"-padded convolution with ``stride`` over ``size``."""
    return -(-size // stride)


def im2col_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The convolution as one matmul over the k*k shifted, strided views of the padded input."""
    k, pad = kernel.shape[0], kernel.shape[0] // 2
    ho, wo = output_size(x.shape[1], stride), output_size(x.shape[2], stride)
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    views = window_views(x, k, stride, ho, wo)
    return matmul_nhwc(jnp.concatenate(views, axis=-1), kernel.reshape(-1, kernel.shape[-1]))


def matmul_nhwc(x: jax.Array, w: jax.Array) -> jax.Array:
    """``[N, H, W, C] @ [C, D]`` as one 2-D matmul: its weight gradient is then a plain
    ``[C, M] x [M, D]`` matmul, which XLA:CPU runs 2-3x faster than a contraction over (N, H, W)."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


def uses_onednn(x: jax.Array, kernel: jax.Array, opted_in: bool) -> bool:
    """Whether a CPU kxk convolution of ``x`` with ``kernel`` runs in oneDNN: ``opted_in``, an odd square
    kernel, one dtype oneDNN takes, one device in all (a custom call is not partitioned: XLA would
    gather a sharded batch onto every device), and the kernels built (``onednn_conv.available``; a
    missing compiler or oneDNN is a warning, and XLA's convolution is kept). The kernels module is
    imported only when opted in."""
    kh, kw = kernel.shape[:2]
    if not (opted_in and kh == kw and kh % 2 == 1 and x.dtype == kernel.dtype and jax.device_count() == 1):
        return False
    from hdvila_jax.kernels import onednn_conv
    return x.dtype in onednn_conv.supported_dtypes() and onednn_conv.available()


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, *, platform: str, onednn: bool = False) -> jax.Array:
    """``x [N, H, W, Cin]`` * ``kernel [k, k, Cin, Cout]``, padding ``k // 2``, stride ``s`` ->
    ``[N, ceil(H/s), ceil(W/s), Cout]``, lowered for ``platform`` ("cpu", "gpu", "tpu"; "" = the default
    backend); ``onednn``: large CPU kxk convolutions in oneDNN where it applies (:func:`uses_onednn`)."""
    k = kernel.shape[0]
    if resolve_platform(platform) == "cpu":
        if k == 1:
            return matmul_nhwc(x[:, ::stride, ::stride], kernel[0, 0])
        if output_size(x.shape[1], stride) * output_size(x.shape[2], stride) <= IM2COL_MAX_CELLS:
            return im2col_conv(x, kernel, stride)
        if uses_onednn(x, kernel, onednn):
            from hdvila_jax.kernels import onednn_conv
            return onednn_conv.conv2d(x, kernel, stride)
    pad = k // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv(nn.Module):
    """Bias-free square convolution with ``nn.Conv``'s parameter (``kernel [k, k, Cin, features]``),
    lowered for ``lowering_platform`` ("" = the default backend) with oneDNN's CPU convolutions if
    ``onednn`` (:func:`conv2d`)."""

    features: int
    kernel_size: int = 1
    stride: int = 1
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    lowering_platform: str = ""
    onednn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, output_scale: jax.Array | None = None) -> jax.Array:
        """``x [N, H, W, Cin]`` -> ``[N, H/s, W/s, features]``; with ``output_scale [features]`` the
        kernel is multiplied by it first (a folded per-channel scale)."""
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
        if output_scale is not None:
            kernel = kernel * output_scale
        x, kernel = promote_dtype(x, kernel, dtype=self.dtype)
        return conv2d(x, kernel, self.stride, platform=self.lowering_platform, onednn=self.onednn)
