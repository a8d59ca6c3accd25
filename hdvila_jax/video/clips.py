"""A clip of a video file (or of decoded frames) as the clip records store it, built in memory.

``read_clip(path, span, options, n_clips)`` does what ``data_pipelines.build_tfrecords
--geometry resize`` does for one clip (count the frames of the span, plan the candidate
middles and LR neighbours, decode them resized bicubic to the stored size and a quarter of
it, JPEG-encode them) but keeps only the ``n_clips`` candidates evaluation reads
(``sampling.even_middles``). Cropping that record with ``hdvila_jax.data.frames`` then
gives exactly the pixels the evaluation pipeline gives for the same clip's record.
"""
from __future__ import annotations

import dataclasses
import json
import math

import av
import numpy as np
import tensorflow as tf

from hdvila_jax import storage
from hdvila_jax.data.frames import decode_clip_frames
from hdvila_jax.data.records import ClipRecord
from hdvila_jax.data.sampling import LR_FACTOR, centre_crop_offset, even_middles
from hdvila_jax.video.clip_plan import MIDDLE_LAYOUTS, ClipPlan, ClipTooShortError, plan_clip
from hdvila_jax.video.decode import Span, VideoError, decode_frames, probe_video

# The paper stores 720x1280 frames for 640x1024 crops; other crops keep these margins.
PAPER_FRAME_HW, PAPER_CROP_HW = (720, 1280), (640, 1024)


@dataclasses.dataclass(frozen=True)
class FrameOptions:
    """How a clip's frames are stored: the build options of ``--geometry resize`` records."""

    frame_height: int = 720
    frame_width: int = 1280
    sample_rate: int = 12
    num_frm: int = 7
    min_clips: int = 4
    num_candidates: int = 8
    jpeg_quality: int = 90
    middle_layout: str = "spread"

    def validate(self) -> "FrameOptions":
        """Raise ValueError naming the first bad option (by its build_tfrecords flag); return self."""
        if (self.frame_height % LR_FACTOR or self.frame_width % LR_FACTOR or self.frame_height <= 0
                or self.frame_width <= 0):
            raise ValueError(f"--frame_size must be positive and divisible by 4, got "
                             f"{self.frame_height}x{self.frame_width}")
        if self.sample_rate < 1:
            raise ValueError(f"--sample_rate must be >= 1 (frames between a clip's frames), got {self.sample_rate}")
        if self.num_frm % 2 != 1 or self.num_frm < 3:
            raise ValueError(f"--num_frm must be odd and >= 3, got {self.num_frm}")
        if not 1 <= self.min_clips <= self.num_candidates:
            raise ValueError(f"need 1 <= --min_clips ({self.min_clips}) <= --num_candidates "
                             f"({self.num_candidates})")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"--jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.middle_layout not in MIDDLE_LAYOUTS:
            raise ValueError(f"--middle_layout must be one of {MIDDLE_LAYOUTS}, got {self.middle_layout!r}")
        return self

    @classmethod
    def for_crop(cls, crop_hw: tuple[int, int], num_frm: int, **overrides) -> "FrameOptions":
        """Options for a model's crop: the stored frame keeps the paper's margins around the crop
        (720x1280 for 640x1024), rounded up to multiples of 4."""
        height, width = (LR_FACTOR * math.ceil(c * f / p / LR_FACTOR)
                         for c, f, p in zip(crop_hw, PAPER_FRAME_HW, PAPER_CROP_HW))
        return cls(**{"frame_height": height, "frame_width": width, "num_frm": num_frm, **overrides}).validate()

    @classmethod
    def from_build_json(cls, path: str) -> "FrameOptions":
        """The options recorded in a records build's ``<split>_build.json`` (``--geometry resize`` only;
        local or gs://)."""
        build = json.loads(storage.read_text(path))
        if build.get("geometry", "resize") != "resize":
            raise ValueError(f"{path}: records of --geometry {build['geometry']} cannot be read from video files "
                             "the same way; only --geometry resize can")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in build.items() if k in fields}).validate()


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
    """A uint8 RGB image as JPEG bytes (the records' encoder)."""
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def clip_windows(start: float, end: float, window: float | None, stride: float | None = None
                 ) -> list[tuple[float, float]]:
    """``[start, end)`` cut into windows of ``window`` seconds every ``stride`` (default ``window``)
    seconds. When the windows leave a tail of at least half a stride uncovered, one more window
    ends at ``end`` (overlapping its predecessor). A range shorter than one window is one window;
    ``window=None``: the whole range."""
    if window is None:
        return [(float(start), float(end))]
    stride = window if stride is None else stride
    if window <= 0 or stride <= 0:
        raise ValueError(f"clip window ({window} s) and stride ({stride} s) must be positive")
    if end - start <= window:
        return [(float(start), float(end))]
    starts = [float(s) for s in np.arange(start, end - window + 1e-6, stride)]
    if end - window - starts[-1] >= stride / 2:
        starts.append(float(end - window))
    return [(s, s + window) for s in starts]


