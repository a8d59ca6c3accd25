"""Turns ClipSpecs into serialised clip records (run inside the build's worker processes).

Geometries (how the stored HR frame and its quarter-size LR frames are made):
- `resize`: the mp4's frames resized with swscale bicubic to the HR size and to a quarter of it;
- `msrvtt`: pipeline A of the original: LR = nearest resize of the mp4 frame to HR/4, HR = the
  x4 bicubic upsample of that LR frame (`geometry.msrvtt_lr_frame`, `geometry.upsampled_hr_frame`);
- `frames`: pipeline B: frame folders (`frame_folders.py`);
- `tgif`: pipeline C: LR = the frame (mp4 or GIF) letterboxed into HR/4 x HR/4 (longer side
  resized bilinear, padded with 127; `geometry.tgif_lr_frame`), HR = its x4 bicubic upsample.

Questions on one video (QA) differ only in their texts and answers: a worker thread keeps the
encoded frames of the last video it encoded, so a run of consecutive questions on a video decodes it
once. Videos and frame folders may be local or ``gs://`` (read through ``hdvila_jax.storage``).
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Sequence

import numpy as np

from data_pipelines import frame_folders
from data_pipelines.annotations import BadInput, ClipSpec
from hdvila_jax.video.clip_plan import ClipPlan, ClipTooShortError, plan_clip
from data_pipelines.geometry import msrvtt_lr_frame, tgif_lr_frame, upsampled_hr_frame
from hdvila_jax import storage
from hdvila_jax.video.clips import FrameOptions, encode_jpeg
from hdvila_jax.video.decode import VideoError, decode_frames, decode_rgb_frames, probe_video
from hdvila_jax.data.records import ClipRecord, serialize_clip_record

GEOMETRIES = ("resize", "msrvtt", "frames", "tgif")


@dataclasses.dataclass(frozen=True)
class BuildOptions(FrameOptions):
    """What is stored per clip (the library's FrameOptions plus the geometry); recorded in the build
    config so a resume can check it."""

    geometry: str = "resize"

    def validate(self) -> "BuildOptions":
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"--geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.geometry == "tgif" and self.frame_height != self.frame_width:
            raise ValueError(f"--geometry tgif letterboxes into a square: --frame_size must be square, got "
                             f"{self.frame_height}x{self.frame_width}")
        super().validate()
        return self


@dataclasses.dataclass(frozen=True)
class ClipResult:
    """The record of a clip (None if skipped) and what the report should say about it."""

    record: bytes | None
    skipped: BadInput | None
    warnings: tuple[BadInput, ...] = ()


@dataclasses.dataclass(frozen=True)
class _EncodedFrames:
    """The part of a record that depends only on the video: frame indices and JPEGs."""

    num_frames: int
    fps: float
    plan: ClipPlan
    hr_jpeg: list[bytes]
    lr_jpeg: list[bytes]
    warnings: tuple[str, ...]  # reasons; the report item is the clip's


class _FrameError(Exception):
    """The video cannot give the clip's frames; the message is the skip reason."""


def _frame_count(options: BuildOptions, spec: ClipSpec) -> tuple[int, float, tuple[str, ...]]:
    """(frames, fps, warnings) of the clip's source; fps is 0 for frame folders (unknown)."""
    if options.geometry == "frames":
        count, warnings = frame_folders.count_frames(spec)
        return count, 0.0, tuple(w.reason for w in warnings)
    info = probe_video(spec.video_path, spec.span)
    warnings = ()
    if options.geometry == "resize" and (info.height < options.frame_height or info.width < options.frame_width):
        warnings = (f"resized up: {info.height}x{info.width} -> {options.frame_height}x{options.frame_width}",)
    return info.num_frames, info.fps, warnings


def _load_frames(options: BuildOptions, spec: ClipSpec, plan: ClipPlan
                 ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], tuple[str, ...]]:
    """({index: HR frame}, {index: LR frame}, warnings) for the planned frames."""
    hr_size = (options.frame_height, options.frame_width)
    if options.geometry == "frames":
        hr, lr, warnings = frame_folders.load_frames(spec, plan.middle_frames, plan.lr_frames, hr_size)
        return hr, lr, tuple(w.reason for w in warnings)
    if options.geometry == "resize":
        return (*decode_frames(spec.video_path, spec.span, plan.middle_frames, plan.lr_frames, hr_size), ())
    frames = decode_rgb_frames(spec.video_path, spec.span, np.union1d(plan.middle_frames, plan.lr_frames))
    if options.geometry == "tgif":
        lr = {index: tgif_lr_frame(frame, options.frame_height // 4) for index, frame in frames.items()}
    else:
        lr = {index: msrvtt_lr_frame(frame, hr_size) for index, frame in frames.items()}
    hr = {int(i): upsampled_hr_frame(lr[int(i)]) for i in plan.middle_frames}
    return hr, lr, ()


def _encode_frames(options: BuildOptions, spec: ClipSpec) -> _EncodedFrames:
    try:
        num_frames, fps, warnings = _frame_count(options, spec)
        plan = plan_clip(num_frames, options.sample_rate, options.num_frm, options.min_clips,
                         options.num_candidates, options.middle_layout)
    except VideoError as e:
        raise _FrameError(f"{e} ({spec.video_path})") from e
    except ClipTooShortError as e:
        raise _FrameError(f"too short: {e}") from e
    if plan.short_rule_applied:
        warnings += (f"short video: sample_rate {plan.requested_rate} -> {plan.sample_rate} ({num_frames} frames)",)
    try:
        hr, lr, load_warnings = _load_frames(options, spec, plan)
    except VideoError as e:
        raise _FrameError(f"{e} ({spec.video_path})") from e
    return _EncodedFrames(num_frames=num_frames, fps=fps, plan=plan,
                          hr_jpeg=[encode_jpeg(hr[int(i)], options.jpeg_quality) for i in plan.middle_frames],
                          lr_jpeg=[encode_jpeg(lr[int(i)], options.jpeg_quality) for i in plan.lr_frames],
                          warnings=warnings + load_warnings)


def frame_source(spec: ClipSpec) -> tuple:
    """What a clip's frames depend on besides the options: equal for questions on one video."""
    return spec.video_path, spec.span, spec.num_frame, spec.hr_frames_path


def _file_state(path: str) -> tuple[int, int] | None:
    """(mtime, size) of a file or folder (a gs:// object: seconds, bytes), None if missing: a
    rewritten video is not reused."""
    try:
        if storage.is_remote(path):
            stat = storage.path(path).stat()
            return stat.mtime, stat.length
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


# Each thread's last encoded video (Beam's DirectRunner runs workers as threads of one process):
# `last` = ((options, frame source, file state), its frames or skip reason).
_last_video = threading.local()


def _video_frames(options: BuildOptions, spec: ClipSpec) -> _EncodedFrames | str:
    """The encoded frames of the spec's video (or why it has none), reused for the next spec
    on the same video."""
    key = (options, frame_source(spec), _file_state(spec.video_path))
    last = getattr(_last_video, "last", None)
    if last is not None and last[0] == key:
        return last[1]
    try:
        frames: _EncodedFrames | str = _encode_frames(options, spec)
    except _FrameError as e:
        frames = str(e)
    _last_video.last = (key, frames)
    return frames


def _encode(options: BuildOptions, spec: ClipSpec) -> ClipResult:
    item = spec.line or spec.clip_id  # the report names a question by FILE:LINE
    frames = _video_frames(options, spec)
    if isinstance(frames, str):
        return ClipResult(None, BadInput(item, frames))
    record = ClipRecord(
        clip_id=spec.clip_id,
        video_id=spec.video_id,
        video_index=spec.video_index,
        texts=list(spec.texts),
        num_frames=frames.num_frames,
        fps=frames.fps,
        sample_rate=frames.plan.sample_rate,
        num_frm=options.num_frm,
        frame_height=options.frame_height,
        frame_width=options.frame_width,
        middle_frames=frames.plan.middle_frames,
        hr_jpeg=frames.hr_jpeg,
        lr_frames=frames.plan.lr_frames,
        lr_jpeg=frames.lr_jpeg,
        neighbour_slots=frames.plan.neighbour_slots,
        answer=spec.answer,
        answer_text=spec.answer_text,
        answer_type=spec.answer_type,
    )
    return ClipResult(serialize_clip_record(record), None, tuple(BadInput(item, w) for w in frames.warnings))


def encode_clip(options: BuildOptions, spec: ClipSpec) -> ClipResult:
    """Builds the record of one clip; any failure becomes a skipped entry, never an exception."""
    try:
        return _encode(options, spec)
    except Exception as e:  # noqa: BLE001 -- one broken input must not stop a long build
        return ClipResult(None, BadInput(spec.line or spec.clip_id, f"unexpected error: {type(e).__name__}: {e}"))


def encode_clips(options: BuildOptions, specs: Sequence[ClipSpec]) -> list[ClipResult]:
    """`encode_clip` of each spec, in order (a worker's job: a run of clips on one video)."""
    return [encode_clip(options, spec) for spec in specs]
