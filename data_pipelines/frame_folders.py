"""Pipeline B's frame folders (DiDeMo, LSMDC, ActivityNet; docs/fidelity.md §11.5 and §15).

`decode_frames.py` of the original writes, per clip, `<videos>/video_frames/<clip_id>/` (full
size) and `<videos>/video_frames_lr/<clip_id>/` (180x288), both holding
`<basename of clip_id>_%03d.jpg` numbered from 0. LR frames are stored as read (resized
bilinear only when their size is not a quarter of the stored HR size, with a warning); HR
frames are resized bilinear to the stored HR size (720x1152), like the original's `cv2.resize`.
The folders may be local or ``gs://`` (files read through ``hdvila_jax.storage``).
"""
from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from data_pipelines.annotations import BadInput, ClipSpec
from data_pipelines.geometry import bilinear_resize
from hdvila_jax import storage
from hdvila_jax.video.decode import VideoError

LR_DIR, HR_DIR = "video_frames_lr", "video_frames"


def with_frame_folders(spec: ClipSpec, videos_dir: str) -> ClipSpec:
    """The spec with `video_path` = its LR frame folder and `hr_frames_path` = its HR folder."""
    return dataclasses.replace(spec, video_path=storage.join(videos_dir, LR_DIR, spec.clip_id),
                               hr_frames_path=storage.join(videos_dir, HR_DIR, spec.clip_id))


def _frame_file(folder: str, clip_id: str, index: int) -> str:
    return storage.join(folder, f"{os.path.basename(clip_id)}_{index:03d}.jpg")


def count_frames(spec: ClipSpec) -> tuple[int, tuple[BadInput, ...]]:
    """The clip's frame count: `num_frame` of the annotation when given, else the number of
    `<basename>_NNN.jpg` files in the LR folder; a disagreement between the two is a warning."""
    if not storage.isdir(spec.video_path):
        raise VideoError("missing frame folder")
    pattern = re.compile(re.escape(os.path.basename(spec.clip_id)) + r"_\d{3,}\.jpg")
    files = sum(1 for name in storage.listdir(spec.video_path) if pattern.fullmatch(name))
    if spec.num_frame is None:
        if files == 0:
            raise VideoError("no frame files")
        return files, ()
    if spec.num_frame != files:
        return spec.num_frame, (BadInput(spec.clip_id, f"num_frame {spec.num_frame} != {files} frame files "
                                                       f"in {spec.video_path}"),)
    return spec.num_frame, ()


def _read_jpeg(path: str) -> np.ndarray:
    try:
        data = storage.read_bytes(path)
    except (FileNotFoundError, IsADirectoryError):
        raise VideoError(f"missing frame file ({path})") from None
    try:
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    except tf.errors.InvalidArgumentError as e:
        raise VideoError(f"unreadable frame file ({path}): {e.message.splitlines()[0]}") from e


def load_frames(spec: ClipSpec, hr_indices: np.ndarray, lr_indices: np.ndarray, hr_size: tuple[int, int]
                ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], tuple[BadInput, ...]]:
    """({index: HR uint8 RGB at hr_size}, {index: LR at hr_size / 4}, warnings) of a frame-folder clip."""
    lr_size = (hr_size[0] // 4, hr_size[1] // 4)
    hr = {int(i): bilinear_resize(_read_jpeg(_frame_file(spec.hr_frames_path, spec.clip_id, int(i))), hr_size)
          for i in hr_indices}
    lr, resized = {}, set()
    for i in lr_indices:
        image = _read_jpeg(_frame_file(spec.video_path, spec.clip_id, int(i)))
        if image.shape[:2] != lr_size:
            resized.add(image.shape[:2])
            image = bilinear_resize(image, lr_size)
        lr[int(i)] = image
    warnings = tuple(BadInput(spec.clip_id, f"resized LR frames: {h}x{w} -> {lr_size[0]}x{lr_size[1]}")
                     for h, w in sorted(resized))
    return hr, lr, warnings