def _chosen_plan(plan: ClipPlan, n_clips: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(middles, lr frames, neighbour slots) of the candidates evaluation reads."""
    chosen = even_middles(len(plan.middle_frames), n_clips)
    middles = plan.middle_frames[chosen]
    neighbours = plan.lr_frames[plan.neighbour_slots[chosen]]
    lr_frames = np.unique(neighbours)
    return middles, lr_frames, np.searchsorted(lr_frames, neighbours).astype(np.int64)


def _record(clip_id: str, options: FrameOptions, num_frames: int, fps: float, sample_rate: int,
            middles: np.ndarray, hr: list[np.ndarray], lr_frames: np.ndarray, lr: list[np.ndarray],
            slots: np.ndarray) -> ClipRecord:
    def encode(image: np.ndarray) -> bytes:
        return encode_jpeg(image, options.jpeg_quality)

    return ClipRecord(clip_id=clip_id, video_id=clip_id, video_index=0, texts=[""], num_frames=num_frames, fps=fps,
                      sample_rate=sample_rate, num_frm=options.num_frm, frame_height=options.frame_height,
                      frame_width=options.frame_width, middle_frames=middles, hr_jpeg=[encode(f) for f in hr],
                      lr_frames=lr_frames, lr_jpeg=[encode(f) for f in lr], neighbour_slots=slots)


def _plan(num_frames: int, options: FrameOptions) -> ClipPlan:
    try:
        return plan_clip(num_frames, options.sample_rate, options.num_frm, options.min_clips,
                         options.num_candidates, options.middle_layout)
    except ClipTooShortError as e:
        raise VideoError(f"too short: {e}") from e


def read_clip(path: str, span: Span, options: FrameOptions, n_clips: int) -> ClipRecord:
    """The in-memory record of ``path``'s (local or gs://) ``span`` (seconds, None: the whole file) holding the
    ``n_clips`` evaluation candidates. Raises VideoError (unreadable, no video stream, too short)."""
    info = probe_video(path, span)
    plan = _plan(info.num_frames, options)
    middles, lr_frames, slots = _chosen_plan(plan, n_clips)
    hr, lr = decode_frames(path, span, middles, lr_frames, (options.frame_height, options.frame_width))
    return _record(path, options, info.num_frames, info.fps, plan.sample_rate, middles,
                   [hr[int(i)] for i in middles], lr_frames, [lr[int(i)] for i in lr_frames], slots)


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    return av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
        width=width, height=height, format="rgb24", interpolation="BICUBIC").to_ndarray()


def frames_clip(frames: np.ndarray, options: FrameOptions, n_clips: int, name: str = "array",
                fps: float = 0.0) -> ClipRecord:
    """The in-memory record of decoded uint8 RGB ``frames`` ``[T, H, W, 3]`` (all of them one clip),
    resized with the same swscale bicubic filter as video files (from RGB instead of YUV)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(f"{name}: decoded frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    plan = _plan(len(frames), options)
    middles, lr_frames, slots = _chosen_plan(plan, n_clips)
    height, width = options.frame_height, options.frame_width
    hr = [_resize(frames[i], height, width) for i in middles]
    lr = [_resize(frames[i], height // LR_FACTOR, width // LR_FACTOR) for i in lr_frames]
    return _record(name, options, len(frames), fps, plan.sample_rate, middles, hr, lr_frames, lr, slots)


def clip_pixels(record: ClipRecord, crop_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """All candidates of ``record`` centre-cropped as evaluation crops them: HR middles uint8
    ``[n, H, W, 3]`` and LR neighbours ``[n, num_frm - 1, H/4, W/4, 3]``."""
    offset = centre_crop_offset((record.frame_height, record.frame_width), tuple(crop_hw))
    return decode_clip_frames(record, np.arange(record.num_candidates), offset, tuple(crop_hw))
