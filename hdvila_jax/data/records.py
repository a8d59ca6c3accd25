"""The clip record: one tf.train.Example per clip, shared by the writer and the reader.

A record stores what the reader needs to draw clips at any epoch without the video:

- ``clip_id`` (bytes), ``video_id`` (bytes), ``video_index`` (int64, stable id of the
    example inside its split), ``texts`` (UTF-8 bytes list, one or more captions);
- ``num_frames``, ``fps``, ``sample_rate`` (the frame stride actually used, after the
    short-video rule), ``num_frm`` (frames per clip, 7), ``frame_height``/``frame_width``
    (the stored HR size; LR frames are exactly a quarter of it);
- ``middle_frames`` [K] (source frame index of each candidate middle) and ``hr_jpeg`` [K];
- ``lr_frames`` [M] (source frame index of each stored LR frame) and ``lr_jpeg`` [M];
- ``neighbour_slots`` [K * (num_frm - 1)]: for each candidate middle, the positions in
    ``lr_jpeg`` of its neighbours in time order (the ones before, then the ones after);
- ``answer`` (int64, multiple-choice records only): index into ``texts`` of the correct option;
- ``answer_text``, ``answer_type`` (bytes, open-ended QA records only): the answer string and its
    type (MSRVTT-QA what/who/..., FrameQA object/number/color/location); absent features parse as None.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """A parsed clip record (JPEG frames still encoded)."""

    clip_id: str
    video_id: str
    video_index: int
    texts: list[str]
    num_frames: int
    fps: float
    sample_rate: int
    num_frm: int
    frame_height: int
    frame_width: int
    middle_frames: np.ndarray  # int64 [K]
    hr_jpeg: list[bytes]  # [K]
    lr_frames: np.ndarray  # int64 [M]
    lr_jpeg: list[bytes]  # [M]
    neighbour_slots: np.ndarray  # int64 [K, num_frm - 1]
    answer: int | None = None  # multiple choice: index of the correct text
    answer_text: str | None = None  # open-ended QA: the answer string
    answer_type: str | None = None  # open-ended QA: the answer's type

    @property
    def num_candidates(self) -> int:
        return len(self.hr_jpeg)


def _bytes(values: list[bytes]) -> feature_pb2.Feature:
    return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=values))


def _ints(values) -> feature_pb2.Feature:
    return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=[int(v) for v in values]))


def _floats(values) -> feature_pb2.Feature:
    return feature_pb2.Feature(float_list=feature_pb2.FloatList(value=list(values)))


def serialize_clip_record(record: ClipRecord) -> bytes:
    """Serialises a ClipRecord into tf.train.Example bytes."""
    slots = np.asarray(record.neighbour_slots)
    if slots.shape != (record.num_candidates, record.num_frm - 1):
        raise ValueError(f"clip {record.clip_id}: neighbour_slots shape {slots.shape}, expected "
                         f"({record.num_candidates}, {record.num_frm - 1})")
    features = {
        "clip_id": _bytes([record.clip_id.encode()]),
        "video_id": _bytes([record.video_id.encode()]),
        "video_index": _ints([record.video_index]),
        "texts": _bytes([t.encode() for t in record.texts]),
        "num_frames": _ints([record.num_frames]),
        "fps": _floats([record.fps]),
        "sample_rate": _ints([record.sample_rate]),
        "num_frm": _ints([record.num_frm]),
        "frame_height": _ints([record.frame_height]),
        "frame_width": _ints([record.frame_width]),
        "middle_frames": _ints(record.middle_frames),
        "hr_jpeg": _bytes(list(record.hr_jpeg)),
        "lr_frames": _ints(record.lr_frames),
        "lr_jpeg": _bytes(list(record.lr_jpeg)),
        "neighbour_slots": _ints(slots.reshape(-1)),
    }
    if record.answer is not None:
        if not 0 <= record.answer < len(record.texts):
            raise ValueError(f"clip {record.clip_id}: answer {record.answer} not in [0, {len(record.texts)})")
        features["answer"] = _ints([record.answer])
    for key in ("answer_text", "answer_type"):
        value = getattr(record, key)
        if value is not None:
            features[key] = _bytes([value.encode()])
    example = example_pb2.Example(features=feature_pb2.Features(feature=features))
    return example.SerializeToString()


def parse_clip_record(data: bytes) -> ClipRecord:
    """Parses tf.train.Example bytes written by `serialize_clip_record`."""
    feature = example_pb2.Example.FromString(data).features.feature

    def ints(key: str) -> np.ndarray:
        if key not in feature:
            raise KeyError(f"clip record lacks feature {key!r}")
        return np.asarray(feature[key].int64_list.value, dtype=np.int64)

    def bytes_list(key: str) -> list[bytes]:
        if key not in feature:
            raise KeyError(f"clip record lacks feature {key!r}")
        return list(feature[key].bytes_list.value)

    def optional_text(key: str) -> str | None:
        return bytes_list(key)[0].decode() if key in feature else None

    num_frm = int(ints("num_frm")[0])
    hr_jpeg = bytes_list("hr_jpeg")
    return ClipRecord(
            clip_id=bytes_list("clip_id")[0].decode(),
            video_id=bytes_list("video_id")[0].decode(),
            video_index=int(ints("video_index")[0]),
            texts=[t.decode() for t in bytes_list("texts")],
            num_frames=int(ints("num_frames")[0]),
            fps=float(feature["fps"].float_list.value[0]),
            sample_rate=int(ints("sample_rate")[0]),
            num_frm=num_frm,
            frame_height=int(ints("frame_height")[0]),
            frame_width=int(ints("frame_width")[0]),
            middle_frames=ints("middle_frames"),
            hr_jpeg=hr_jpeg,
            lr_frames=ints("lr_frames"),
            lr_jpeg=bytes_list("lr_jpeg"),
            neighbour_slots=ints("neighbour_slots").reshape(len(hr_jpeg), num_frm - 1),
            answer=int(ints("answer")[0]) if "answer" in feature else None,
            answer_text=optional_text("answer_text"),
            answer_type=optional_text("answer_type"),
    )
