"""Readers of the video QA annotation files (docs/fidelity.md §13.3, §13.4), and the answer-vocabulary
filter of the open-ended ones.

- `msrvtt_qa`: `video_id`, `question`, `answer` (a string), `answer_type`; video
  `<videos>/<video_id>.mp4`.
- `tgif_frameqa`: `gif_name`, `question`, `answer` (a string), `answer_type`; video
  `<videos>/<gif_name>.mp4`, else `<videos>/<gif_name>.gif` (first existing).
- `tgif_mc` (TGIF Action and Transition): `gif_name`, `question`, `options` (exactly 5 non-empty
  strings), `answer` (the index of the correct option); videos as for FrameQA. The record's texts
  are "question option_i" (one space, no [SEP]; docs/fidelity.md §11.6).

Every question is its own record, whose `clip_id` (as a string) and `video_index` are the
question id: the 0-based line number in the file, as in the original. Open-ended records carry
`answer_text` (stripped) and `answer_type` (a missing type is stored as "unknown", with a warning).
- `custom_qa`, `custom_mc`: your own questions (CSV or JSONL), see data_pipelines/custom_annotations.py.

Each reader returns (specs, skipped, warnings); nothing in a bad line raises.
"""
from __future__ import annotations

from typing import Callable

from data_pipelines.annotations import BadInput, ClipSpec, json_objects
from data_pipelines.custom_annotations import read_custom_mc, read_custom_qa
from data_pipelines.downstream_annotations import MC_NUM_OPTIONS, options_error
from data_pipelines.remote_files import FileSet
from hdvila_jax import storage

UNKNOWN_ANSWER_TYPE = "unknown"
OPEN_ENDED_FORMATS = ("msrvtt_qa", "tgif_frameqa", "custom_qa")
QA_FORMATS = (*OPEN_ENDED_FORMATS, "tgif_mc", "custom_mc")


def _question_id(item: str) -> int:
    """The 0-based line (or list position) of a `json_objects` item, "FILE:LINE" (1-based) or "FILE[i]"."""
    if item.endswith("]"):
        return int(item.rsplit("[", 1)[1][:-1])
    return int(item.rsplit(":", 1)[1]) - 1


def _mp4_path(videos: FileSet, name: str) -> str:
    return storage.join(videos.folder, name + ".mp4")


def _tgif_path(videos: FileSet, name: str) -> str:
    """`<name>.mp4`, else `<name>.gif` when only that exists (the mp4 path if neither does)."""
    gif = storage.join(videos.folder, name + ".gif")
    mp4 = _mp4_path(videos, name)
    return gif if not videos.isfile(mp4) and videos.isfile(gif) else mp4


def _string_key(entry: dict, key: str) -> str | None:
    """Why `entry[key]` is not a non-empty string, or None."""
    if key not in entry:
        return f"missing key '{key}'"
    value = entry[key]
    if not isinstance(value, str):
        return f"bad {key} ({value!r}, expected a string)"
    if not value.strip():
        return f"empty {key}"
    return None


def _answer_type(entry: dict, line: str, warnings: list[BadInput]) -> str:
    value = entry.get("answer_type")
    if isinstance(value, str) and value.strip():
        return value.strip()
    warnings.append(BadInput(line, f"missing key 'answer_type': stored as '{UNKNOWN_ANSWER_TYPE}'"))
    return UNKNOWN_ANSWER_TYPE


def _read_open_ended(path: str, videos_dir: str, video_key: str, video_path: Callable[[FileSet, str], str]
                     ) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    specs, skipped, warnings = [], [], []
    videos = FileSet(videos_dir)
    for item, entry, error in json_objects(path):
        if error is None:
            error = _string_key(entry, video_key) or _string_key(entry, "question") or _string_key(entry, "answer")
        if error is not None:
            skipped.append(BadInput(item, error))
            continue
        qid, name = _question_id(item), entry[video_key].strip()
        specs.append(ClipSpec(clip_id=str(qid), video_id=name, video_path=video_path(videos, name),
                                  texts=(entry["question"].strip(),), span=None, video_index=qid,
                                  answer_text=entry["answer"].strip(),
                                  answer_type=_answer_type(entry, item, warnings), line=item))
    return specs, skipped, warnings


def read_msrvtt_qa_annotations(path: str, videos_dir: str
                               ) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """Reads an MSRVTT-QA jsonl: one open-ended question per line."""
    return _read_open_ended(path, videos_dir, "video_id", _mp4_path)


def read_tgif_frameqa_annotations(path: str, videos_dir: str
                                  ) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """Reads a TGIF FrameQA jsonl: one open-ended question per line."""
    return _read_open_ended(path, videos_dir, "gif_name", _tgif_path)


def _mc_error(entry: dict) -> str | None:
    """Why a tgif_mc entry is unusable, or None."""
    error = _string_key(entry, "gif_name") or _string_key(entry, "question")
    if error is not None:
        return error
    if "options" not in entry:
        return "missing key 'options'"
    error = options_error(entry["options"])
    if error is not None:
        return error
    if "answer" not in entry:
        return "missing key 'answer'"
    answer = entry["answer"]
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < MC_NUM_OPTIONS:
        return f"bad answer ({answer!r}, expected an integer in [0, {MC_NUM_OPTIONS}))"
    return None


def read_tgif_mc_annotations(path: str, videos_dir: str
                             ) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """Reads a TGIF Action/Transition jsonl: texts = "question option_i" for the 5 options."""
    specs, skipped = [], []
    videos = FileSet(videos_dir)
    for item, entry, error in json_objects(path):
        error = error or _mc_error(entry)
        if error is not None:
            skipped.append(BadInput(item, error))
            continue
        qid, name, question = _question_id(item), entry["gif_name"].strip(), entry["question"].strip()
        specs.append(ClipSpec(clip_id=str(qid), video_id=name, video_path=_tgif_path(videos, name),
                                  texts=tuple(f"{question} {o.strip()}" for o in entry["options"]), span=None,
                                  video_index=qid, answer=entry["answer"], line=item))
    return specs, skipped, []


READERS = {"msrvtt_qa": read_msrvtt_qa_annotations, "tgif_frameqa": read_tgif_frameqa_annotations,
           "tgif_mc": read_tgif_mc_annotations, "custom_qa": read_custom_qa, "custom_mc": read_custom_mc}


def select_answers(specs: list[ClipSpec], ans2label: dict[str, int], keep_unknown: bool, reason: str
                   ) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """(kept specs, skipped, warnings): a question whose answer is not in `ans2label` is skipped
    with "<reason>: '<answer>'", or kept with that warning when `keep_unknown` (it will be scored
    wrong at evaluation)."""
    kept, skipped, warnings = [], [], []
    for spec in specs:
        if spec.answer_text in ans2label:
            kept.append(spec)
            continue
        message = f"{reason}: {spec.answer_text!r}"
        if keep_unknown:
            kept.append(spec)
            warnings.append(BadInput(spec.line, f"{message}, kept (scored wrong at evaluation)"))
        else:
            skipped.append(BadInput(spec.line, message))
    return kept, skipped, warnings
