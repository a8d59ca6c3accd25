"""Building an index straight from video files: every file cut into clips of ``clip_seconds``
(every ``stride_seconds``), each clip embedded by :class:`hdvila_jax.Encoder` exactly as its
record would be.

Resumable: finished videos are written to ``<out>/work/`` a chunk of about ``CHUNK_CLIPS`` clips at a
time: its embeddings, thumbnails and thumbnail offsets, then ``videos-NNNNN.jsonl`` (one line per file
with its clips or why it was skipped), each written whole, the list last, so a chunk counts once its
list exists (nothing is appended to: ``out`` may be a ``gs://`` folder, where objects cannot be). A
rerun with the same settings reads them back and encodes only the files not yet there (or changed
since: size and modification time, or an object's generation, are compared), so a killed build
resumes and a folder that grew is indexed incrementally. Files that fail (unreadable, no video
stream, too short for one clip) are skipped, named in the summary and in ``manifest.json``. Videos,
index and work folder are local or ``gs://`` (``hdvila_jax.storage``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import numpy as np
from absl import logging
from tqdm import tqdm

from hdvila_jax import storage
from hdvila_jax.encoder import Encoder, VideoClips
from hdvila_jax.search.build import thumbnail_jpeg
from hdvila_jax.search.index import SearchError, npy_bytes, read_npy, save_index
from hdvila_jax.search.video_files import FileState, video_files

# HD-VILA-100M's average clip length (the paper: 13.4 s).
DEFAULT_CLIP_SECONDS = 13.4
WORK = "work"
CHUNK_CLIPS = 256  # clips per resumable chunk
_CHUNK_LIST = re.compile(r"^videos-(\d+)\.jsonl$")


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


class _WorkDir:
    """The finished videos of an interrupted or earlier build (the chunks whose list exists), and
    writing new chunks."""

    def __init__(self, out: str, settings: dict[str, Any]):
        self.path = storage.join(out, WORK)
        storage.makedirs(self.path)
        settings_path = storage.join(self.path, "settings.json")
        if storage.isfile(settings_path):
            previous = json.loads(storage.read_text(settings_path))
            if previous != settings:
                changed = sorted(k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k))
                raise SearchError(f"--out={out!r} holds a build with other settings ({', '.join(changed)}); "
                                  f"use another --out or delete {self.path}")
        else:
            storage.write_text(settings_path, json.dumps(settings, indent=1))
        self.done: dict[str, dict] = {}
        self.chunks = 0
        self._loaded: dict[int, tuple[np.ndarray, np.ndarray, bytes]] = {}
        lists = sorted((int(m.group(1)), name) for name in storage.listdir(self.path)
                       if (m := _CHUNK_LIST.match(name)))
        for chunk, name in lists:  # in chunk order: a file encoded again later counts as of its last chunk
            self.chunks = chunk + 1
            try:
                entries = [json.loads(line) for line in storage.read_text(storage.join(self.path, name)).splitlines()
                           if line.strip()]
                found = {entry["path"]: entry for entry in entries}
                self.done.update(found)
            except (ValueError, KeyError, TypeError) as e:  # damaged: its videos are encoded again
                logging.warning("%s is damaged (%s); its videos are encoded again", storage.join(self.path, name), e)

    def _file(self, kind: str, chunk: int, ext: str) -> str:
        return storage.join(self.path, f"{kind}-{chunk:05d}.{ext}")

    def finished(self, path: str, state: FileState) -> bool:
        """Whether ``path`` was encoded when it had ``state``."""
        entry = self.done.get(path)
        return entry is not None and entry["state"] == state

    def write_chunk(self, videos: Sequence[VideoClips], states: dict[str, FileState], embeddings: np.ndarray,
                    thumbnails: list[bytes]) -> None:
        """Store a chunk's embeddings and thumbnails, then (so a listed video always has its data) the
        list of its videos, with the ``states`` their files had when listed."""
        chunk = self.chunks
        self.chunks += 1
        storage.write_bytes(self._file("embeddings", chunk, "npy"), npy_bytes(embeddings))
        storage.write_bytes(self._file("thumbnails", chunk, "bin"), b"".join(thumbnails))
        storage.write_bytes(self._file("offsets", chunk, "npy"), npy_bytes(np.cumsum([0, *map(len, thumbnails)])))
        entries, row = [], 0
        for clips in videos:
            entries.append(dict(path=clips.source, state=states[clips.source], chunk=chunk, row=row,
                                windows=clips.windows, duration=clips.duration, error=clips.error,
                                skipped=clips.skipped))
            row += len(clips.windows)
        storage.write_text(self._file("videos", chunk, "jsonl"), "".join(json.dumps(e) + "\n" for e in entries))
        self.done.update((entry["path"], entry) for entry in entries)

    def _chunk(self, chunk: int) -> tuple[np.ndarray, np.ndarray, bytes]:
        """(embeddings, thumbnail offsets, thumbnail bytes) of a chunk, each read once."""
        if chunk not in self._loaded:
            self._loaded[chunk] = (read_npy(self._file("embeddings", chunk, "npy"), mmap=True),
                                   read_npy(self._file("offsets", chunk, "npy")),
                                   storage.read_bytes(self._file("thumbnails", chunk, "bin")))
        return self._loaded[chunk]

    def rows(self, entry: dict) -> tuple[np.ndarray, list[bytes]]:
        """The embeddings and thumbnails of a finished video."""
        start, count = entry["row"], len(entry["windows"])
        embeddings, offsets, data = self._chunk(entry["chunk"])
        thumbs = [data[offsets[i]:offsets[i + 1]] for i in range(start, start + count)]
        return np.asarray(embeddings[start:start + count]), thumbs


def _encode_pending(encoder: Encoder, work: _WorkDir, pending: list[VideoClips],
                    states: dict[str, FileState]) -> None:
    records = [record for clips in pending for record in clips.records]
    embeddings = encoder.embed_records(records)
    work.write_chunk(pending, states, embeddings.astype(np.float32), [thumbnail_jpeg(r) for r in records])
    pending.clear()


def _clip_id(path: str, root: str, start: float, end: float) -> str:
    """``<file relative to the indexed folder root (or the whole path without one)>@<start>-<end>``."""
    if not root:
        name = path
    elif storage.is_remote(root):
        name = path[len(root) + 1:]
    else:
        name = os.path.relpath(path, root)
    return f"{name}@{start:.1f}-{end:.1f}"


def build_video_index(encoder: Encoder, videos: str, out: str, clip_seconds: float | None = DEFAULT_CLIP_SECONDS,
                      stride_seconds: float | None = None, progress: bool = True,
                      manifest: dict[str, Any] | None = None) -> tuple[dict[str, Any], IndexSummary]:
    """Index every file of ``videos`` (a directory or a glob, local or gs://) into ``out`` (local or
    gs://); return the manifest and what was indexed and skipped. ``clip_seconds=None``: one clip per file."""
    states = {storage.absolute(path): state for path, state in video_files(videos).items()}
    paths = list(states)
    settings = dict(clip_seconds=clip_seconds, stride_seconds=stride_seconds, origin=encoder.origin,
                    frame_options=dataclasses.asdict(encoder.frame_options), crop_size=list(encoder.crop_hw),
                    n_clips=encoder.n_clips)
    work = _WorkDir(out, settings)
    todo = [p for p in paths if not work.finished(p, states[p])]
    pending: list[VideoClips] = []
    for clips in tqdm(encoder.read_videos(todo, clip_seconds, stride_seconds), total=len(todo), desc="indexing",
                      unit="video", disable=not progress):
        pending.append(clips)
        if sum(len(c.records) for c in pending) >= CHUNK_CLIPS:
            _encode_pending(encoder, work, pending, states)
    if pending:
        _encode_pending(encoder, work, pending, states)

    root = storage.absolute(videos) if storage.isdir(videos) else ""
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
    manifest = dict(manifest or {}, source="videos", videos=storage.absolute(videos), clip_seconds=clip_seconds,
                    stride_seconds=stride_seconds, restored_from=encoder.origin, config=encoder.config.to_dict(),
                    frame_options=settings["frame_options"],
                    summary=dict(videos=indexed, clips=len(ids), skipped=[dict(path=p, reason=r) for p, r in skipped]))
    manifest = save_index(out, np.concatenate(embeddings), ids, [""] * len(ids), thumbnails, manifest, spans)
    return manifest, summary

