"""Atomic TFRecord shard writing with a JSON sidecar, and the resume check.

A shard `<split>-SSSSS-of-NNNNN.tfrecord` is written under a temporary name; its sidecar
`<shard>.json` (record offsets, skipped clips, warnings) is written next, then the shard
is renamed into place. A shard counts as finished when both files exist, so a re-run of an
interrupted build only redoes unfinished shards.
"""
from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from data_pipelines.annotations import BadInput
from hdvila_jax.data.tfrecord_source import sidecar_path

_HEADER_AND_FOOTER_BYTES = 16


def shard_path(output_dir: str, split: str, index: int, count: int) -> str:
    """The path of shard `index` of `count`."""
    return os.path.join(output_dir, f"{split}-{index:05d}-of-{count:05d}.tfrecord")


def shard_ranges(num_items: int, num_shards: int) -> list[range]:
    """Contiguous, near-equal item ranges, one per shard."""
    return [range(s * num_items // num_shards, (s + 1) * num_items // num_shards)
            for s in range(num_shards)]


def shard_finished(path: str) -> bool:
    """Whether a previous run completed this shard."""
    return os.path.exists(path) and os.path.exists(sidecar_path(path))


def _write_json_atomic(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def read_sidecar(path: str) -> dict:
    """The sidecar of a finished shard."""
    with open(sidecar_path(path)) as f:
        return json.load(f)


class ShardWriter:
    """Writes one shard atomically; use as a context manager and call `finish` at the end."""

    def __init__(self, path: str):
        self.path = path
        self._tmp = path + ".tmp"
        self._writer = tf.io.TFRecordWriter(self._tmp)
        self._offsets: list[int] = []
        self._position = 0
        self._skipped: list[BadInput] = []
        self._warnings: list[BadInput] = []

    def write(self, record: bytes) -> None:
        self._offsets.append(self._position)
        self._position += len(record) + _HEADER_AND_FOOTER_BYTES
        self._writer.write(record)

    def note(self, skipped: BadInput | None, warnings: tuple[BadInput, ...]) -> None:
        if skipped is not None:
            self._skipped.append(skipped)
        self._warnings.extend(warnings)

    def finish(self) -> None:
        """Closes the shard, writes its sidecar and renames it into place."""
        self._writer.close()
        _write_json_atomic(sidecar_path(self.path), {
            "num_records": len(self._offsets),
            "offsets": self._offsets,
            "skipped": [dataclasses.asdict(b) for b in self._skipped],
            "warnings": [dataclasses.asdict(b) for b in self._warnings],
        })
        os.replace(self._tmp, self.path)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self._writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)
