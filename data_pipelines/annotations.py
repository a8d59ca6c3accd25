"""Readers of the annotation formats the builder accepts, each giving ClipSpecs and BadInputs.

- Clip jsonl (HD-VILA pretraining, downstream retrieval): one JSON object per line with
  `clip_id` and `text` (a string or a list of strings). A `.json` file holding a list of
  such objects is read the same way.
- HD-VILA-100M metadata: one video per line, `{"video_id": ..., "clip": [{"clip_id": ...,
  "span": [start, end]}, ...]}` with spans in seconds or "HH:MM:SS.fff", plus a clip jsonl
  transcript file giving each clip's text. Clips are cut from `<videos>/<video_id>.mp4`.

Video files are looked up under the videos directory as `<clip_id>`, `<clip_id>.mp4`,
`<clip_id up to the first dot>/<clip_id>` (the HD-VILA clip layout) or
`<basename of clip_id>.mp4`, first existing wins. Annotation files and the videos folder may be
local or ``gs://`` (a videos folder in a bucket is listed once, not probed per clip).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterator

from data_pipelines.remote_files import FileSet
from hdvila_jax import storage


class AnnotationError(ValueError):
    """An annotation file that cannot be read at all (not JSON, not UTF-8, no header row); names the file.
    (A bad line or row is a BadInput instead: skipped and reported.)"""


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """One clip to build: where its frames come from and its text(s)."""

    clip_id: str
    video_id: str
    video_path: str
    texts: tuple[str, ...]
    span: tuple[float, float] | None  # seconds [start, end) within the video, or the whole video
    video_index: int  # position among the split's valid annotations, stable for a fixed file
    num_frame: int | None = None  # frame count given by a frame-folder annotation
    answer: int | None = None  # multiple choice: index of the correct text
    answer_text: str | None = None  # open-ended QA: the answer string
    answer_type: str | None = None  # open-ended QA: its type
    line: str = ""  # FILE:LINE the clip was read from, named in the report instead of clip_id when set
    hr_frames_path: str | None = None  # frame folders: the HR folder (video_path is the LR one)


@dataclasses.dataclass(frozen=True)
class BadInput:
    """An input that was skipped (or, as a warning, changed); `item` names the clip or line."""

    item: str
    reason: str


def resolve_video_path(videos: FileSet, name: str) -> str:
    """The first existing candidate path under the videos folder for a clip or video name (else the
    `<name>.mp4` candidate)."""
    candidates = [
        storage.join(videos.folder, name),
        storage.join(videos.folder, name + ".mp4"),
        storage.join(videos.folder, name.split(".")[0], name),
        storage.join(videos.folder, os.path.basename(name) + ".mp4"),
    ]
    for path in candidates:
        if videos.isfile(path):
            return path
    return candidates[1]


def json_objects(path: str) -> Iterator[tuple[str, dict | None, str | None]]:
    """Yields (item, object, error) for each non-blank entry of a jsonl or json-list file (local or gs://)."""
    if path.endswith(".json"):
        try:
            entries = json.loads(storage.read_text(path))
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}: not valid JSON ({e}); a .json annotation file holds one list of "
                                  "objects, a .jsonl file one object per line") from e
        if not isinstance(entries, list):
            raise AnnotationError(f"{path}: a .json annotation file must hold a list of objects")
        for i, entry in enumerate(entries):
            item = f"{path}[{i}]"
            yield (item, entry, None) if isinstance(entry, dict) else (item, None, "not a JSON object")
        return
    with storage.open_file(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            item = f"{path}:{number}"
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                yield item, None, f"invalid UTF-8: {e.reason} at byte {e.start}"
                continue
            if not line:
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                yield item, None, f"malformed JSON: {e.msg}"
                continue
            yield (item, entry, None) if isinstance(entry, dict) else (item, None, "not a JSON object")


def entry_texts(entry: dict) -> tuple[str, ...] | None:
    """The stripped caption(s) of `entry["text"]` (a string or list of strings), None if any is empty."""
    text = entry.get("text")
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, list) or not texts:
        return None
    if not all(isinstance(t, str) and t.strip() for t in texts):
        return None
    return tuple(t.strip() for t in texts)


