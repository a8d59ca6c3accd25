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

The directory is local or ``gs://`` (``hdvila_jax.storage``): each file is written whole, the
manifest last. Embeddings and thumbnails of a local index are memory-mapped when loaded; those of
a bucket index are read into memory.
"""
from __future__ import annotations

import dataclasses
import io
import json
from typing import Any, Callable, Sequence

import numpy as np

from hdvila_jax import storage

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
    storage.makedirs(path)
    manifest = dict(manifest, format_version=FORMAT_VERSION, count=count, dim=int(embeddings.shape[1]))
    storage.write_bytes(storage.join(path, EMBEDDINGS), npy_bytes(embeddings))
    storage.write_text(storage.join(path, VIDEOS), "".join(
        json.dumps({"id": video_id, "caption": caption, "path": video, "start": start, "end": end}) + "\n"
        for video_id, caption, (video, start, end) in zip(ids, captions, spans)))
    storage.write_bytes(storage.join(path, THUMBNAILS), b"".join(thumbnails))
    offsets = np.cumsum([0, *map(len, thumbnails)], dtype=np.int64)
    storage.write_bytes(storage.join(path, OFFSETS), npy_bytes(offsets))
    storage.write_text(storage.join(path, MANIFEST), json.dumps(manifest, indent=2) + "\n")
    return manifest


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` in the ``.npy`` format (what ``np.save`` writes)."""
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def read_npy(path: str, mmap: bool = False) -> np.ndarray:
    """The array of the ``.npy`` file ``path``: memory-mapped read-only if ``mmap`` and local, else read
    into memory (a gs:// object always is)."""
    if mmap and not storage.is_remote(path):
        return np.load(path, mmap_mode="r")
    return np.load(io.BytesIO(storage.read_bytes(path)))


def _read_thumbnails(path: str, size: int) -> np.ndarray:
    """The bytes of the thumbnails file ``path`` as uint8: memory-mapped when local, read when remote."""
    if not size:
        return np.zeros(0, np.uint8)
    if storage.is_remote(path):
        return np.frombuffer(storage.read_bytes(path), np.uint8)
    return np.memmap(path, np.uint8, "r")


def _part(index: str, name: str, read: Callable[[str], Any]) -> Any:
    """``read(<index>/<name>)``, a file that cannot be parsed as what it claims to be raised as a
    SearchError naming it."""
    try:
        return read(storage.join(index, name))
    except (ValueError, OSError, EOFError, KeyError, TypeError) as e:
        raise SearchError(f"--index={index!r}: {name} is damaged ({type(e).__name__}: {str(e)[:200]}); "
                          "rebuild it with `python -m hdvila_jax.search index`") from None


def _video_row(line: str) -> dict:
    row = json.loads(line)
    if not isinstance(row, dict) or "id" not in row or "caption" not in row:
        raise ValueError(f"not an index row: {line[:80]!r}")
    return row


def load_index(path: str) -> Index:
    """Read an index written by :func:`save_index`; errors name ``--index`` and the missing file."""
    if not storage.isdir(path):
        raise SearchError(f"--index={path!r} is not a directory")
    missing = [name for name in FILES if not storage.isfile(storage.join(path, name))]
    if missing:
        raise SearchError(f"--index={path!r} lacks {', '.join(missing)}; "
                          "write it with `python -m hdvila_jax.search index`")
    manifest = _part(path, MANIFEST, lambda f: json.loads(storage.read_text(f)))
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise SearchError(f"--index={path!r}: {MANIFEST} has format_version {found!r}, expected {FORMAT_VERSION}")
    count, dim = _part(path, MANIFEST, lambda f: (int(manifest["count"]), int(manifest["dim"])))
    videos = _part(path, VIDEOS, lambda f: [_video_row(line) for line in storage.read_text(f).splitlines()])
    embeddings = _part(path, EMBEDDINGS, lambda f: read_npy(f, mmap=True))
    offsets = _part(path, OFFSETS, lambda f: read_npy(f))
    if embeddings.shape != (count, dim) or len(videos) != count or offsets.shape != (count + 1,):
        raise SearchError(f"--index={path!r} is inconsistent: manifest says {count} x {dim}, "
                          f"{EMBEDDINGS} is {embeddings.shape}, {VIDEOS} has {len(videos)} rows, "
                          f"{OFFSETS} has {len(offsets)} entries; rebuild it with `python -m hdvila_jax.search index`")
    thumbnails = _part(path, THUMBNAILS, lambda f: _read_thumbnails(f, int(offsets[-1])))
    if offsets[-1] != len(thumbnails):
        raise SearchError(f"--index={path!r}: {THUMBNAILS} has {len(thumbnails)} bytes, offsets say {offsets[-1]}")
    return Index(path=path, manifest=manifest, embeddings=embeddings, ids=[v["id"] for v in videos],
                 captions=[v["caption"] for v in videos], thumbnail_bytes=thumbnails, thumbnail_offsets=offsets,
                 spans=[(v.get("path", v["id"]), v.get("start"), v.get("end")) for v in videos])
