"""Turns one ClipSpec into a serialised clip record (run inside the build's worker processes).

Geometries (how the stored HR frame and its quarter-size LR frames are made):
- `resize`: the mp4's frames resized with swscale bicubic to the HR size and to a quarter of it;
- `msrvtt`: pipeline A of the original: LR = nearest resize of the mp4 frame to HR/4, HR = the
  x4 bicubic upsample of that LR frame (`geometry.msrvtt_*_frame`);
- `frames`: pipeline B: frame folders (`frame_folders.py`).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from data_pipelines import frame_folders
from data_pipelines.annotations import BadInput, ClipSpec
from data_pipelines.clip_plan import MIDDLE_LAYOUTS, ClipPlan, ClipTooShortError, plan_clip
from data_pipelines.geometry import msrvtt_hr_frame, msrvtt_lr_frame
from data_pipelines.video_decode import VideoError, decode_frames, decode_rgb_frames, probe_video
from hdvila_jax.data.records import ClipRecord, serialize_clip_record

GEOMETRIES = ("resize", "msrvtt", "frames")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """What is stored per clip; recorded in the build config so a resume can check it."""

    frame_height: int = 720
    frame_width: int = 1280
    sample_rate: int = 12
    num_frm: int = 7
    min_clips: int = 4
    num_candidates: int = 8
    jpeg_quality: int = 90
    geometry: str = "resize"
    middle_layout: str = "spread"

    def validate(self) -> None:
        if self.frame_height % 4 or self.frame_width % 4:
            raise ValueError(f"--frame_size must be divisible by 4, got {self.frame_height}x{self.frame_width}")
        if self.num_frm % 2 != 1 or self.num_frm < 3:
            raise ValueError(f"--num_frm must be odd and >= 3, got {self.num_frm}")
        if not 1 <= self.min_clips <= self.num_candidates:
            raise ValueError(f"need 1 <= --min_clips ({self.min_clips}) <= --num_candidates "
                             f"({self.num_candidates})")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"--geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.middle_layout not in MIDDLE_LAYOUTS:
            raise ValueError(f"--middle_layout must be one of {MIDDLE_LAYOUTS}, got {self.middle_layout!r}")


@dataclasses.dataclass(frozen=True)
class ClipResult:
    """The record of a clip (None if skipped) and what the report should say about it."""

    record: bytes | None
    skipped: BadInput | None
    warnings: tuple[BadInput, ...] = ()


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def _frame_count(options: BuildOptions, spec: ClipSpec) -> tuple[int, float, tuple[BadInput, ...]]:
    """(frames, fps, warnings) of the clip's source; fps is 0 for frame folders (unknown)."""
    if options.geometry == "frames":
        count, warnings = frame_folders.count_frames(spec)
        return count, 0.0, warnings
    info = probe_video(spec.video_path, spec.span)
    warnings = ()
    if options.geometry == "resize" and (info.height < options.frame_height or info.width < options.frame_width):
        warnings = (BadInput(spec.clip_id, f"resized up: {info.height}x{info.width} -> "
                                           f"{options.frame_height}x{options.frame_width}"),)
    return info.num_frames, info.fps, warnings


def _load_frames(options: BuildOptions, spec: ClipSpec, plan: ClipPlan
                 ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], tuple[BadInput, ...]]:
    """({index: HR frame}, {index: LR frame}, warnings) for the planned frames."""
    hr_size = (options.frame_height, options.frame_width)
    if options.geometry == "frames":
        return frame_folders.load_frames(spec, plan.middle_frames, plan.lr_frames, hr_size)
    if options.geometry == "resize":
        return (*decode_frames(spec.video_path, spec.span, plan.middle_frames, plan.lr_frames, hr_size), ())
    frames = decode_rgb_frames(spec.video_path, spec.span, np.union1d(plan.middle_frames, plan.lr_frames))
    lr = {index: msrvtt_lr_frame(frame, hr_size) for index, frame in frames.items()}
    hr = {int(i): msrvtt_hr_frame(lr[int(i)]) for i in plan.middle_frames}
    return hr, lr, ()


def _encode(options: BuildOptions, spec: ClipSpec) -> ClipResult:
    try:
        num_frames, fps, warnings = _frame_count(options, spec)
        plan = plan_clip(num_frames, options.sample_rate, options.num_frm, options.min_clips,
                         options.num_candidates, options.middle_layout)
    except VideoError as e:
        return ClipResult(None, BadInput(spec.clip_id, f"{e} ({spec.video_path})"))
    except ClipTooShortError as e:
        return ClipResult(None, BadInput(spec.clip_id, f"too short: {e}"))
    if plan.short_rule_applied:
        warnings += (BadInput(spec.clip_id, f"short video: sample_rate {plan.requested_rate} -> "
                                            f"{plan.sample_rate} ({num_frames} frames)"),)
    try:
        hr, lr, load_warnings = _load_frames(options, spec, plan)
    except VideoError as e:
        return ClipResult(None, BadInput(spec.clip_id, f"{e} ({spec.video_path})"))
    warnings += load_warnings
    record = ClipRecord(
        clip_id=spec.clip_id,
        video_id=spec.video_id,
        video_index=spec.video_index,
        texts=list(spec.texts),
        num_frames=num_frames,
        fps=fps,
        sample_rate=plan.sample_rate,
        num_frm=options.num_frm,
        frame_height=options.frame_height,
        frame_width=options.frame_width,
        middle_frames=plan.middle_frames,
        hr_jpeg=[_jpeg(hr[int(i)], options.jpeg_quality) for i in plan.middle_frames],
        lr_frames=plan.lr_frames,
        lr_jpeg=[_jpeg(lr[int(i)], options.jpeg_quality) for i in plan.lr_frames],
        neighbour_slots=plan.neighbour_slots,
        answer=spec.answer,
    )
    return ClipResult(serialize_clip_record(record), None, warnings)


def encode_clip(options: BuildOptions, spec: ClipSpec) -> ClipResult:
    """Builds the record of one clip; any failure becomes a skipped entry, never an exception."""
    try:
        return _encode(options, spec)
    except Exception as e:  # noqa: BLE001 -- one broken input must not stop a long build
        return ClipResult(None, BadInput(spec.clip_id, f"unexpected error: {type(e).__name__}: {e}"))
