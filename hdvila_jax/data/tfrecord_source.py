"""Random access to the records of TFRecord files, as a grain data source.

TFRecord framing per record: uint64 length, uint32 masked CRC-32C of the length, the
payload, uint32 masked CRC-32C of the payload. The shard writer stores each file's record
offsets in a JSON sidecar (``<file>.json``, key ``offsets``); files without one are
indexed once by walking the length headers. Reads use ``os.pread`` so threads can share
one open file, and every read checks both CRCs.

Damage (bytes flipped, a file cut short, a shard that cannot be opened or indexed) is a
:class:`CorruptRecordError` naming the shard and byte offset, or, with
``on_corrupt="mark"`` (the training reader), a :class:`CorruptRecord` in place of the
bytes, which the pipeline skips and counts. An unreadable shard, or the unreadable tail of
one, takes one index entry with ``kind="shard"``.
"""
from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import os
import struct
import threading
from typing import Sequence

import google_crc32c
import grain

_HEADER_BYTES = 12  # uint64 length + uint32 CRC
_FOOTER_BYTES = 4  # uint32 CRC
_CRC_MASK_DELTA = 0xA282EAD8
ON_CORRUPT = ("raise", "mark")


class CorruptRecordError(ValueError):
    """A record or shard that cannot be read intact."""


@dataclasses.dataclass(frozen=True)
class CorruptRecord:
    """Stands in for the bytes of a damaged record (``kind="record"``) or of an unreadable shard
    or shard tail (``kind="shard"``)."""

    path: str
    offset: int
    reason: str
    kind: str = "record"

    def describe(self) -> str:
        return f"{self.path} at byte {self.offset}: {self.reason}"


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def _checked_length(header: bytes) -> int | None:
    """The payload length of a 12-byte record header, or None when its CRC does not match."""
    if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
        return None
    return struct.unpack("<Q", header[:8])[0]


def _intact(offsets: list[int], problem: CorruptRecord | None) -> list[int]:
    """``offsets`` of a whole file, or the :class:`CorruptRecordError` of the ``problem`` that cut it short."""
    if problem is not None:
        raise CorruptRecordError(problem.describe())
    return offsets


def sidecar_path(path: str) -> str:
    """Path of the JSON sidecar written beside a shard."""
    return path + ".json"


def _scan(path: str) -> tuple[list[int], CorruptRecord | None]:
    """Offsets of the intact-looking records of a file, walking its length headers, and the
    problem that stopped the walk before the end of the file (None if it reached it)."""
    offsets = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        position = 0
        while position < size:
            header = f.read(_HEADER_BYTES)
            if len(header) < _HEADER_BYTES:
                return offsets, CorruptRecord(path, position, "truncated record header", "shard")
            length = _checked_length(header)
            if length is None:
                return offsets, CorruptRecord(path, position, "length CRC mismatch; rest of the file unread", "shard")
            end = position + _HEADER_BYTES + length + _FOOTER_BYTES
            if end > size:
                return offsets, CorruptRecord(path, position, "record runs past the end of the file", "shard")
            offsets.append(position)
            position = end
            f.seek(position)
    return offsets, None


def scan_record_offsets(path: str) -> list[int]:
    """Offsets of every record in a TFRecord file, found by walking its length headers."""
    return _intact(*_scan(path))


def _index(path: str) -> tuple[list[int], CorruptRecord | None]:
    """Record offsets of a file (from its sidecar if present, else by scanning) and a problem
    found while indexing it."""
    try:
        sidecar = sidecar_path(path)
        if os.path.exists(sidecar):
            with open(sidecar) as f:
                meta = json.load(f)
            if "offsets" in meta:
                return list(meta["offsets"]), None
        return _scan(path)
    except (OSError, ValueError) as e:  # unreadable file, or a sidecar that is not JSON
        return [], CorruptRecord(path, 0, f"unreadable shard ({e})", "shard")


def record_offsets(path: str) -> list[int]:
    """Record offsets of a TFRecord file, from its sidecar if present, else by scanning."""
    return _intact(*_index(path))


class TFRecordDataSource(grain.sources.RandomAccessDataSource):
    """The records of a list of TFRecord files, addressed by one global index.

    Records are numbered file by file in the given order (an unreadable shard or shard tail
    takes one entry where it stops), so the index is stable for a fixed file list.
    ``on_corrupt``: "raise" a :class:`CorruptRecordError`, or "mark" (return a
    :class:`CorruptRecord` for the reader to skip).
    """

    def __init__(self, paths: Sequence[str], on_corrupt: str = "raise"):
        if not paths:
            raise ValueError("TFRecordDataSource needs at least one file")
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self._paths = list(paths)
        self._on_corrupt = on_corrupt
        self._entries: list[list[int | CorruptRecord]] = []
        for path in self._paths:
            offsets, problem = _index(path)
            if problem is not None:
                if on_corrupt == "raise":
                    raise CorruptRecordError(problem.describe())
                logging.warning("skipping %s", problem.describe())
            self._entries.append(offsets + ([problem] if problem is not None else []))
        if all(not any(isinstance(e, int) for e in entries) for entries in self._entries):
            raise CorruptRecordError(f"no readable record in {len(self._paths)} files, e.g. {self._paths[0]}")
        self._starts = []
        total = 0
        for entries in self._entries:
            self._starts.append(total)
            total += len(entries)
        self._len = total
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._len

    def _fd(self, file_index: int) -> int:
        with self._lock:
            fd = self._fds.get(file_index)
            if fd is None:
                fd = os.open(self._paths[file_index], os.O_RDONLY)
                self._fds[file_index] = fd
            return fd

    def _read(self, file_index: int, offset: int) -> bytes | CorruptRecord:
        path = self._paths[file_index]
        try:
            fd = self._fd(file_index)
            header = os.pread(fd, _HEADER_BYTES, offset)
            if len(header) < _HEADER_BYTES:
                return CorruptRecord(path, offset, "file ends inside the record header")
            length = _checked_length(header)
            if length is None:
                return CorruptRecord(path, offset, "length CRC mismatch")
            body = os.pread(fd, length + _FOOTER_BYTES, offset + _HEADER_BYTES)
        except OSError as e:
            return CorruptRecord(path, offset, f"read error ({e})")
        if len(body) < length + _FOOTER_BYTES:
            return CorruptRecord(path, offset, "file ends inside the record (truncated)")
        data = body[:length]
        if struct.unpack("<I", body[length:])[0] != masked_crc32c(data):
            return CorruptRecord(path, offset, "data CRC mismatch")
        return data

    def __getitem__(self, index: int) -> bytes | CorruptRecord:
        if not 0 <= index < self._len:
            raise IndexError(f"record index {index} out of range [0, {self._len})")
        file_index = bisect.bisect_right(self._starts, index) - 1
        entry = self._entries[file_index][index - self._starts[file_index]]
        result = entry if isinstance(entry, CorruptRecord) else self._read(file_index, entry)
        if isinstance(result, CorruptRecord) and self._on_corrupt == "raise":
            raise CorruptRecordError(f"record {index}: {result.describe()}")
        return result

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_fds"], state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._fds = {}
        self._lock = threading.Lock()

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def __repr__(self) -> str:
        return f"TFRecordDataSource({len(self._paths)} files, {self._len} records)"
