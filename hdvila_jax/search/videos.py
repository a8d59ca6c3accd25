"""Building an index straight from video files: every file cut into clips of ``clip_seconds``
(every ``stride_seconds``), each clip embedded by :class:`hdvila_jax.Encoder` exactly as its
record would be.

Resumable: finished videos are written to ``<out>/work/`` as they are done (``videos.jsonl``, one
line per file with its clips or why it was skipped, plus the chunk of embeddings and thumbnails it
went into). A rerun with the same settings reads them back and encodes only the files not yet
there (or changed since: size and modification time are compared), so a killed build resumes
and a folder that grew is indexed incrementally. Files that fail (unreadable, no video stream,
too short for one clip) are skipped, named in the summary and in ``manifest.json``.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from hdvila_jax.encoder import Encoder, VideoClips
from hdvila_jax.search.build import thumbnail_jpeg
from hdvila_jax.search.index import SearchError, save_index

# HD-VILA-100M's average clip length (the paper: 13.4 s).
DEFAULT_CLIP_SECONDS = 13.4
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv",
                    ".3gp", ".gif", ".ogv")
WORK = "work"
CHUNK_CLIPS = 256  # clips per resumable chunk


@dataclasses.dataclass(frozen=True)
class IndexSummary:
    """What an index build over video files did."""

    videos: int  # files that gave at least one clip
    clips: int
    skipped: list[tuple[str, str]]  # (file, why)
    reused: int = 0  # files read back from an interrupted or earlier build

    def line(self) -> str:
        """``N videos, M clips indexed, K skipped`` plus each skipped file and why."""
        text = f"{self.videos} videos, {self.clips} clips indexed, {len(self.skipped)} skipped"
        return text + "".join(f"\n  skipped {path}: {why}" for path, why in self.skipped)


def list_videos(pattern: str) -> list[str]:
    """The files of ``pattern``: every file with a video extension below a directory (recursively), or
    the files a glob matches (any name). Sorted; errors name ``--videos``."""
    if os.path.isdir(pattern):
        found = [os.path.join(root, name) for root, _, names in os.walk(pattern) for name in names
                 if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")]
        if not found:
            raise SearchError(f"--videos={pattern!r}: no files ending in {', '.join(VIDEO_EXTENSIONS)} below it")
        return sorted(found)
    found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not found:
        raise SearchError(f"--videos={pattern!r} matches no files")
    return found


def _file_state(path: str) -> list[int]:
    stat = os.stat(path)
    return [stat.st_size, stat.st_mtime_ns]


class _WorkDir:
    """The finished videos of an interrupted or earlier build, and appending new ones."""

    def __init__(self, out: str, settings: dict[str, Any]):
        self.path = os.path.join(out, WORK)
        os.makedirs(self.path, exist_ok=True)
        settings_path = os.path.join(self.path, "settings.json")
        if os.path.isfile(settings_path):
            with open(settings_path, encoding="utf-8") as f:
                previous = json.load(f)
            if previous != settings:
                changed = sorted(k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k))
                raise SearchError(f"--out={out!r} holds a build with other settings ({', '.join(changed)}); "
                                  f"use another --out or delete {self.path}")
        else:
            with open(settings_path, "w", encoding="utf-8") as f:
                json.dump(settings, f, indent=1)
        self.done: dict[str, dict] = {}
        self.chunks = 0
        lines = os.path.join(self.path, "videos.jsonl")
        if os.path.isfile(lines):
            with open(lines, encoding="utf-8") as f:
                for line in f:
                    if line.strip():
                        entry = json.loads(line)
                        self.done[entry["path"]] = entry
                        self.chunks = max(self.chunks, entry["chunk"] + 1)

    def finished(self, path: str) -> bool:
        entry = self.done.get(path)
        return entry is not None and entry["state"] == _file_state(path)

    def write_chunk(self, videos: Sequence[VideoClips], embeddings: np.ndarray, thumbnails: list[bytes]) -> None:
        """Store a chunk's embeddings and thumbnails, then (so a line always has its data) its videos."""
        chunk = self.chunks
        self.chunks += 1
        np.save(os.path.join(self.path, f"embeddings-{chunk:05d}.npy"), embeddings)
        with open(os.path.join(self.path, f"thumbnails-{chunk:05d}.bin"), "wb") as f:
            f.write(b"".join(thumbnails))
        np.save(os.path.join(self.path, f"offsets-{chunk:05d}.npy"), np.cumsum([0, *map(len, thumbnails)]))
        row = 0
        with open(os.path.join(self.path, "videos.jsonl"), "a", encoding="utf-8") as f:
            for clips in videos:
                entry = dict(path=clips.source, state=_file_state(clips.source), chunk=chunk, row=row,
                             windows=clips.windows, duration=clips.duration, error=clips.error,
                             skipped=clips.skipped)
                row += len(clips.windows)
                self.done[clips.source] = entry
                f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def rows(self, entry: dict) -> tuple[np.ndarray, list[bytes]]:
        """The embeddings and thumbnails of a finished video."""
        chunk, start, count = entry["chunk"], entry["row"], len(entry["windows"])
        embeddings = np.load(os.path.join(self.path, f"embeddings-{chunk:05d}.npy"), mmap_mode="r")
        offsets = np.load(os.path.join(self.path, f"offsets-{chunk:05d}.npy"))
        with open(os.path.join(self.path, f"thumbnails-{chunk:05d}.bin"), "rb") as f:
            data = f.read()
        thumbs = [data[offsets[i]:offsets[i + 1]] for i in range(start, start + count)]
        return np.asarray(embeddings[start:start + count]), thumbs


