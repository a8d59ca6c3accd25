"""Skipping damaged records in the training stream, counted in the examples that follow.

The training reader's source returns a :class:`~hdvila_jax.data.tfrecord_source.CorruptRecord`
for a damaged record or an unreadable shard; the decoder passes it through, and
:class:`SkipCorrupt` (after the worker processes, before batching) drops it, logs its shard and
offset, and adds it to the counts carried by the next example (``SKIPPED_RECORDS``,
``SKIPPED_SHARDS``: int32 scalars, so a batch holds how many of each were skipped to make it).
The iterator's state is its parent's, so resuming stays exact.
"""
from __future__ import annotations

import logging
from typing import Any

import grain
import numpy as np

from hdvila_jax.data.tfrecord_source import CorruptRecord

SKIPPED_RECORDS = "skipped_records"
SKIPPED_SHARDS = "skipped_shards"
SKIP_COUNT_KEYS = (SKIPPED_RECORDS, SKIPPED_SHARDS)


class _SkipCorruptIterator(grain.DatasetIterator):

    def __next__(self) -> dict[str, Any]:
        counts = {"record": 0, "shard": 0}
        while True:
            element = next(self._parent)
            if not isinstance(element, CorruptRecord):
                element[SKIPPED_RECORDS] = np.int32(counts["record"])
                element[SKIPPED_SHARDS] = np.int32(counts["shard"])
                return element
            counts[element.kind] += 1
            logging.warning("skipping a damaged %s: %s", element.kind, element.describe())

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)


class SkipCorrupt(grain.IterDataset):
    """Its parent's examples without the :class:`CorruptRecord` elements, each example counting
    the damaged records and shards skipped just before it."""

    def __iter__(self) -> grain.DatasetIterator:
        return _SkipCorruptIterator(self._parent.__iter__())


def pop_skip_counts(batch: dict[str, np.ndarray]) -> np.ndarray:
    """Removes the skip counts from a training batch (absent: 0); returns them summed, int64
    ``[records, shards]`` in ``SKIP_COUNT_KEYS`` order."""
    return np.array([int(np.sum(batch.pop(key, 0))) for key in SKIP_COUNT_KEYS], np.int64)
