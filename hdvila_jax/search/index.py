"""The on-disk embedding index: writing it and reading it back.

An index directory holds

    manifest.json           format version, count, embedding dim, checkpoint, records,
                            the trainer config incl. its model config (to rebuild the text tower)
    embeddings.npy          float32 [N, D], L2-normalised video embeddings
    videos.jsonl            one {"id", "caption", "path", "start", "end"} per row: the clip id, its
                            first caption ("" for video files), the video it comes from and the
                            time range in seconds it covers (null when unknown)
    thumbnails.bin          the JPEG thumbnails of all rows, concatenated
    thumbnail_offsets.npy   int64 [N + 1]: row i is thumbnails.bin[offsets[i]:offsets[i + 1]]

Embeddings and thumbnails are memory-mapped when loaded.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
VIDEOS = "videos.jsonl"
THUMBNAILS = "thumbnails.bin"
OFFSETS = "thumbnail_offsets.npy"
FILES = (MANIFEST, EMBEDDINGS, VIDEOS, THUMBNAILS, OFFSETS)


class SearchError(ValueError):
    """Bad input to indexing or search; the message names the flag or file."""


@dataclasses.dataclass(frozen=True)
class Index:
    """A loaded index: row ``i`` is video ``ids[i]`` with embedding ``embeddings[i]``."""

    path: str
    manifest: dict[str, Any]
    embeddings: np.ndarray
    ids: list[str]
    captions: list[str]
    thumbnail_bytes: np.ndarray
    thumbnail_offsets: np.ndarray
    spans: list[tuple[str, float | None, float | None]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def thumbnail(self, row: int) -> bytes:
        """The JPEG thumbnail of ``row``."""
        start, end = self.thumbnail_offsets[row], self.thumbnail_offsets[row + 1]
        return self.thumbnail_bytes[start:end].tobytes()

    def span(self, row: int) -> tuple[str, float | None, float | None]:
        """(video path, start, end seconds) of ``row``; an index without them gives (id, None, None)."""
        return self.spans[row] if self.spans else (self.ids[row], None, None)


def save_index(path: str, embeddings: np.ndarray, ids: Sequence[str], captions: Sequence[str],
               thumbnails: Sequence[bytes], manifest: dict[str, Any],
               spans: Sequence[tuple[str, float | None, float | None]] | None = None) -> dict[str, Any]:
    """Write an index directory (created if needed, its index files replaced); return the full manifest.
    ``spans``: (video path, start, end seconds) of each row (default: the id, times unknown)."""
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.ndim != 2:
        raise SearchError(f"index {path}: embeddings must be [N, D], got shape {embeddings.shape}")
    count = len(embeddings)
    if not len(ids) == len(captions) == len(thumbnails) == count:
        raise SearchError(f"index {path}: {count} embeddings but {len(ids)} ids, {len(captions)} captions, "
                          f"{len(thumbnails)} thumbnails")
    spans = list(spans) if spans is not None else [(i, None, None) for i in ids]
    if len(spans) != count:
        raise SearchError(f"index {path}: {count} embeddings but {len(spans)} time spans")
    os.makedirs(path, exist_ok=True)
    manifest = dict(manifest, format_version=FORMAT_VERSION, count=count, dim=int(embeddings.shape[1]))
    np.save(os.path.join(path, EMBEDDINGS), embeddings)
    with open(os.path.join(path, VIDEOS), "w", encoding="utf-8") as f:
        for video_id, caption, (video, start, end) in zip(ids, captions, spans):
            f.write(json.dumps({"id": video_id, "caption": caption, "path": video, "start": start, "end": end}) + "\n")
    with open(os.path.join(path, THUMBNAILS), "wb") as f:
        for jpeg in thumbnails:
            f.write(jpeg)
    np.save(os.path.join(path, OFFSETS), np.cumsum([0, *map(len, thumbnails)], dtype=np.int64))
    with open(os.path.join(path, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    return manifest


def load_index(path: str) -> Index:
    """Read an index written by :func:`save_index`; errors name ``--index`` and the missing file."""
    if not os.path.isdir(path):
        raise SearchError(f"--index={path!r} is not a directory")
    missing = [name for name in FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise SearchError(f"--index={path!r} lacks {', '.join(missing)}; "
                          "write it with `python -m hdvila_jax.search index`")
    with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SearchError(f"--index={path!r}: {MANIFEST} has format_version {manifest.get('format_version')!r}, "
                          f"expected {FORMAT_VERSION}")
    with open(os.path.join(path, VIDEOS), encoding="utf-8") as f:
        videos = [json.loads(line) for line in f]
    embeddings = np.load(os.path.join(path, EMBEDDINGS), mmap_mode="r")
    offsets = np.load(os.path.join(path, OFFSETS))
    thumbnails = np.memmap(os.path.join(path, THUMBNAILS), np.uint8, "r") if offsets[-1] else np.zeros(0, np.uint8)
    count = manifest["count"]
    if embeddings.shape != (count, manifest["dim"]) or len(videos) != count or len(offsets) != count + 1:
        raise SearchError(f"--index={path!r} is inconsistent: manifest says {count} x {manifest['dim']}, "
                          f"{EMBEDDINGS} is {embeddings.shape}, {VIDEOS} has {len(videos)} rows, "
                          f"{OFFSETS} has {len(offsets)} entries")
    if offsets[-1] != len(thumbnails):
        raise SearchError(f"--index={path!r}: {THUMBNAILS} has {len(thumbnails)} bytes, offsets say {offsets[-1]}")
    return Index(path=path, manifest=manifest, embeddings=embeddings, ids=[v["id"] for v in videos],
                 captions=[v["caption"] for v in videos], thumbnail_bytes=thumbnails, thumbnail_offsets=offsets,
                 spans=[(v.get("path", v["id"]), v.get("start"), v.get("end")) for v in videos])
