"""ResNet backbone, mmdetection "pytorch" style, NHWC, BatchNorm in inference mode.

Parameter names mirror the torchvision/mmdetection state_dict (``conv1``, ``bn1``,
``layer{s}_{b}/conv{i}``, ``layer{s}_{b}/downsample_conv``) so conversion is a rename.
BatchNorm always uses its running statistics (collection ``batch_stats``); its scale
and bias stay trainable, as in the reference. Each BatchNorm is applied as a per-channel
multiplier ``s = scale / sqrt(var + eps)`` and shift ``bias - mean * s``, folded into the
convolution before it (``conv(x, W * s) + shift``) where that is cheaper (:func:`conv_bn`):
the same function of the same variables, so the same gradients.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from hdvila_jax.models.conv import Conv, output_size
from hdvila_jax.models.layers import Dtype, at_least_float32, max_pool, relu, remat_block

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
BN_EPS = 1e-5
# The "elementwise" remat policy's names: what a residual block keeps for the backward pass (its hidden
# maps, the inputs of its second and last convolutions), and the stages whose block outputs it does not
# keep but recomputes from them (the blocks' last 1x1 convolutions and the first block's downsample).
HIDDEN = "resnet_hidden"
RECOMPUTED_OUTPUT_STAGES = (0,)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def normalize_pixels(images: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """RGB 0..255 (any dtype) -> normalised ``dtype``, computed in float32 (float64 for a float64 ``dtype``).

    The mean and std are float32 constants in every dtype, as in the original (``torch.tensor(...).type_as``).
    """
    compute = at_least_float32(dtype)
    x = images.astype(compute)
    mean, std = (jnp.asarray(v, jnp.float32).astype(compute) for v in (PIXEL_MEAN, PIXEL_STD))
    x = (x - mean) / std
    return x.astype(dtype)


class FrozenBatchNorm(nn.Module):
    """Inference-mode BatchNorm's variables (``nn.BatchNorm``'s: params ``scale``, ``bias``;
    ``batch_stats`` ``mean``, ``var``) as the per-channel ``(multiplier, shift)`` it applies."""

    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array]:
        shape = (self.features,)
        scale = self.param("scale", nn.initializers.ones, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, shape, self.param_dtype)
        mean = self.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32).value
        var = self.variable("batch_stats", "var", jnp.ones, shape, jnp.float32).value
        multiplier = scale * jax.lax.rsqrt(var + BN_EPS).astype(scale.dtype)
        return multiplier, bias - mean.astype(scale.dtype) * multiplier


def conv_bn(x: jax.Array, features: int, kernel: int, stride: int, dtype: Dtype, param_dtype: Dtype,
            conv_name: str, bn_name: str, lowering_platform: str, onednn: bool) -> jax.Array:
    """Convolution ``conv_name`` followed by the frozen BatchNorm ``bn_name`` (call inside a compact
    method: both become its children); the convolution is lowered for ``lowering_platform``, in
    oneDNN on CPU if ``onednn`` (:class:`~hdvila_jax.models.conv.Conv`). The BatchNorm's scale is
    folded into the kernel when the output has at least as many elements as the kernel (then
    scaling the kernel is the cheaper pass, and the unnormalised output need not be kept for the
    backward pass); otherwise, as on the small late-stage maps of small crops, it scales the output."""
    multiplier, shift = FrozenBatchNorm(features, param_dtype, name=bn_name)()
    conv = Conv(features, kernel, stride, conv_init, dtype, param_dtype, lowering_platform, onednn, name=conv_name)
    n, h, w, cin = x.shape
    if n * output_size(h, stride) * output_size(w, stride) >= kernel * kernel * cin:
        y = conv(x, multiplier)
        return y + shift.astype(y.dtype)
    y = conv(x)
    return y * multiplier.astype(y.dtype) + shift.astype(y.dtype)


def _hidden_relu(x: jax.Array) -> jax.Array:
    """A residual block's inner ReLU under the "elementwise" policy: keeps its output, named ``HIDDEN``."""
    return relu(x, HIDDEN)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    planes: int
    stride: int
    downsample: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    lowering_platform: str = ""  # see Conv
    onednn: bool = False
    relu_keeps_output: bool = False  # the "elementwise" remat policy's ReLU (``layers.relu``)
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, p, lower = self.dtype, self.param_dtype, (self.lowering_platform, self.onednn)
        act = relu if self.relu_keeps_output else nn.relu
        hidden = _hidden_relu if self.relu_keeps_output else nn.relu
        out = hidden(conv_bn(x, self.planes, 3, self.stride, d, p, "conv1", "bn1", *lower))
        out = conv_bn(out, self.planes, 3, 1, d, p, "conv2", "bn2", *lower)
        if self.downsample:
            x = conv_bn(x, self.planes, 1, self.stride, d, p, "downsample_conv", "downsample_bn", *lower)
        return act(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, "pytorch" style) -> 1x1, expansion 4."""

    planes: int
    stride: int
    downsample: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    lowering_platform: str = ""  # see Conv
    onednn: bool = False
    relu_keeps_output: bool = False  # the "elementwise" remat policy's ReLU (``layers.relu``)
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, p, lower = self.dtype, self.param_dtype, (self.lowering_platform, self.onednn)
        act = relu if self.relu_keeps_output else nn.relu
        hidden = _hidden_relu if self.relu_keeps_output else nn.relu
        out = hidden(conv_bn(x, self.planes, 1, 1, d, p, "conv1", "bn1", *lower))
        out = hidden(conv_bn(out, self.planes, 3, self.stride, d, p, "conv2", "bn2", *lower))
        out = conv_bn(out, self.planes * 4, 1, 1, d, p, "conv3", "bn3", *lower)
        if self.downsample:
            x = conv_bn(x, self.planes * 4, 1, self.stride, d, p, "downsample_conv", "downsample_bn", *lower)
        return act(out + x)


class ResNet(nn.Module):
    """ResNet from RGB pixels (0..255, NHWC, normalised inside: :func:`normalize_pixels`) to the outputs
    of stages 1..``num_stages`` (C2.. at strides 4, 8, 16, 32).

    ``num_stages=3`` stops after stage 3 (C4), as the LR branch does; the stage-4
    parameters are then never created. ``remat`` is a ``ModelConfig.remat_policy`` ("" = off):
    "stage" recomputes each stage in the backward pass from its input, "block" / "block_dots"
    each residual block; "elementwise" recomputes the stem from the pixels and, in the stages of
    ``RECOMPUTED_OUTPUT_STAGES`` (the largest maps), each block's output from its kept hidden maps (its
    last convolution, 1x1 in a bottleneck, and the first block's downsample); its ReLUs keep their
    outputs, not masks of their inputs (every other saved activation is a convolution's input).
    Convolutions and the stem's max-pool are lowered for ``lowering_platform`` ("" = the default
    backend), CPU convolutions in oneDNN if ``onednn`` (``ModelConfig``'s fields).
    """

    depth: int = 50
    num_stages: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = ""
    lowering_platform: str = ""
    onednn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> Sequence[jax.Array]:
        d, p, lower = self.dtype, self.param_dtype, (self.lowering_platform, self.onednn)
        block_cls = BasicBlock if self.depth in (18, 34) else Bottleneck
        expansion = block_cls.expansion
        if self.remat in ("block", "block_dots"):  # "elementwise": the ReLUs keep only their outputs anyway
            block_cls = remat_block(block_cls, self.remat)
        lean = self.remat == "elementwise"

        act = relu if lean else nn.relu

        def stem(module: nn.Module, pixels: jax.Array) -> jax.Array:
            # The ReLU after the max-pool: max-pool(ReLU(z)) = ReLU(max-pool(z)), with the same gradient
            # (where a patch's maximum is positive both send it to its first maximum, else both send 0),
            # and the backward pass needs no full-resolution ReLU mask (docs/model.md; bytes: docs/performance.md).
            x = conv_bn(normalize_pixels(pixels, d), 64, 7, 2, d, p, "conv1", "bn1", *lower)
            return act(max_pool(x, 3, 2, 1, platform=self.lowering_platform))

        # "elementwise": the stem (3 input channels: recomputing both stems adds 0.5% to the paper stage-1
        # step's FLOPs) is recomputed from the pixels in the backward pass, so neither its normalised input
        # nor its full-resolution output is kept through the step, only the max-pool's output (stage 1's input).
        x = (nn.remat(stem) if lean else stem)(self, x)
        in_channels, outputs = 64, []
        for stage, num_blocks in enumerate(STAGE_BLOCKS[self.depth][: self.num_stages]):
            planes = 64 * 2**stage

            # One stage as a function of (module, x), which nn.remat can wrap without renaming its blocks.
            def run_stage(module: nn.Module, x: jax.Array, stage=stage, planes=planes, in_channels=in_channels,
                          num_blocks=num_blocks) -> jax.Array:
                for b in range(num_blocks):
                    stride = 2 if (b == 0 and stage > 0) else 1
                    downsample = b == 0 and (stride != 1 or in_channels != planes * expansion)
                    x = block_cls(planes, stride, downsample, d, p, *lower, lean, name=f"layer{stage + 1}_{b}")(x)
                return x

            if self.remat == "stage":
                run_stage = nn.remat(run_stage)
            elif lean and stage in RECOMPUTED_OUTPUT_STAGES:
                run_stage = nn.remat(run_stage, policy=jax.checkpoint_policies.save_only_these_names(HIDDEN))
            x = run_stage(self, x)
            in_channels = planes * expansion
            outputs.append(x)
        return outputs
