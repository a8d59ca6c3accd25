"""Which stored candidate middles and which crop an example uses (docs/fidelity.md §1).

Training draws `n_clips` distinct candidates at random (sorted) and one random crop for the
whole example; evaluation spreads `n_clips` evenly over the candidates and crops at the
centre. Crop offsets are multiples of 4 so the LR crop (offsets / 4) covers exactly the
same region as the HR crop.
"""
from __future__ import annotations

import numpy as np

LR_FACTOR = 4


def random_middles(num_candidates: int, n_clips: int, rng: np.random.Generator) -> np.ndarray:
    """`n_clips` distinct candidate positions drawn without replacement, sorted."""
    if n_clips > num_candidates:
        raise ValueError(f"{n_clips} clips requested but the record has {num_candidates} candidate "
                         "middles; rebuild with a larger --min_clips/--num_candidates")
    return np.sort(rng.choice(num_candidates, size=n_clips, replace=False))


def even_middles(num_candidates: int, n_clips: int) -> np.ndarray:
    """`n_clips` evenly spaced candidate positions: `c[::len(c) // n][:n]` as in docs/fidelity.md §1."""
    if n_clips > num_candidates:
        raise ValueError(f"{n_clips} clips requested but the record has {num_candidates} candidate "
                         "middles; rebuild with a larger --min_clips/--num_candidates")
    return np.arange(num_candidates)[::num_candidates // n_clips][:n_clips]


def _check_fits(frame_hw: tuple[int, int], crop_hw: tuple[int, int]) -> None:
    if crop_hw[0] % LR_FACTOR or crop_hw[1] % LR_FACTOR:
        raise ValueError(f"crop_size {crop_hw} must be divisible by {LR_FACTOR}")
    if crop_hw[0] > frame_hw[0] or crop_hw[1] > frame_hw[1]:
        raise ValueError(f"crop_size {crop_hw} is larger than the stored frames {frame_hw}; rebuild "
                         "the records with a larger --frame_size")


def random_crop_offset(frame_hw: tuple[int, int], crop_hw: tuple[int, int],
                       rng: np.random.Generator) -> tuple[int, int]:
    """A uniformly random HR crop offset (y, x), each a multiple of 4."""
    _check_fits(frame_hw, crop_hw)
    y = rng.integers(0, (frame_hw[0] - crop_hw[0]) // LR_FACTOR + 1)
    x = rng.integers(0, (frame_hw[1] - crop_hw[1]) // LR_FACTOR + 1)
    return int(y) * LR_FACTOR, int(x) * LR_FACTOR


def centre_crop_offset(frame_hw: tuple[int, int], crop_hw: tuple[int, int]) -> tuple[int, int]:
    """The centred HR crop offset (y, x), rounded down to multiples of 4."""
    _check_fits(frame_hw, crop_hw)
    y = (frame_hw[0] - crop_hw[0]) // 2 // LR_FACTOR * LR_FACTOR
    x = (frame_hw[1] - crop_hw[1]) // 2 // LR_FACTOR * LR_FACTOR
    return y, x
