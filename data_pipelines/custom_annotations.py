"""Readers of your own annotations (CSV with a header row, or JSONL / a JSON list of objects):

- retrieval (`--format custom`): `video, caption[, start, end][, split]` - one caption per row; rows of
  the same video and time range become one clip holding all their captions. `start`/`end` are seconds
  (or "[HH:]MM:SS[.fff]"), both or neither (the whole file).
- QA (`--format custom_qa`, open-ended): `video, question, answer[, split]`.
- QA (`--format custom_mc`, multiple choice): `video, question, answer, choices[, split]` with
  `choices` a JSON list (in a CSV: the choices joined by "|") and `answer` the correct choice's text
  or 0-based index; every row needs the same number of choices (at least 2).

`video` is a path, absolute (or ``gs://``) or relative to the videos folder (local or ``gs://``).
Each reader returns (specs, skipped, warnings); a bad row (missing file, empty caption/question/answer,
end <= start, ...) is skipped and named "FILE:LINE" (the file's own line number; a row may carry
`source` to name its origin).
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Iterator

from data_pipelines.annotations import AnnotationError, BadInput, ClipSpec, json_objects, parse_timestamp
from data_pipelines.remote_files import FileSet
from hdvila_jax import storage

CHOICE_SEPARATOR = "|"


def read_rows(path: str, required: tuple[str, ...] = ()) -> Iterator[tuple[str, dict | None, str | None]]:
    """("FILE:LINE", row, error) of every non-blank row of a CSV (header row first) or JSONL / JSON file.
    A file that is not UTF-8, not a CSV, or a CSV whose header row lacks a ``required`` column is an
    AnnotationError naming it (and the header)."""
    if not path.lower().endswith(".csv"):
        yield from json_objects(path)
        return
    try:
        yield from _csv_rows(path, required)
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{path}: not UTF-8 text ({e.reason}); save the CSV as UTF-8") from e
    except csv.Error as e:
        raise AnnotationError(f"{path}: not a readable CSV ({e})") from e


def _csv_rows(path: str, required: tuple[str, ...]) -> Iterator[tuple[str, dict | None, str | None]]:
    with storage.open_file(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise AnnotationError(f"{path}: empty CSV (the first row must name the columns: {', '.join(required)})")
        columns = [name.strip() for name in reader.fieldnames if name]
        lacking = [name for name in required if name not in columns]
        if lacking:
            raise AnnotationError(f"{path}: the header row ({', '.join(columns)}) lacks the column(s) "
                                  f"{', '.join(lacking)}; the first row must name the columns: {', '.join(required)} "
                                  "and the optional ones")
        for row in reader:
            item = f"{path}:{reader.line_num}"
            if None in row:
                yield item, None, f"{len(row[None])} more fields than the header's {len(reader.fieldnames)}"
            elif all(v is None or not str(v).strip() for v in row.values()):
                continue
            else:
                yield item, {k.strip(): v for k, v in row.items() if k}, None


def _text(row: dict, key: str) -> tuple[str | None, str | None]:
    """(the stripped non-empty string ``row[key]``, None) or (None, why not)."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"missing or empty {key}"
    if not isinstance(value, str):
        return None, f"bad {key} ({value!r}, expected a string)"
    return value.strip(), None


def _video(row: dict, videos: FileSet) -> tuple[str | None, str | None]:
    name, error = _text(row, "video")
    if error:
        return None, error
    path = name if os.path.isabs(name) or storage.is_remote(name) else storage.join(videos.folder, name)
    if not videos.isfile(path):
        return None, f"missing video file {path}"
    return storage.absolute(path), None


def row_span(row: dict) -> tuple[tuple[float, float] | None, str | None]:
    """(the row's ``start, end`` in seconds or None for the whole file, None) or (None, why not)."""
    start, end = (row.get(k) for k in ("start", "end"))
    start = None if start is None or str(start).strip() == "" else start
    end = None if end is None or str(end).strip() == "" else end
    if start is None and end is None:
        return None, None
    if start is None or end is None:
        return None, "start and end must be given together"
    try:
        span = parse_timestamp(start), parse_timestamp(end)
    except ValueError:
        return None, f"bad start/end ({start!r}, {end!r}): expected seconds or [HH:]MM:SS"
    if span[0] < 0 or span[1] <= span[0]:
        return None, f"end ({span[1]:g}) <= start ({span[0]:g})" if span[0] >= 0 else "negative start"
    return span, None


def _item(item: str, row: dict) -> str:
    return row["source"] if isinstance(row.get("source"), str) and row["source"] else item


