"""Beam transforms of a clip-record build: plan lines in, finished shards out.

  plan lines -> (shard, clips of one video) -> Reshuffle -> encode_clips -> (shard, ClipResult)
             -> GroupByKey(shard) -> one ShardWriter per shard (records, offsets, skipped, warnings)

Kept out of `beam_pipeline` (run as `__main__`) so that workers unpickle these by module name.
Counters: COUNTERS in namespace `hdvila_build`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from data_pipelines.beam_plan import parse_plan_line
from data_pipelines.clip_encoder import BuildOptions, ClipResult, encode_clips
from data_pipelines.shard_writer import ShardWriter, shard_path
from hdvila_jax.data.tfrecord_source import sidecar_path

COUNTER_NAMESPACE = "hdvila_build"
COUNTERS = ("records_written", "clips_skipped", "clip_warnings", "shards_written")


def _encode_video(line: str, options: BuildOptions) -> Iterator[tuple[int, ClipResult]]:
    """(shard, result) of each clip of a plan line; bad inputs become skipped results."""
    shard, specs = parse_plan_line(line)
    for result in encode_clips(options, specs):
        yield shard, result


class _WriteShard(beam.DoFn):
    """Writes one shard and its sidecar from the shard's results, in arrival order; yields its index.

    The shard is built in a private temporary folder beside the output and moved into place
    sidecar first, so a retried or duplicated bundle never leaves a half-written shard that
    `shard_finished` would accept.
    """

    def __init__(self, output: str, split: str, num_shards: int):
        self._output, self._split, self._num_shards = output, split, num_shards
        self._records, self._skipped, self._warnings, self._shards = (
            Metrics.counter(COUNTER_NAMESPACE, name) for name in COUNTERS)

    def process(self, element: tuple[int, Iterable[ClipResult | None]]) -> Iterator[int]:
        shard, results = element
        path = shard_path(self._output, self._split, shard, self._num_shards)
        work_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=self._output)
        try:
            work_path = os.path.join(work_dir, os.path.basename(path))
            with ShardWriter(work_path) as writer:
                for result in results:
                    if result is None:  # the marker that makes every pending shard a group
                        continue
                    if result.record is not None:
                        writer.write(result.record)
                        self._records.inc()
                    writer.note(result.skipped, result.warnings)
                    self._skipped.inc(result.skipped is not None)
                    self._warnings.inc(len(result.warnings))
                writer.finish()
            os.replace(sidecar_path(work_path), sidecar_path(path))
            os.replace(work_path, path)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        self._shards.inc()
        yield shard


class BuildShards(beam.PTransform):
    """Encodes the clips of a plan file and writes shards `shards` of `num_shards`.

    Returns the PCollection of the indices of the shards written.
    """

    def __init__(self, plan_path: str, options: BuildOptions, output: str, split: str,
                 num_shards: int, shards: list[int]):
        super().__init__()
        self._plan_path, self._options = plan_path, options
        self._output, self._split, self._num_shards, self._shards = output, split, num_shards, shards

    def expand(self, pipeline: beam.Pipeline) -> beam.PCollection:
        results = (pipeline
                   | "ReadPlan" >> beam.io.ReadFromText(self._plan_path)
                   | "SpreadVideos" >> beam.Reshuffle()
                   | "Encode" >> beam.FlatMap(_encode_video, self._options))
        markers = pipeline | "PendingShards" >> beam.Create([(s, None) for s in self._shards])
        return ((results, markers)
                | "Merge" >> beam.Flatten()
                | "ByShard" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteShard(self._output, self._split, self._num_shards)))
