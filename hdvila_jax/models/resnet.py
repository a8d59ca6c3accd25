"""ResNet backbone, mmdetection "pytorch" style, NHWC, BatchNorm in inference mode.

Parameter names mirror the torchvision/mmdetection state_dict (``conv1``, ``bn1``,
``layer{s}_{b}/conv{i}``, ``layer{s}_{b}/downsample_conv``) so conversion is a rename.
BatchNorm always uses its running statistics (collection ``batch_stats``); its scale
and bias stay trainable, as in the reference.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from hdvila_jax.models.layers import Dtype

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features: int, kernel: int, stride: int, dtype: Dtype, param_dtype: Dtype, name: str) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype, name=name)


def _bn(dtype: Dtype, param_dtype: Dtype, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, name=name)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    planes: int
    stride: int
    downsample: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, p = self.dtype, self.param_dtype
        out = nn.relu(_bn(d, p, "bn1")(_conv(self.planes, 3, self.stride, d, p, "conv1")(x)))
        out = _bn(d, p, "bn2")(_conv(self.planes, 3, 1, d, p, "conv2")(out))
        if self.downsample:
            x = _bn(d, p, "downsample_bn")(_conv(self.planes, 1, self.stride, d, p, "downsample_conv")(x))
        return nn.relu(out + x)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, "pytorch" style) -> 1x1, expansion 4."""

    planes: int
    stride: int
    downsample: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, p = self.dtype, self.param_dtype
        out = nn.relu(_bn(d, p, "bn1")(_conv(self.planes, 1, 1, d, p, "conv1")(x)))
        out = nn.relu(_bn(d, p, "bn2")(_conv(self.planes, 3, self.stride, d, p, "conv2")(out)))
        out = _bn(d, p, "bn3")(_conv(self.planes * 4, 1, 1, d, p, "conv3")(out))
        if self.downsample:
            x = _bn(d, p, "downsample_bn")(_conv(self.planes * 4, 1, self.stride, d, p, "downsample_conv")(x))
        return nn.relu(out + x)


class ResNet(nn.Module):
    """ResNet returning the outputs of stages 1..``num_stages`` (C2.. at strides 4, 8, 16, 32).

    ``num_stages=3`` stops after stage 3 (C4), as the LR branch does; the stage-4
    parameters are then never created. ``remat`` recomputes each residual block in the
    backward pass instead of keeping its activations.
    """

    depth: int = 50
    num_stages: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> Sequence[jax.Array]:
        d, p = self.dtype, self.param_dtype
        block_cls = BasicBlock if self.depth in (18, 34) else Bottleneck
        expansion = block_cls.expansion
        if self.remat:
            block_cls = nn.remat(block_cls)
        x = nn.relu(_bn(d, p, "bn1")(_conv(64, 7, 2, d, p, "conv1")(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_channels, outputs = 64, []
        for stage, num_blocks in enumerate(STAGE_BLOCKS[self.depth][: self.num_stages]):
            planes = 64 * 2**stage
            for b in range(num_blocks):
                stride = 2 if (b == 0 and stage > 0) else 1
                downsample = b == 0 and (stride != 1 or in_channels != planes * expansion)
                x = block_cls(planes, stride, downsample, d, p, name=f"layer{stage + 1}_{b}")(x)
                in_channels = planes * expansion
            outputs.append(x)
        return outputs