def _clip_texts(path: str) -> tuple[list[tuple[str, str, tuple[str, ...]]], list[BadInput]]:
    """(item, clip_id, texts) of every valid entry of a clip jsonl, plus the bad entries."""
    good, bad, seen = [], [], set()
    for item, entry, error in json_objects(path):
        if error is not None:
            bad.append(BadInput(item, error))
            continue
        clip_id = entry.get("clip_id")
        if not isinstance(clip_id, str) or not clip_id:
            bad.append(BadInput(item, "missing key 'clip_id'"))
            continue
        texts = entry_texts(entry)
        if texts is None:
            bad.append(BadInput(item, "missing key 'text' (a non-empty string or list of strings)"))
            continue
        if clip_id in seen:
            bad.append(BadInput(item, f"duplicate clip_id ({clip_id})"))
            continue
        seen.add(clip_id)
        good.append((item, clip_id, texts))
    return good, bad


def read_clip_annotations(path: str, videos_dir: str) -> tuple[list[ClipSpec], list[BadInput]]:
    """Reads a clip jsonl (or json list): one clip video per entry."""
    entries, bad = _clip_texts(path)
    videos = FileSet(videos_dir)
    specs = [
        ClipSpec(clip_id=clip_id, video_id=clip_id, video_path=resolve_video_path(videos, clip_id),
                 texts=texts, span=None, video_index=i)
        for i, (_, clip_id, texts) in enumerate(entries)
    ]
    return specs, bad


def parse_timestamp(value: float | int | str) -> float:
    """Seconds from a number or an "[HH:]MM:SS[.fff]" string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        seconds = 0.0
        for part in value.split(":"):
            seconds = seconds * 60 + float(part)
        return seconds
    raise ValueError(f"not a timestamp: {value!r}")


def _span(value) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"span must be [start, end], got {value!r}")
    start, end = parse_timestamp(value[0]), parse_timestamp(value[1])
    if not 0 <= start < end:
        raise ValueError(f"span must have 0 <= start < end, got {value!r}")
    return start, end


def read_hdvila100m_annotations(metadata_path: str, transcripts_path: str,
                                videos_dir: str) -> tuple[list[ClipSpec], list[BadInput]]:
    """Reads HD-VILA-100M video metadata plus a clip_id -> text transcript jsonl."""
    entries, bad = _clip_texts(transcripts_path)
    transcripts = {clip_id: texts for _, clip_id, texts in entries}
    specs: list[ClipSpec] = []
    seen = set()
    videos = FileSet(videos_dir)
    for item, entry, error in json_objects(metadata_path):
        if error is not None:
            bad.append(BadInput(item, error))
            continue
        video_id, clips = entry.get("video_id"), entry.get("clip")
        if not isinstance(video_id, str) or not video_id:
            bad.append(BadInput(item, "missing key 'video_id'"))
            continue
        if not isinstance(clips, list):
            bad.append(BadInput(item, "missing key 'clip' (a list of {clip_id, span})"))
            continue
        video_path = resolve_video_path(videos, video_id)
        for clip in clips:
            clip_id = clip.get("clip_id") if isinstance(clip, dict) else None
            if not isinstance(clip_id, str) or not clip_id:
                bad.append(BadInput(item, "clip entry without 'clip_id'"))
                continue
            try:
                span = _span(clip.get("span"))
            except ValueError as e:
                bad.append(BadInput(clip_id, f"bad span: {e}"))
                continue
            if clip_id not in transcripts:
                bad.append(BadInput(clip_id, "no transcript"))
                continue
            if clip_id in seen:
                bad.append(BadInput(clip_id, "duplicate clip_id"))
                continue
            seen.add(clip_id)
            specs.append(ClipSpec(clip_id=clip_id, video_id=video_id, video_path=video_path,
                                  texts=transcripts[clip_id], span=span, video_index=len(specs)))
    return specs, bad
