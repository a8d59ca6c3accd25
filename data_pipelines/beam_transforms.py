"""Beam transforms of a clip-record build: plan chunks in, finished shards out.

  plan chunks -> Reshuffle -> plan lines (shard, first position, clips of one video) -> Reshuffle
             -> encode_clips -> (shard, (position, ClipResult)) -> GroupByKey(shard)
             -> one ShardWriter per shard, records in plan order (offsets, skipped, warnings)

Kept out of `beam_pipeline` (run as `__main__`) so that workers unpickle these by module name.
Counters: COUNTERS in namespace `hdvila_build`.
"""
from __future__ import annotations

import dataclasses
import tempfile
from typing import IO, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from data_pipelines.annotations import BadInput
from data_pipelines.beam_plan import PlanFile, parse_plan_line, read_chunk
from data_pipelines.clip_encoder import BuildOptions, ClipResult, encode_clips
from data_pipelines.shard_writer import ShardWriter, shard_path

COUNTER_NAMESPACE = "hdvila_build"
COUNTERS = ("records_written", "clips_skipped", "clip_warnings", "shards_written")


def _encode_video(line: str, options: BuildOptions) -> Iterator[tuple[int, tuple[int, ClipResult]]]:
    """(shard, (position in the shard, result)) of each clip of a plan line; bad inputs become
    skipped results."""
    shard, first, specs = parse_plan_line(line)
    for position, result in enumerate(encode_clips(options, specs), start=first):
        yield shard, (position, result)


@dataclasses.dataclass(frozen=True)
class _Spilled:
    """A result whose record waits in the spill file: bytes [offset, offset + length), or none."""

    position: int
    offset: int
    length: int | None
    skipped: BadInput | None
    warnings: tuple[BadInput, ...]


def _in_plan_order(results: Iterable[tuple[int, ClipResult] | None], spill: IO[bytes]) -> Iterator[ClipResult]:
    """The shard's results sorted by position. Records are spilled to ``spill`` (a local file) as
    they arrive, so a shard's records need not fit in memory, and read back in order."""
    index = []
    for item in results:
        if item is None:  # the marker that makes every pending shard a group
            continue
        position, result = item
        offset, length = spill.tell(), None
        if result.record is not None:
            length = spill.write(result.record)
        index.append(_Spilled(position, offset, length, result.skipped, result.warnings))
    for entry in sorted(index, key=lambda e: e.position):
        record = None
        if entry.length is not None:
            spill.seek(entry.offset)
            record = spill.read(entry.length)
        yield ClipResult(record, entry.skipped, entry.warnings)


class _WriteShard(beam.DoFn):
    """Writes one shard and its sidecar from the shard's results; yields its index.

    Records are written in plan order (the order `build_tfrecords` writes), whatever order they
    arrive in, so every attempt at a shard (a retried or duplicated bundle) writes the same
    sidecar and a shard of the same records at the same offsets. `ShardWriter` puts the sidecar,
    then the shard, in place, each whole (a rename locally, one object upload on gs://): a shard
    `shard_finished` accepts is complete and agrees with its sidecar, whichever attempts wrote them.
    """

    def __init__(self, output: str, split: str, num_shards: int):
        self._output, self._split, self._num_shards = output, split, num_shards
        self._records, self._skipped, self._warnings, self._shards = (
            Metrics.counter(COUNTER_NAMESPACE, name) for name in COUNTERS)

    def process(self, element: tuple[int, Iterable[tuple[int, ClipResult] | None]]) -> Iterator[int]:
        shard, results = element
        path = shard_path(self._output, self._split, shard, self._num_shards)
        with tempfile.TemporaryFile(prefix="hdvila_spill_") as spill, ShardWriter(path) as writer:
            for result in _in_plan_order(results, spill):
                if result.record is not None:
                    writer.write(result.record)
                    self._records.inc()
                writer.note(result.skipped, result.warnings)
                self._skipped.inc(result.skipped is not None)
                self._warnings.inc(len(result.warnings))
            writer.finish()
        self._shards.inc()
        yield shard


class BuildShards(beam.PTransform):
    """Encodes the clips of a plan file and writes shards `shards` of `num_shards`.

    Returns the PCollection of the indices of the shards written.
    """

    def __init__(self, plan: PlanFile, options: BuildOptions, output: str, split: str,
                 num_shards: int, shards: list[int]):
        super().__init__()
        self._plan, self._options = plan, options
        self._output, self._split, self._num_shards, self._shards = output, split, num_shards, shards

    def expand(self, pipeline: beam.Pipeline) -> beam.PCollection:
        results = (pipeline
                   | "PlanChunks" >> beam.Create(self._plan.chunks)
                   | "SpreadChunks" >> beam.Reshuffle()
                   | "ReadPlan" >> beam.FlatMap(read_chunk, self._plan.path)
                   | "SpreadVideos" >> beam.Reshuffle()
                   | "Encode" >> beam.FlatMap(_encode_video, self._options))
        markers = pipeline | "PendingShards" >> beam.Create([(s, None) for s in self._shards])
        return ((results, markers)
                | "Merge" >> beam.Flatten()
                | "ByShard" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteShard(self._output, self._split, self._num_shards)))
