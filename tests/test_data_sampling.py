"""Clip planning at build time and clip/crop sampling at read time (docs/fidelity.md §1)."""
from __future__ import annotations

import numpy as np
import pytest

from data_pipelines.annotations import parse_timestamp
from hdvila_jax.data import sampling
from hdvila_jax.video.clip_plan import ClipTooShortError, effective_sample_rate, plan_clip


def test_short_video_rule():
    assert effective_sample_rate(400, 12, 7, 4) == 12
    assert effective_sample_rate(60, 12, 7, 4) == 9  # floor((60 - 4) / 6)
    with pytest.raises(ClipTooShortError):
        effective_sample_rate(9, 12, 7, 4)


def test_plan_720p_clip_shares_lr_frames():
    plan = plan_clip(400, 12, 7, 4, 8)  # a 13 s clip at 30 fps
    assert plan.sample_rate == 12 and len(plan.middle_frames) == 8
    assert plan.middle_frames.min() >= 36 and plan.middle_frames.max() < 400 - 36
    assert (np.diff(plan.middle_frames) % 12 == 0).all()  # spacing rounded to whole strides
    assert len(plan.lr_frames) < 8 * 6  # neighbours shared between candidates
    np.testing.assert_array_equal(plan.lr_frames[plan.neighbour_slots],
                                  plan.middle_frames[:, None] + 12 * np.array([-3, -2, -1, 1, 2, 3]))


def test_middle_choices():
    rng = np.random.default_rng(0)
    draws = [tuple(sampling.random_middles(8, 2, rng)) for _ in range(300)]
    assert all(a < b for a, b in draws)
    assert len(set(draws)) == 28  # every pair of 8 candidates shows up
    assert sampling.even_middles(8, 4).tolist() == [0, 2, 4, 6]
    assert sampling.even_middles(6, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="num_candidates"):
        sampling.even_middles(3, 4)


def test_crop_offsets():
    rng = np.random.default_rng(0)
    offsets = {sampling.random_crop_offset((720, 1280), (640, 1024), rng) for _ in range(500)}
    assert all(y % 4 == 0 and x % 4 == 0 and 0 <= y <= 80 and 0 <= x <= 256 for y, x in offsets)
    assert {y for y, _ in offsets} == set(range(0, 81, 4))
    assert sampling.centre_crop_offset((720, 1280), (640, 1024)) == (40, 128)
    assert sampling.centre_crop_offset((144, 224), (128, 192)) == (8, 16)
    with pytest.raises(ValueError, match="--frame_size"):
        sampling.centre_crop_offset((64, 96), (128, 192))


def test_timestamps():
    assert parse_timestamp("00:01:02.5") == 62.5 and parse_timestamp(3) == 3.0
