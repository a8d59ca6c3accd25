"""Turns one ClipSpec into a serialised clip record (run inside the build's worker processes)."""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from data_pipelines.annotations import BadInput, ClipSpec
from data_pipelines.clip_plan import ClipTooShortError, plan_clip
from data_pipelines.video_decode import VideoError, decode_frames, probe_video
from hdvila_jax.data.records import ClipRecord, serialize_clip_record


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


@dataclasses.dataclass(frozen=True)
class ClipResult:
    """The record of a clip (None if skipped) and what the report should say about it."""

    record: bytes | None
    skipped: BadInput | None
    warnings: tuple[BadInput, ...] = ()


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def _encode(options: BuildOptions, spec: ClipSpec) -> ClipResult:
    try:
        info = probe_video(spec.video_path, spec.span)
        plan = plan_clip(info.num_frames, options.sample_rate, options.num_frm, options.min_clips,
                         options.num_candidates)
    except VideoError as e:
        return ClipResult(None, BadInput(spec.clip_id, f"{e} ({spec.video_path})"))
    except ClipTooShortError as e:
        return ClipResult(None, BadInput(spec.clip_id, f"too short: {e}"))
    warnings = []
    if plan.short_rule_applied:
        warnings.append(BadInput(spec.clip_id, f"short video: sample_rate {plan.requested_rate} -> "
                                               f"{plan.sample_rate} ({info.num_frames} frames)"))
    if info.height < options.frame_height or info.width < options.frame_width:
        warnings.append(BadInput(spec.clip_id, f"resized up: {info.height}x{info.width} -> "
                                               f"{options.frame_height}x{options.frame_width}"))
    try:
        hr, lr = decode_frames(spec.video_path, spec.span, plan.middle_frames, plan.lr_frames,
                               (options.frame_height, options.frame_width))
    except VideoError as e:
        return ClipResult(None, BadInput(spec.clip_id, f"{e} ({spec.video_path})"))
    record = ClipRecord(
        clip_id=spec.clip_id,
        video_id=spec.video_id,
        video_index=spec.video_index,
        texts=list(spec.texts),
        num_frames=info.num_frames,
        fps=info.fps,
        sample_rate=plan.sample_rate,
        num_frm=options.num_frm,
        frame_height=options.frame_height,
        frame_width=options.frame_width,
        middle_frames=plan.middle_frames,
        hr_jpeg=[_jpeg(hr[int(i)], options.jpeg_quality) for i in plan.middle_frames],
        lr_frames=plan.lr_frames,
        lr_jpeg=[_jpeg(lr[int(i)], options.jpeg_quality) for i in plan.lr_frames],
        neighbour_slots=plan.neighbour_slots,
    )
    return ClipResult(serialize_clip_record(record), None, tuple(warnings))


def encode_clip(options: BuildOptions, spec: ClipSpec) -> ClipResult:
    """Builds the record of one clip; any failure becomes a skipped entry, never an exception."""
    try:
        return _encode(options, spec)
    except Exception as e:  # noqa: BLE001 -- one broken input must not stop a long build
        return ClipResult(None, BadInput(spec.clip_id, f"unexpected error: {type(e).__name__}: {e}"))
