"""Decoding the cropped HR middle frames and LR neighbours of chosen candidates."""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from hdvila_jax.data.records import ClipRecord
from hdvila_jax.data.sampling import LR_FACTOR


def _decode_crop(jpeg: bytes, window: list[int]) -> np.ndarray:
    return tf.io.decode_and_crop_jpeg(jpeg, window, channels=3).numpy()


def decode_clip_frames(record: ClipRecord, candidates: np.ndarray, offset: tuple[int, int],
                       crop_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Crops of the chosen candidates: HR middles uint8 [n, H, W, 3] and their LR neighbours
    uint8 [n, num_frm - 1, H/4, W/4, 3] (time order), the LR crop at offset / 4."""
    y, x = offset
    height, width = crop_hw
    hr_window = [y, x, height, width]
    lr_window = [y // LR_FACTOR, x // LR_FACTOR, height // LR_FACTOR, width // LR_FACTOR]
    middles = np.stack([_decode_crop(record.hr_jpeg[c], hr_window) for c in candidates])
    others = np.stack([
        np.stack([_decode_crop(record.lr_jpeg[slot], lr_window) for slot in record.neighbour_slots[c]])
        for c in candidates
    ])
    return middles, others
