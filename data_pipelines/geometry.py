"""The original's frame resizes, in numpy/TF (docs/fidelity.md §11.5), for the downstream geometries.

- `nearest_resize`: PyTorch's `F.interpolate(mode="nearest")` (its default), used by pipeline A
  to bring every MSRVTT frame to 180x288: source index `floor(i * in / out)` in float32.
- `bicubic_resize`: OpenCV's `INTER_CUBIC` (Keys kernel a = -0.75, half-pixel centres,
  replicated border), used for pipeline A's x4 HR upsample. OpenCV rounds uint8 through 11-bit
  fixed-point weights; this float version differs from it by at most 1 grey level.
- `bilinear_resize`: OpenCV's `INTER_LINEAR` (`cv2.resize` default; half-pixel centres, no
  antialiasing), used for pipeline B's 720x1152 HR frames; TF's bilinear kernel computes the same,
  and so does PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` of pipeline C.
- `tgif_lr_frame`: pipeline C's letterbox: the longer side resized bilinear to `max_img_size`
  (sizes truncated to int as the original's `get_resize_size`), padded right/bottom with 127.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

CUBIC_A = -0.75
TGIF_PAD_VALUE = 127  # the original's pad value (its config says 1; docs/fidelity.md Q5)


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    if in_size == out_size:
        return np.arange(out_size)
    scale = np.float32(in_size / out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)


def nearest_resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """PyTorch-style nearest resize of an [H, W, C] image to `hw` (aspect ratio not kept)."""
    return image[_nearest_index(image.shape[0], hw[0])][:, _nearest_index(image.shape[1], hw[1])]


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic weights [n, 4] of the taps at -1, 0, 1, 2 for fractional positions t."""
    a = CUBIC_A
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    return np.stack([w0, w1, w2, 1 - w0 - w1 - w2], axis=1)


def _cubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] matrix of OpenCV INTER_CUBIC along one axis (taps clamped to the border)."""
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    base = np.floor(source).astype(np.int64)
    weights = _cubic_weights(source - base)
    taps = np.clip(base[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.reshape(-1)), weights.reshape(-1))
    return matrix


def bicubic_resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """OpenCV-style bicubic resize of a uint8 [H, W, C] image to `hw`."""
    rows = _cubic_matrix(image.shape[0], hw[0])
    cols = _cubic_matrix(image.shape[1], hw[1])
    tall = np.tensordot(rows, image.astype(np.float64), axes=(1, 0))  # [out_h, W, C]
    out = np.tensordot(tall, cols, axes=(1, 1)).transpose(0, 2, 1)  # [out_h, out_w, C]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def bilinear_resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """OpenCV-style bilinear resize (no antialiasing) of a uint8 [H, W, C] image to `hw`."""
    if image.shape[:2] == tuple(hw):
        return image
    out = tf.image.resize(image, hw, method="bilinear", antialias=False).numpy()
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def msrvtt_lr_frame(frame: np.ndarray, hr_size: tuple[int, int]) -> np.ndarray:
    """Pipeline A's LR frame: the nearest resize of a decoded frame to a quarter of `hr_size`."""
    return nearest_resize(frame, (hr_size[0] // 4, hr_size[1] // 4))


def upsampled_hr_frame(lr_frame: np.ndarray) -> np.ndarray:
    """Pipelines A and C's HR frame: the x4 bicubic upsample of its LR frame."""
    return bicubic_resize(lr_frame, (4 * lr_frame.shape[0], 4 * lr_frame.shape[1]))


def letterbox_size(hw: tuple[int, int], max_size: int) -> tuple[int, int]:
    """The original's `get_resize_size`: the longer side becomes `max_size`, the shorter one
    `int(max_size * short / long)`."""
    height, width = hw
    if height >= width:
        return max_size, int(max_size * (width * 1.0 / height))
    return int(max_size * (height * 1.0 / width)), max_size


def tgif_lr_frame(frame: np.ndarray, max_size: int) -> np.ndarray:
    """Pipeline C's LR frame: `frame` resized (bilinear) to `letterbox_size`, then padded
    right/bottom to `max_size` x `max_size` with TGIF_PAD_VALUE."""
    resized = bilinear_resize(frame, letterbox_size(frame.shape[:2], max_size))
    out = np.full((max_size, max_size, frame.shape[2]), TGIF_PAD_VALUE, np.uint8)
    out[:resized.shape[0], :resized.shape[1]] = resized
    return out
