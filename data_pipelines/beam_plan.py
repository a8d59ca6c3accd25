"""The work list of a Beam build: one JSON line per video (the clips read from one frame source).

The launcher reads and checks the annotations (duplicates, transcripts, `video_index` are
split-wide) and writes the clips of the shards still to build, grouped by shard and video, to
this file; the workers read it in parallel, so the job graph stays small for any number of
clips. A line is `{"shard": S, "clips": [ClipSpec fields, ...]}`.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Iterable

from data_pipelines.annotations import ClipSpec
from data_pipelines.clip_encoder import frame_source


def write_plan(path: str, shards: Iterable[tuple[int, Iterable[ClipSpec]]]) -> int:
    """Writes one line per run of consecutive clips on the same frame source within a shard
    (`shards`: (shard index, its clips)); returns the number of lines."""
    lines = 0
    with open(path, "w", encoding="utf-8") as f:
        for shard, specs in shards:
            for _, run in itertools.groupby(specs, key=frame_source):
                f.write(json.dumps({"shard": shard, "clips": [dataclasses.asdict(s) for s in run]}) + "\n")
                lines += 1
    return lines


def parse_plan_line(line: str) -> tuple[int, list[ClipSpec]]:
    """(shard, clips) of a plan line. ClipSpec sequences are tuples; JSON gives lists back."""
    entry = json.loads(line)
    specs = [ClipSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in clip.items()})
             for clip in entry["clips"]]
    return entry["shard"], specs
