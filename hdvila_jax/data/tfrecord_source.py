"""Random access to the records of TFRecord files, as a grain data source.

TFRecord framing per record: uint64 length, uint32 masked CRC of the length, the
payload, uint32 masked CRC of the payload. The shard writer stores each file's record
offsets in a JSON sidecar (``<file>.json``, key ``offsets``); files without one are
indexed once by walking the length headers. Reads use ``os.pread`` so threads can share
one open file.
"""
from __future__ import annotations

import bisect
import json
import os
import struct
import threading
from typing import Sequence

import grain

_HEADER_BYTES = 12  # uint64 length + uint32 CRC
_FOOTER_BYTES = 4  # uint32 CRC


def sidecar_path(path: str) -> str:
    """Path of the JSON sidecar written beside a shard."""
    return path + ".json"


def scan_record_offsets(path: str) -> list[int]:
    """Offsets of every record in a TFRecord file, found by walking its length headers."""
    offsets = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        position = 0
        while position < size:
            header = f.read(_HEADER_BYTES)
            if len(header) < _HEADER_BYTES:
                raise ValueError(f"{path}: truncated record header at byte {position}")
            (length,) = struct.unpack("<Q", header[:8])
            end = position + _HEADER_BYTES + length + _FOOTER_BYTES
            if end > size:
                raise ValueError(f"{path}: record at byte {position} runs past the end of the file")
            offsets.append(position)
            position = end
            f.seek(position)
    return offsets


def record_offsets(path: str) -> list[int]:
    """Record offsets of a TFRecord file, from its sidecar if present, else by scanning."""
    sidecar = sidecar_path(path)
    if os.path.exists(sidecar):
        with open(sidecar) as f:
            meta = json.load(f)
        if "offsets" in meta:
            return list(meta["offsets"])
    return scan_record_offsets(path)


class TFRecordDataSource(grain.sources.RandomAccessDataSource):
    """The records of a list of TFRecord files, addressed by one global index.

    Records are numbered file by file in the given order, so the index is stable for a
    fixed file list.
    """

    def __init__(self, paths: Sequence[str]):
        if not paths:
            raise ValueError("TFRecordDataSource needs at least one file")
        self._paths = list(paths)
        self._offsets = [record_offsets(p) for p in self._paths]
        self._starts = []
        total = 0
        for offsets in self._offsets:
            self._starts.append(total)
            total += len(offsets)
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

    def __getitem__(self, index: int) -> bytes:
        if not 0 <= index < self._len:
            raise IndexError(f"record index {index} out of range [0, {self._len})")
        file_index = bisect.bisect_right(self._starts, index) - 1
        offset = self._offsets[file_index][index - self._starts[file_index]]
        fd = self._fd(file_index)
        (length,) = struct.unpack("<Q", os.pread(fd, 8, offset))
        data = os.pread(fd, length, offset + _HEADER_BYTES)
        if len(data) != length:
            raise ValueError(f"{self._paths[file_index]}: short read of record {index}")
        return data

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
