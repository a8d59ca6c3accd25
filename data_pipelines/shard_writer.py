"""Atomic TFRecord shard writing with a JSON sidecar, and the resume check; local or ``gs://``.

A shard `<split>-SSSSS-of-NNNNN.tfrecord` is written to a local temporary file; when it is complete
its sidecar `<shard>.json` (record offsets, skipped clips, warnings) is put in place, then the
shard: locally by renames, on ``gs://`` by uploading each as one object (an object appears whole
or not at all). A shard counts as finished when both files exist, so a reader never sees a
finished shard without its sidecar, and a re-run of an interrupted build only redoes unfinished
shards. TFRecord framing is TensorFlow's, always on a local file (its own GCS filesystem cannot
reach an emulator).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import uuid

import tensorflow as tf

from data_pipelines.annotations import BadInput
from hdvila_jax import storage
from hdvila_jax.data.tfrecord_source import sidecar_path

_HEADER_AND_FOOTER_BYTES = 16


def shard_path(output_dir: str, split: str, index: int, count: int) -> str:
    """The path of shard `index` of `count`."""
    return storage.join(output_dir, f"{split}-{index:05d}-of-{count:05d}.tfrecord")


def shard_ranges(num_items: int, num_shards: int) -> list[range]:
    """Contiguous, near-equal item ranges, one per shard."""
    return [range(s * num_items // num_shards, (s + 1) * num_items // num_shards)
            for s in range(num_shards)]


def shard_finished(path: str) -> bool:
    """Whether a previous run completed this shard."""
    return storage.exists(path) and storage.exists(sidecar_path(path))


def read_sidecar(path: str) -> dict:
    """The sidecar of a finished shard."""
    return json.loads(storage.read_text(sidecar_path(path)))


class ShardWriter:
    """Writes one shard atomically; use as a context manager and call `finish` at the end.

    The records go to a local temporary file: beside the shard for a local one (a rename puts it
    in place), in a private temporary folder for a ``gs://`` one (uploaded whole). The name is
    unique, so two writers of the same shard (a retried Beam bundle) do not mix their records.
    """

    def __init__(self, path: str):
        self.path = path
        if storage.is_remote(path):
            self._tmp_dir = tempfile.mkdtemp(prefix="hdvila_shard_")
            self._tmp = os.path.join(self._tmp_dir, os.path.basename(path))
        else:
            self._tmp_dir = None
            self._tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        self._writer = tf.io.TFRecordWriter(self._tmp)
        self._offsets: list[int] = []
        self._position = 0
        self._skipped: list[BadInput] = []
        self._warnings: list[BadInput] = []

    def write(self, record: bytes) -> None:
        """Appends one serialised record."""
        self._offsets.append(self._position)
        self._position += len(record) + _HEADER_AND_FOOTER_BYTES
        self._writer.write(record)

    def note(self, skipped: BadInput | None, warnings: tuple[BadInput, ...]) -> None:
        """Records a skipped clip and warnings for the sidecar."""
        if skipped is not None:
            self._skipped.append(skipped)
        self._warnings.extend(warnings)

    def finish(self) -> None:
        """Closes the shard and puts its sidecar, then the shard, in place."""
        self._writer.close()
        storage.write_text(sidecar_path(self.path), json.dumps({
            "num_records": len(self._offsets),
            "offsets": self._offsets,
            "skipped": [dataclasses.asdict(b) for b in self._skipped],
            "warnings": [dataclasses.asdict(b) for b in self._warnings],
        }))
        if self._tmp_dir is None:
            os.replace(self._tmp, self.path)
        else:
            storage.upload_file(self._tmp, self.path)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self._writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)
        if self._tmp_dir is not None:
            os.rmdir(self._tmp_dir)
