"""Decoding the frames a clip plan needs from a video file (or a time span of it) with PyAV.

A path is local or ``gs://`` (``hdvila_jax.storage``): a bucket object is read through a buffered
file object (ranged reads of a few MiB at a time), so a video is never downloaded or held whole.
"""
from __future__ import annotations

import contextlib
import dataclasses
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from hdvila_jax import storage


class VideoError(Exception):
    """A video that cannot be used; the message is the reason written to the build report."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the builder needs to know before decoding."""

    num_frames: int
    fps: float
    height: int
    width: int
    start_time: float = 0.0  # seconds: presentation time of the first counted frame
    end_time: float = 0.0  # seconds: when the last counted frame ends (its time plus its duration)


Span = tuple[float, float] | None
# Packets arrive in decode order; B-frames may carry presentation times a little earlier.
_REORDER_MARGIN_S = 2.0


@contextlib.contextmanager
def _opened(path: str) -> Iterator[av.container.InputContainer]:
    """The container of the video file ``path`` (a gs:// object through a buffered file object), closed
    on exit. Raises VideoError for a missing, empty or unreadable file and one without a video stream."""
    try:
        size = storage.size(path)
    except FileNotFoundError:
        raise VideoError("missing video file") from None
    except OSError as e:  # a link that loops, a file we may not read
        raise VideoError(f"unreadable: {e.strerror or e}") from None
    if size == 0:
        raise VideoError("zero-length file")
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(storage.open_file(path, "rb")) if storage.is_remote(path) else path
        try:
            container = av.open(source)
        except (av.FFmpegError, UnicodeDecodeError) as e:
            raise VideoError(f"unreadable: {e}") from e
        stack.callback(container.close)
        if not container.streams.video:
            raise VideoError("no video stream")
        yield container


def _in_span(time: Fraction | None, span: Span) -> bool:
    if span is None:
        return True
    return time is not None and span[0] <= time < span[1]


def _seek_to_span(container: av.container.InputContainer, stream, span: Span) -> None:
    if span is not None and span[0] > 0:
        container.seek(int(span[0] / stream.time_base), stream=stream, backward=True)


def probe_video(path: str, span: Span = None) -> VideoInfo:
    """Counts the frames (packets) of the video or of its `span` [start, end) in seconds, and
    the time range they cover."""
    with _opened(path) as container:
        stream = container.streams.video[0]
        _seek_to_span(container, stream, span)
        count, first, last = 0, None, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                time = None if packet.pts is None else packet.pts * stream.time_base
                if span is not None and time is not None and time >= span[1] + _REORDER_MARGIN_S:
                    break
                if _in_span(time, span):
                    count += 1
                    if time is not None:
                        end = time + (packet.duration or 0) * stream.time_base
                        first = time if first is None else min(first, time)
                        last = end if last is None else max(last, end)
        except av.FFmpegError as e:
            raise VideoError(f"truncated or corrupt stream: {e}") from e
        rate = stream.average_rate or stream.guessed_rate or 0
        ctx = stream.codec_context
        if count == 0:
            raise VideoError("no video frames")
        first = float(first) if first is not None else 0.0
        last = float(last) if last is not None else first + (count / float(rate) if rate else 0.0)
        return VideoInfo(num_frames=count, fps=float(rate), height=ctx.height, width=ctx.width,
                         start_time=first, end_time=last)


def _decoded_frames(path: str, span: Span) -> Iterator[av.VideoFrame]:
    with _opened(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            _seek_to_span(container, stream, span)
            for frame in container.decode(stream):
                time = None if frame.pts is None else frame.pts * stream.time_base
                if span is not None and time is not None and time >= span[1]:
                    break
                if _in_span(time, span):
                    yield frame
        except av.FFmpegError as e:
            raise VideoError(f"truncated or corrupt stream: {e}") from e


def _wanted_frames(path: str, span: Span, wanted: set[int]) -> Iterator[tuple[int, av.VideoFrame]]:
    """(index within the clip, frame) of the `wanted` frames; raises if any is missing."""
    last, found = max(wanted), set()
    for index, frame in enumerate(_decoded_frames(path, span)):
        if index in wanted:
            found.add(index)
            yield index, frame
        if index >= last:
            break
    missing = wanted - found
    if missing:
        raise VideoError(f"truncated: frame {min(missing)} of the clip could not be decoded")


def decode_frames(path: str, span: Span, hr_indices: np.ndarray, lr_indices: np.ndarray,
                  hr_size: tuple[int, int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Decodes frames by index within the clip, resized (bicubic) to `hr_size` (H, W) and to
    a quarter of it. Returns ({index: HR uint8 RGB}, {index: LR uint8 RGB})."""
    height, width = hr_size
    hr_wanted, lr_wanted = set(int(i) for i in hr_indices), set(int(i) for i in lr_indices)
    hr, lr = {}, {}
    for index, frame in _wanted_frames(path, span, hr_wanted | lr_wanted):
        if index in hr_wanted:
            hr[index] = frame.reformat(width=width, height=height, format="rgb24",
                                       interpolation="BICUBIC").to_ndarray()
        if index in lr_wanted:
            lr[index] = frame.reformat(width=width // 4, height=height // 4, format="rgb24",
                                       interpolation="BICUBIC").to_ndarray()
    return hr, lr


def decode_rgb_frames(path: str, span: Span, indices: np.ndarray) -> dict[int, np.ndarray]:
    """Decodes frames by index within the clip at their own size: {index: uint8 RGB [H, W, 3]}."""
    return {index: frame.to_ndarray(format="rgb24")
            for index, frame in _wanted_frames(path, span, set(int(i) for i in indices))}