def _encode_pending(encoder: Encoder, work: _WorkDir, pending: list[VideoClips]) -> None:
    records = [record for clips in pending for record in clips.records]
    embeddings = encoder.embed_records(records)
    work.write_chunk(pending, embeddings.astype(np.float32), [thumbnail_jpeg(r) for r in records])
    pending.clear()


def _clip_id(path: str, root: str, start: float, end: float) -> str:
    return f"{os.path.relpath(path, root) if root else path}@{start:.1f}-{end:.1f}"


def build_video_index(encoder: Encoder, videos: str, out: str, clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
                      stride_seconds: float | None = None, progress: bool = True,
                      manifest: dict[str, Any] | None = None) -> tuple[dict[str, Any], IndexSummary]:
    """Index every file of ``videos`` (a directory or a glob) into ``out``; return the manifest and
    what was indexed and skipped. ``clip_seconds=None``: one clip per file."""
    paths = [os.path.abspath(p) for p in list_videos(videos)]
    settings = dict(clip_seconds=clip_seconds, stride_seconds=stride_seconds, origin=encoder.origin,
                    frame_options=dataclasses.asdict(encoder.frame_options), crop_size=list(encoder.crop_hw),
                    n_clips=encoder.n_clips)
    work = _WorkDir(out, settings)
    todo = [p for p in paths if not work.finished(p)]
    pending: list[VideoClips] = []
    for clips in tqdm(encoder.read_videos(todo, clip_seconds, stride_seconds), total=len(todo), desc="indexing",
                      unit="video", disable=not progress):
        pending.append(clips)
        if sum(len(c.records) for c in pending) >= CHUNK_CLIPS:
            _encode_pending(encoder, work, pending)
    if pending:
        _encode_pending(encoder, work, pending)

    root = os.path.abspath(videos) if os.path.isdir(videos) else ""
    embeddings, ids, thumbnails, spans, skipped, indexed = [], [], [], [], [], 0
    for path in paths:
        entry = work.done[path]
        if entry["error"] is not None:
            skipped.append((path, entry["error"]))
            continue
        rows, thumbs = work.rows(entry)
        embeddings.append(rows)
        thumbnails += thumbs
        indexed += 1
        for start, end in entry["windows"]:
            ids.append(_clip_id(path, root, start, end))
            spans.append((path, start, end))
    if not ids:
        raise SearchError(f"--videos={videos!r}: none of the {len(paths)} files gave a clip:\n"
                          + IndexSummary(0, 0, skipped).line())
    summary = IndexSummary(indexed, len(ids), skipped, reused=len(paths) - len(todo))
    manifest = dict(manifest or {}, source="videos", videos=os.path.abspath(videos), clip_seconds=clip_seconds,
                    stride_seconds=stride_seconds, restored_from=encoder.origin, config=encoder.config.to_dict(),
                    frame_options=settings["frame_options"],
                    summary=dict(videos=indexed, clips=len(ids), skipped=[dict(path=p, reason=r) for p, r in skipped]))
    manifest = save_index(out, np.concatenate(embeddings), ids, [""] * len(ids), thumbnails, manifest, spans)
    return manifest, summary

