"""Readers of the downstream tasks' annotation files (docs/fidelity.md §12.3 and §14).

- `retrieval` (MSRVTT train9k/test1k-A, DiDeMo/ActivityNet paragraphs, LSMDC): one JSON object
  per line with `clip_id`, `text` (a string or a list of strings, all kept as the record's
  `texts`) and, for frame folders, an optional `num_frame`. The mp4 is
  `<videos>/<last path part of clip_id>.mp4`, as in the original. Repeated `clip_id` lines are
  merged into one clip holding all their texts (a warning per merged line).
- `msrvtt_mc`: `qid`, `clip_name`, `options` (exactly 5 non-empty captions) and `answer` (the
  index of the correct option). The mp4 is `<videos>/<last path part of clip_name>.mp4`; the
  record's `clip_id` is the qid (as a string), its `video_id` the clip name's last part.

Each reader returns (specs, skipped, warnings); nothing in a bad line raises.
"""
from __future__ import annotations

import os

from data_pipelines.annotations import BadInput, ClipSpec, entry_texts, json_objects
from hdvila_jax import storage

MC_NUM_OPTIONS = 5


def _mp4_path(videos_dir: str, name: str) -> str:
    return storage.join(videos_dir, os.path.basename(name.rstrip("/")) + ".mp4")


def _num_frame(entry: dict) -> tuple[int | None, str | None]:
    value = entry.get("num_frame")
    if value is None:
        return None, None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None, f"bad num_frame ({value!r}, expected a positive integer)"
    return value, None


def read_retrieval_annotations(path: str, videos_dir: str
                               ) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """Reads a retrieval jsonl (or json list): one clip per distinct `clip_id`."""
    skipped, warnings = [], []
    clips: dict[str, dict] = {}  # clip_id -> {item, texts, num_frame}, in first-seen order
    for item, entry, error in json_objects(path):
        if error is not None:
            skipped.append(BadInput(item, error))
            continue
        clip_id = entry.get("clip_id")
        if not isinstance(clip_id, str) or not clip_id.strip():
            skipped.append(BadInput(item, "missing key 'clip_id'"))
            continue
        if "text" not in entry:
            skipped.append(BadInput(item, "missing key 'text'"))
            continue
        texts = entry_texts(entry)
        if texts is None:
            skipped.append(BadInput(item, "empty caption (text must be a non-empty string or list of them)"))
            continue
        num_frame, num_frame_error = _num_frame(entry)
        if num_frame_error is not None:
            skipped.append(BadInput(item, num_frame_error))
            continue
        if clip_id in clips:
            first = clips[clip_id]
            first["texts"] += texts
            warnings.append(BadInput(item, f"duplicate clip_id ({clip_id}): texts merged into {first['item']}"))
            continue
        clips[clip_id] = {"item": item, "texts": texts, "num_frame": num_frame}
    specs = [ClipSpec(clip_id=clip_id, video_id=clip_id, video_path=_mp4_path(videos_dir, clip_id),
                      texts=clip["texts"], span=None, video_index=i, num_frame=clip["num_frame"])
             for i, (clip_id, clip) in enumerate(clips.items())]
    return specs, skipped, warnings


def options_error(options) -> str | None:
    """Why a multiple-choice `options` value is not exactly MC_NUM_OPTIONS non-empty strings, or None."""
    if not isinstance(options, list) or len(options) != MC_NUM_OPTIONS:
        count = len(options) if isinstance(options, list) else "not a list"
        return f"wrong option count ({count}, expected {MC_NUM_OPTIONS})"
    for i, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            return f"empty option (index {i})"
    return None


def _mc_error(entry: dict) -> str | None:
    """Why an msrvtt_mc entry is unusable, or None."""
    qid, clip_name, options, answer = (entry.get(k) for k in ("qid", "clip_name", "options", "answer"))
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or qid == "":
        return "missing key 'qid'"
    if not isinstance(clip_name, str) or not clip_name.strip():
        return "missing key 'clip_name'"
    error = options_error(options)
    if error is not None:
        return error
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < MC_NUM_OPTIONS:
        return f"bad answer ({answer!r}, expected an integer in [0, {MC_NUM_OPTIONS}))"
    return None


def read_msrvtt_mc_annotations(path: str, videos_dir: str
                               ) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """Reads an MSRVTT multiple-choice jsonl: one record per question, texts = the 5 options."""
    specs, skipped, seen = [], [], set()
    for item, entry, error in json_objects(path):
        error = error or _mc_error(entry)
        if error is not None:
            skipped.append(BadInput(item, error))
            continue
        qid = str(entry["qid"])
        if qid in seen:
            skipped.append(BadInput(item, f"duplicate qid ({qid})"))
            continue
        seen.add(qid)
        clip_name = entry["clip_name"]
        specs.append(ClipSpec(clip_id=qid, video_id=os.path.basename(clip_name.rstrip("/")),
                              video_path=_mp4_path(videos_dir, clip_name),
                              texts=tuple(o.strip() for o in entry["options"]), span=None,
                              video_index=len(specs), answer=entry["answer"]))
    return specs, skipped, []