def _name(path: str, videos_dir: str) -> str:
    """``path`` relative to the videos folder, or whole when outside it."""
    if storage.is_remote(path) or storage.is_remote(videos_dir):
        folder = storage.absolute(videos_dir) + "/"
        return path[len(folder):] if path.startswith(folder) else path
    relative = os.path.relpath(path, os.path.abspath(videos_dir))
    return path if relative.startswith("..") else relative


def read_custom_retrieval(path: str, videos_dir: str) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """Retrieval clips of a `video, caption[, start, end]` file; one clip per (video, start, end)."""
    skipped, warnings = [], []
    clips: dict[tuple, dict] = {}
    videos = FileSet(videos_dir)
    seen: dict[tuple, str] = {}  # (video, span, caption) -> its first row
    for item, row, error in read_rows(path, ("video", "caption")):
        if row is not None:
            item = _item(item, row)
            video, error = _video(row, videos)
            caption, caption_error = _text(row, "caption")
            span, span_error = row_span(row)
            error = error or caption_error or span_error
        if error is not None:
            skipped.append(BadInput(item, error))
            continue
        if (video, span, caption) in seen:  # stored once
            warnings.append(BadInput(item, f"duplicate of {seen[video, span, caption]}"))
            continue
        seen[video, span, caption] = item
        key = (video, span)
        if key in clips:
            clips[key]["texts"].append(caption)
            continue
        clips[key] = {"item": item, "texts": [caption]}
    specs = []
    for (video, span), clip in clips.items():
        name = _name(video, videos_dir)
        clip_id = name if span is None else f"{name}@{span[0]:g}-{span[1]:g}"
        specs.append(ClipSpec(clip_id=clip_id, video_id=name, video_path=video, texts=tuple(clip["texts"]),
                              span=span, video_index=len(specs), line=clip["item"]))
    return specs, skipped, warnings


def _choices(value) -> list[str] | None:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return None
        else:
            value = value.split(CHOICE_SEPARATOR)
    if not isinstance(value, list) or not all(isinstance(c, str) and c.strip() for c in value):
        return None
    return [c.strip() for c in value]


def _qa_rows(path: str, videos_dir: str, multiple_choice: bool) -> Iterator[tuple[str, dict | None, str | None]]:
    """(item, {video, question, answer[, choices, index]}, error) of each row."""
    count = None
    videos = FileSet(videos_dir)
    for item, row, error in read_rows(path, ("video", "question", "answer")):
        if error is not None:
            yield item, None, error
            continue
        item = _item(item, row)
        video, error = _video(row, videos)
        question, question_error = _text(row, "question")
        answer = row.get("answer")
        answer = answer.strip() if isinstance(answer, str) else answer
        error = error or question_error or (None if answer not in (None, "") else "missing or empty answer")
        if error is None and not multiple_choice and not isinstance(answer, str):
            error = f"bad answer ({answer!r}, expected a string)"
        if error is not None or not multiple_choice:
            yield item, None if error else dict(video=video, question=question, answer=answer), error
            continue
        choices = _choices(row.get("choices"))
        if choices is None or len(choices) < 2:
            yield item, None, "choices must be a list of at least 2 non-empty strings"
            continue
        count = len(choices) if count is None else count
        if len(choices) != count:
            yield item, None, f"{len(choices)} choices, the file's first question has {count}"
            continue
        index = choices.index(answer) if answer in choices else None
        if index is None and (isinstance(answer, int) or (isinstance(answer, str) and answer.isdigit())):
            index = int(answer) if 0 <= int(answer) < count else None
        if index is None:
            yield item, None, f"answer {answer!r} is neither one of the choices nor an index in [0, {count})"
            continue
        yield item, dict(video=video, question=question, choices=choices, index=index), None


def read_custom_qa(path: str, videos_dir: str, multiple_choice: bool = False
                   ) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """One record per question of a `video, question, answer[, choices]` file."""
    specs, skipped = [], []
    for item, row, error in _qa_rows(path, videos_dir, multiple_choice):
        if error is not None:
            skipped.append(BadInput(item, error))
            continue
        name = _name(row["video"], videos_dir)
        common = dict(clip_id=str(len(specs)), video_id=name, video_path=row["video"], span=None,
                      video_index=len(specs), line=item)
        if multiple_choice:
            specs.append(ClipSpec(texts=tuple(f"{row['question']} {c}" for c in row["choices"]),
                                  answer=row["index"], **common))
        else:
            specs.append(ClipSpec(texts=(row["question"],), answer_text=row["answer"], answer_type="custom", **common))
    return specs, skipped, []


def read_custom_mc(path: str, videos_dir: str) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """Multiple-choice questions: texts are "question choice_i", answer the correct index."""
    return read_custom_qa(path, videos_dir, multiple_choice=True)
