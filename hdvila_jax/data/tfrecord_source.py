"""Random access to the records of TFRecord files, as a grain data source.

TFRecord framing per record: uint64 length, uint32 masked CRC-32C of the length, the
payload, uint32 masked CRC-32C of the payload. The shard writer stores each file's record
offsets in a JSON sidecar (``<file>.json``, key ``offsets``); files without one are
indexed once by walking the length headers. Files may be local or ``gs://`` objects
(``hdvila_jax.storage``): a record is read whole with one ranged read (``os.pread`` on a descriptor
that threads share, or one ranged GET), from its offset to the next record's (the index gives
both), and every read checks both CRCs. A bucket that stops answering is a ``StorageError``,
not damage: the run stops rather than skipping records it could not fetch.

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
import struct
from typing import Sequence

import google_crc32c
import grain

from hdvila_jax import storage

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


def _scan(path: str) -> tuple[list[int], int, CorruptRecord | None]:
    """Offsets of the intact-looking records of a file, walking its length headers (buffered reads),
    the file's size, and the problem that stopped the walk before the end of the file (None if it
    reached it)."""
    offsets = []
    size = storage.size(path)
    with storage.open_file(path, "rb") as f:
        position = 0
        while position < size:
            header = f.read(_HEADER_BYTES)
            if len(header) < _HEADER_BYTES:
                return offsets, size, CorruptRecord(path, position, "truncated record header", "shard")
            length = _checked_length(header)
            if length is None:
                return offsets, size, CorruptRecord(path, position, "length CRC mismatch; rest of the file unread",
                                                    "shard")
            end = position + _HEADER_BYTES + length + _FOOTER_BYTES
            if end > size:
                return offsets, size, CorruptRecord(path, position, "record runs past the end of the file", "shard")
            offsets.append(position)
            position = end
            f.seek(position)
    return offsets, size, None


def scan_record_offsets(path: str) -> list[int]:
    """Offsets of every record in a TFRecord file, found by walking its length headers."""
    offsets, _, problem = _scan(path)
    return _intact(offsets, problem)


def _index(path: str) -> tuple[list[int], int, CorruptRecord | None]:
    """Record offsets of a file (from its sidecar if present, else by scanning), its size, and a
    problem found while indexing it."""
    try:
        sidecar = sidecar_path(path)
        if storage.exists(sidecar):
            meta = json.loads(storage.read_text(sidecar))
            if "offsets" in meta:
                return list(meta["offsets"]), storage.size(path), None
        return _scan(path)
    except (OSError, ValueError) as e:  # unreadable file, or a sidecar that is not JSON
        return [], 0, CorruptRecord(path, 0, f"unreadable shard ({e})", "shard")


def record_offsets(path: str) -> list[int]:
    """Record offsets of a TFRecord file, from its sidecar if present, else by scanning."""
    offsets, _, problem = _index(path)
    return _intact(offsets, problem)


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
        self._sizes: list[int] = []
        for path in self._paths:
            offsets, size, problem = _index(path)
            self._sizes.append(size)
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
        self._readers = [storage.RangeReader(path) for path in self._paths]

    def __len__(self) -> int:
        return self._len

    def _record_end(self, file_index: int, position: int) -> int:
        """Where the record at ``position`` of file ``file_index``'s entries ends, by the index: the
        next entry's offset, or the file's size."""
        entries = self._entries[file_index]
        if position + 1 == len(entries):
            return self._sizes[file_index]
        following = entries[position + 1]
        return following.offset if isinstance(following, CorruptRecord) else following

    def _read(self, file_index: int, position: int) -> bytes | CorruptRecord:
        path, offset = self._paths[file_index], self._entries[file_index][position]
        reader, size = self._readers[file_index], self._sizes[file_index]
        try:
            span = reader.read(offset, max(self._record_end(file_index, position) - offset, _HEADER_BYTES))
            if len(span) < _HEADER_BYTES:
                return CorruptRecord(path, offset, "file ends inside the record header")
            length = _checked_length(span[:_HEADER_BYTES])
            if length is None:
                return CorruptRecord(path, offset, "length CRC mismatch")
            missing = _HEADER_BYTES + length + _FOOTER_BYTES - len(span)
            readable = size - offset - len(span)  # the header claims more than the index gave it
            if missing > 0 and readable > 0:
                span += reader.read(offset + len(span), min(missing, readable))
        except OSError as e:
            return CorruptRecord(path, offset, f"read error ({e})")
        body = span[_HEADER_BYTES:_HEADER_BYTES + length + _FOOTER_BYTES]
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
        position = index - self._starts[file_index]
        entry = self._entries[file_index][position]
        result = entry if isinstance(entry, CorruptRecord) else self._read(file_index, position)
        if isinstance(result, CorruptRecord) and self._on_corrupt == "raise":
            raise CorruptRecordError(f"record {index}: {result.describe()}")
        return result

    def __repr__(self) -> str:
        return f"TFRecordDataSource({len(self._paths)} files, {self._len} records)"
