"""Which frames of a clip the builder stores: candidate middles and their LR neighbours.

docs/fidelity.md §1: a clip is `num_frm` frames `rate` apart, centred on a middle frame taken from
`[half * rate, n - half * rate)` with `half = (num_frm - 1) // 2`; if the video is too short
for `min_clips` middles, `rate = floor((n - min_clips) / (num_frm - 1))`.

We store K evenly spread candidate middles (the reader draws `train_n_clips` of them at
random every epoch, or spreads `inference_n_clips` evenly). When the spacing between
candidates is at least `rate` it is rounded down to a multiple of `rate`, so neighbouring
candidates share LR frames (a candidate three strides from the next shares three of
its six neighbours).

Layout `strided` instead stores the original's inference clips exactly (docs/fidelity.md §11.4):
`c[::int(len(c) / K)][:K]` with `c = [half * rate, n - half * rate)` and K = `num_candidates`,
which then also plays the role of `min_clips` in the short-video rule.
"""
from __future__ import annotations

import dataclasses

import numpy as np


class ClipTooShortError(ValueError):
    """The clip has too few frames for `min_clips` middles even at stride 1."""


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """Frame indices to store for one clip."""

    requested_rate: int  # stride asked for
    sample_rate: int  # stride actually used (after the short-video rule)
    middle_frames: np.ndarray  # int64 [K], sorted
    lr_frames: np.ndarray  # int64 [M], sorted, unique
    neighbour_slots: np.ndarray  # int64 [K, num_frm - 1], positions in lr_frames

    @property
    def short_rule_applied(self) -> bool:
        return self.requested_rate != self.sample_rate


def effective_sample_rate(num_frames: int, sample_rate: int, num_frm: int, min_clips: int) -> int:
    """The stride of docs/fidelity.md §1, reduced for short videos; raises ClipTooShortError."""
    span = num_frm - 1
    if num_frames < span * sample_rate + min_clips:
        sample_rate = (num_frames - min_clips) // span
    if sample_rate < 1:
        raise ClipTooShortError(
            f"{num_frames} frames < {span + min_clips} needed for {min_clips} clips of {num_frm} frames")
    return sample_rate


MIDDLE_LAYOUTS = ("spread", "strided")


def _spread_middles(first: int, stop: int, rate: int, num_candidates: int) -> np.ndarray:
    valid = stop - first
    count = min(num_candidates, valid)
    spacing = valid // count
    if spacing >= rate:
        spacing -= spacing % rate
    used = (count - 1) * spacing + 1
    start = first + (valid - used) // 2
    return start + spacing * np.arange(count, dtype=np.int64)


def strided_middles(first: int, stop: int, num_candidates: int) -> np.ndarray:
    """The original's inference middles: `c[::int(len(c) / K)][:K]`, c = range(first, stop)."""
    candidates = np.arange(first, stop, dtype=np.int64)
    return candidates[::int(len(candidates) / num_candidates)][:num_candidates]


def plan_clip(num_frames: int, sample_rate: int, num_frm: int, min_clips: int,
              num_candidates: int, layout: str = "spread") -> ClipPlan:
    """Chooses the candidate middles and the LR frames to store for a clip of `num_frames`."""
    if num_frm % 2 != 1:
        raise ValueError(f"num_frm must be odd, got {num_frm}")
    if num_candidates < min_clips:
        raise ValueError(f"num_candidates ({num_candidates}) < min_clips ({min_clips})")
    if layout not in MIDDLE_LAYOUTS:
        raise ValueError(f"unknown middle layout {layout!r}; known: {MIDDLE_LAYOUTS}")
    rate = effective_sample_rate(num_frames, sample_rate, num_frm,
                                 num_candidates if layout == "strided" else min_clips)
    half = (num_frm - 1) // 2
    first, stop = half * rate, num_frames - half * rate  # valid middles: [first, stop)
    if layout == "strided":
        middles = strided_middles(first, stop, num_candidates)
    else:
        middles = _spread_middles(first, stop, rate, num_candidates)
    offsets = np.concatenate([np.arange(-half, 0), np.arange(1, half + 1)]) * rate
    neighbours = middles[:, None] + offsets[None, :]
    lr_frames = np.unique(neighbours)
    slots = np.searchsorted(lr_frames, neighbours).astype(np.int64)
    return ClipPlan(requested_rate=sample_rate, sample_rate=rate, middle_frames=middles,
                    lr_frames=lr_frames, neighbour_slots=slots)
