"""The work list of a Beam build: one JSON line per video (the clips read from one frame source).

The launcher reads and checks the annotations (duplicates, transcripts, `video_index` are
split-wide) and writes the clips of the shards still to build, grouped by shard and video, to
this file (local or `gs://`, beside the output); the workers read it in chunks of lines, in
parallel, so the job graph stays small for any number of clips. A line is
`{"shard": S, "first": P, "clips": [ClipSpec fields, ...]}`, P being the position of its first
clip among the shard's clips (the writer puts the shard's records in that order).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
from typing import Iterable

from data_pipelines.annotations import ClipSpec
from data_pipelines.clip_encoder import frame_source
from hdvila_jax import storage

CHUNK_LINES = 512  # plan lines per parallel read


@dataclasses.dataclass(frozen=True)
class PlanFile:
    """A written plan: its path and the byte ranges [start, end) of its chunks of whole lines."""

    path: str
    chunks: tuple[tuple[int, int], ...]


def _write_lines(f, shards: Iterable[tuple[int, Iterable[ClipSpec]]], chunk_lines: int) -> list[tuple[int, int]]:
    """Writes the plan lines to the binary file `f`; returns the chunks' byte ranges."""
    chunks, position, lines = [], 0, 0
    for shard, specs in shards:
        first = 0
        for _, run in itertools.groupby(specs, key=frame_source):
            clips = [dataclasses.asdict(s) for s in run]
            line = (json.dumps({"shard": shard, "first": first, "clips": clips}) + "\n").encode("utf-8")
            f.write(line)
            if lines % chunk_lines == 0:
                chunks.append((position, position))
            chunks[-1] = (chunks[-1][0], position + len(line))
            position, lines, first = position + len(line), lines + 1, first + len(clips)
    return chunks


def write_plan(path: str, shards: Iterable[tuple[int, Iterable[ClipSpec]]],
               chunk_lines: int = CHUNK_LINES) -> PlanFile:
    """Writes one line per run of consecutive clips on the same frame source within a shard
    (`shards`: (shard index, its clips in order)), `chunk_lines` lines per chunk."""
    if not storage.is_remote(path):
        with open(path, "wb") as f:
            return PlanFile(path, tuple(_write_lines(f, shards, chunk_lines)))
    with tempfile.TemporaryDirectory(prefix="hdvila_plan_") as folder:
        local = os.path.join(folder, "plan.jsonl")
        with open(local, "wb") as f:
            chunks = _write_lines(f, shards, chunk_lines)
        storage.upload_file(local, path)
    return PlanFile(path, tuple(chunks))


def read_chunk(chunk: tuple[int, int], path: str) -> list[str]:
    """The plan lines of one chunk of the plan at `path`."""
    return storage.read_range(path, *chunk).decode("utf-8").splitlines()


def parse_plan_line(line: str) -> tuple[int, int, list[ClipSpec]]:
    """(shard, position of the first clip in the shard, clips) of a plan line. ClipSpec sequences
    are tuples; JSON gives lists back."""
    entry = json.loads(line)
    specs = [ClipSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in clip.items()})
             for clip in entry["clips"]]
    return entry["shard"], entry["first"], specs
