"""Hybrid spatiotemporal video encoder (docs/fidelity.md §2).

Per clip: the HR middle frame goes through ``cnn_hr`` (C2..C5) and ``grid_hr``
(1x1 conv, 2x2 max-pool, GELU) to the stride-64 grid; HR C4 taken every 4th row and
column plus each LR neighbour's C4 (``cnn_lr``, stopped after stage 3) go through the
shared ``grid_lr`` (1x1 conv, GELU); the 7 grids in time order run through the
TimeSformer; its middle step and the HR grid are fused by ``fuse`` (1x1 conv, GELU).
Intermediates are sown into the ``intermediates`` collection under this module.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from hdvila_jax.models.config import ModelConfig
from hdvila_jax.models.conv import Conv
from hdvila_jax.models.layers import exact_gelu, max_pool
from hdvila_jax.models.platform import resolve_platform
from hdvila_jax.models.resnet import ResNet
from hdvila_jax.models.timesformer import TimeSformer

class HybridVideoEncoder(nn.Module):
    """``img_middle [B, C, H, W, 3]`` + ``img_other [B, C, F-1, H/4, W/4, 3]`` -> grid ``[B, C, H/64, W/64, D]``.

    Its stages are methods, so that each can be run (and timed) on its own: :meth:`backbones`,
    :meth:`grids`, ``timesformer`` and :meth:`fuse_middle`. Convolutions and max-pools are lowered
    for ``config.lowering_platform`` ("" = the default backend), with ``config.onednn_conv``.
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        self.platform = resolve_platform(cfg.lowering_platform)
        lower = dict(lowering_platform=self.platform, onednn=cfg.onednn_conv)
        conv1x1 = lambda: Conv(cfg.hidden_size, dtype=dtype, param_dtype=pdtype, **lower)
        self.cnn_hr = ResNet(cfg.resnet_depth, 4, dtype, pdtype, cfg.active_remat, **lower)
        self.cnn_lr = ResNet(cfg.resnet_depth, 3, dtype, pdtype, cfg.active_remat, **lower)
        self.grid_hr = conv1x1()
        self.grid_lr = conv1x1()
        self.fuse = conv1x1()
        self.timesformer = TimeSformer(cfg.timesformer_depth, cfg.timesformer_heads, cfg.timesformer_mlp_ratio,
                                       cfg.timesformer_drop_path_rate, cfg.timesformer_grid, cfg.timesformer_frames,
                                       dtype, pdtype, cfg.active_remat,
                                       fused_attention=cfg.fused_attention, lowering_platform=self.platform)

    def backbones(self, img_middle: jax.Array, img_other: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Pixels -> HR C4 ``[N, H/16, W/16, c4]``, HR C5 ``[N, H/32, W/32, c5]`` and LR C4
        ``[N*(F-1), H/64, W/64, c4]``, with N = B*C clips."""
        _, _, hr_c4, hr_c5 = self.cnn_hr(img_middle.reshape(-1, *img_middle.shape[2:]))
        self.sow("intermediates", "hr_stage3", hr_c4)
        self.sow("intermediates", "hr_stage4", hr_c5)
        lr_c4 = self.cnn_lr(img_other.reshape(-1, *img_other.shape[3:]))[-1]
        self.sow("intermediates", "lr_stage3", lr_c4)
        return hr_c4, hr_c5, lr_c4

    def grids(self, hr_c4: jax.Array, hr_c5: jax.Array, lr_c4: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Backbone features -> the HR grid ``[N, h, w, D]`` and the TimeSformer's input ``[N, F, h, w, D]``
        (LR grids in time order with the HR C4 grid in the middle)."""
        hr_grid = exact_gelu(max_pool(self.grid_hr(hr_c5), 2, 2, platform=self.platform))
        self.sow("intermediates", "hr_grid", hr_grid)
        hr_c4_down = hr_c4[:, ::4, ::4]
        self.sow("intermediates", "hr_stage3_down", hr_c4_down)
        hr_low_grid = exact_gelu(self.grid_lr(hr_c4_down))
        self.sow("intermediates", "hr_stage3_down_grid", hr_low_grid)
        lr_grid = exact_gelu(self.grid_lr(lr_c4))
        self.sow("intermediates", "lr_grid", lr_grid)
        if lr_grid.shape[1:3] != hr_grid.shape[1:3]:
            raise ValueError(f"LR frames give a {lr_grid.shape[1:3]} grid but the HR frame gives "
                             f"{hr_grid.shape[1:3]}: img_other must be img_middle's size / 4")
        n_other = lr_grid.shape[0] // hr_grid.shape[0]
        lr_grid = lr_grid.reshape(hr_grid.shape[0], n_other, *lr_grid.shape[1:])
        half = (n_other + 1) // 2
        frames = jnp.concatenate([lr_grid[:, :half], hr_low_grid[:, None], lr_grid[:, half:]], axis=1)
        self.sow("intermediates", "timesformer_in", frames)
        return hr_grid, frames

    def fuse_middle(self, hr_grid: jax.Array, frames: jax.Array) -> jax.Array:
        """The HR grid and the TimeSformer's middle step ``[N, F, h, w, D]`` -> fused grid ``[N, h, w, D]``."""
        middle = frames[:, frames.shape[1] // 2]
        fused = exact_gelu(self.fuse(jnp.concatenate([hr_grid, middle], axis=-1)))
        self.sow("intermediates", "middle_feature", fused)
        return fused

    def __call__(self, img_middle: jax.Array, img_other: jax.Array, deterministic: bool = True) -> jax.Array:
        batch, clips = img_middle.shape[:2]
        hr_grid, frames = self.grids(*self.backbones(img_middle, img_other))
        frames = self.timesformer(frames, deterministic)
        self.sow("intermediates", "timesformer_out", frames)
        fused = self.fuse_middle(hr_grid, frames)
        return fused.reshape(batch, clips, *fused.shape[1:])
