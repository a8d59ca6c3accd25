"""Helpers of the data tests: tiny synthetic videos, builds in-process, the records and reports they
write, PSNR."""
from __future__ import annotations

import glob
import json
import os

import av
import numpy as np

from data_pipelines import build_tfrecords
from data_pipelines.synthetic_videos import MovingShape, write_moving_shape_video
from hdvila_jax.data.records import ClipRecord, parse_clip_record
from hdvila_jax.data.tfrecord_source import TFRecordDataSource

FRAME_HW = (64, 96)
MC_OPTIONS = ["runs", "jumps", "sits", "waves", "spins"]  # the five answers of a multiple-choice question


def write_video(path: str, num_frames: int = 40, hw: tuple[int, int] = FRAME_HW, seed: int = 0,
                content: MovingShape = MovingShape("red", "circle", "right"), fps: int = 15) -> None:
    write_moving_shape_video(path, content, num_frames, hw[0], hw[1], fps, seed=seed)


def write_jsonl(path: str, entries: list) -> None:
    """Writes entries: dicts become JSON lines, bytes are written verbatim as a line."""
    with open(path, "wb") as f:
        for entry in entries:
            f.write(entry if isinstance(entry, bytes) else json.dumps(entry).encode())
            f.write(b"\n")


def build(videos: str, annotations: str, output: str, *extra: str, frame_hw=FRAME_HW,
          sample_rate: int = 2, num_shards: int = 2) -> dict:
    args = build_tfrecords.parse_args([
        "--videos", videos, "--annotations", annotations, "--output", output,
        "--num_shards", str(num_shards), "--workers", "1",
        "--frame_size", str(frame_hw[0]), str(frame_hw[1]), "--sample_rate", str(sample_rate), *extra])
    return build_tfrecords.build(args)


def records_by_id(pattern: str) -> dict[str, ClipRecord]:
    """{clip id: record} of the TFRecord files matching ``pattern``."""
    source = TFRecordDataSource(sorted(glob.glob(pattern)))
    return {r.clip_id: r for r in (parse_clip_record(source[i]) for i in range(len(source)))}


def reasons(bad: list, path: str | None = None) -> dict:
    """{line number (or item): reason} of BadInputs or report dicts; items ``path:N`` are shortened to ``N``."""
    items = [(b.item, b.reason) if hasattr(b, "item") else (b["item"], b["reason"]) for b in bad]
    return {(item.rsplit(":", 1)[1] if path and item.startswith(f"{path}:") else item): reason
            for item, reason in items}


def decode_all_frames(path: str, hw: tuple[int, int]) -> np.ndarray:
    """Every frame of a video, bicubic-resized to hw, as uint8 RGB [T, H, W, 3]."""
    with av.open(path) as container:
        return np.stack([f.reformat(width=hw[1], height=hw[0], format="rgb24", interpolation="BICUBIC")
                         .to_ndarray() for f in container.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def decode_jpeg(data: bytes) -> np.ndarray:
    import tensorflow as tf
    return tf.io.decode_jpeg(data, channels=3).numpy()


def write_jpeg(path: str, image: np.ndarray, quality: int = 95) -> None:
    """Writes a uint8 RGB image as a JPEG, creating its folder."""
    import tensorflow as tf
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(tf.io.encode_jpeg(image, quality=quality).numpy())


def pattern_frames(num_frames: int, hw: tuple[int, int], seed: int = 0, period: float = 3.1) -> np.ndarray:
    """Grey uint8 RGB frames [T, H, W, 3] of fine diagonal stripes drifting over time: every
    frame differs, nearest and filtered resizes give clearly different pictures, and JPEG's
    chroma subsampling loses nothing."""
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]].astype(np.float32)
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    waves = np.sin(2 * np.pi * (xx / period + yy / (1.7 * period)) + phase + t / 3)
    grey = np.clip(128 + 100 * waves, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def flip_byte(path: str, position: int) -> None:
    """Invert the byte at ``position`` of the file ``path`` in place (simulated disk damage)."""
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))
