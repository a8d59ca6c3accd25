"""Synthesises the bundled demo set: MP4s of moving shapes with captions, then its TFRecords.

  python -m data_pipelines.make_demo --output demo_data [--num_train 200] [--num_val 50] \
      [--frame_size 144 224] [--fps 15] [--duration 3] [--sample_rate 2] [--workers 2]

Each video shows one coloured shape crossing the frame in one direction over a textured
background; its caption ("a red circle moves left") names colour, shape and direction, and
the direction is only visible across frames. A downstream retrieval split (MSRVTT jsonl format)
describes the same train/val videos in other words ("the crimson disc heads west"), as human
captions differ from pretraining transcripts; the val videos also get a multiple-choice test
(MSRVTT-MC format) in those words: per video, the true caption among 4 seeded distractors that
each change its colour, shape or direction. Layout of the output directory:

  videos/{train,val}/NNNNN.mp4   vocab.txt
  annotations/{train,val,retrieval_train,retrieval_test,mc_test}.jsonl
  records/{train,val,retrieval_train,retrieval_test,mc_test}-SSSSS-of-NNNNN.tfrecord
      (+ .json sidecars, *_build.json, *_report.json)

matching `get_data_config("demo", root=OUTPUT)` of hdvila_jax/data/config.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import time

import numpy as np

from data_pipelines import build_tfrecords
from data_pipelines.downstream_annotations import MC_NUM_OPTIONS
from data_pipelines.synthetic_videos import COLOURS, DIRECTIONS, SHAPES, MovingShape, write_moving_shape_video
from data_pipelines.vocab import write_vocab


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--num_train", type=int, default=200)
    parser.add_argument("--num_val", type=int, default=50)
    parser.add_argument("--frame_size", type=int, nargs=2, default=(144, 224), metavar=("H", "W"),
                        help="video and stored frame size (even, divisible by 4)")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per video")
    parser.add_argument("--sample_rate", type=int, default=2, help="frame stride within a clip")
    parser.add_argument("--num_candidates", type=int, default=8)
    parser.add_argument("--min_clips", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def demo_contents(count: int, rng: np.random.Generator) -> list[MovingShape]:
    """`count` videos cycling through a shuffled list of all colour/shape/direction combinations."""
    combos = [MovingShape(*c) for c in itertools.product(COLOURS, SHAPES, DIRECTIONS)]
    order = rng.permutation(len(combos))
    return [combos[order[i % len(combos)]] for i in range(count)]


def _write_split(output: str, split: str, contents: list[MovingShape], args: argparse.Namespace,
                 seed: int) -> str:
    video_dir = os.path.join(output, "videos", split)
    os.makedirs(video_dir, exist_ok=True)
    os.makedirs(os.path.join(output, "annotations"), exist_ok=True)
    annotations = os.path.join(output, "annotations", f"{split}.jsonl")
    height, width = args.frame_size
    num_frames = int(round(args.fps * args.duration))
    for i, content in enumerate(contents):
        write_moving_shape_video(os.path.join(video_dir, f"{i:05d}.mp4"), content, num_frames,
                                 height, width, args.fps, seed=seed + i)
    return _write_captions(annotations, [c.caption for c in contents])


def _write_captions(path: str, captions: list[str]) -> str:
    """A clip jsonl (the pretraining and MSRVTT retrieval format) for videos 00000, 00001, ..."""
    with open(path, "w") as f:
        for i, caption in enumerate(captions):
            f.write(json.dumps({"clip_id": f"{i:05d}", "text": caption}) + "\n")
    return path


def distractors(content: MovingShape) -> list[MovingShape]:
    """Every content differing from `content` in exactly one of colour, shape or direction."""
    return ([dataclasses.replace(content, colour=c) for c in COLOURS if c != content.colour]
            + [dataclasses.replace(content, shape=s) for s in SHAPES if s != content.shape]
            + [dataclasses.replace(content, direction=d) for d in DIRECTIONS if d != content.direction])


def _write_mc(output: str, contents: list[MovingShape], rng: np.random.Generator) -> tuple[str, list[str]]:
    """Writes annotations/mc_test.jsonl (one 5-way caption choice per val video); returns its
    path and the distractor captions."""
    path, captions = os.path.join(output, "annotations", "mc_test.jsonl"), []
    with open(path, "w") as f:
        for i, content in enumerate(contents):
            others = distractors(content)
            chosen = [others[j] for j in rng.choice(len(others), MC_NUM_OPTIONS - 1, replace=False)]
            captions += [c.downstream_caption for c in chosen]
            answer = int(rng.integers(MC_NUM_OPTIONS))
            chosen.insert(answer, content)
            f.write(json.dumps({"qid": i, "clip_name": f"{i:05d}", "options": [c.downstream_caption for c in chosen],
                                "answer": answer}) + "\n")
    return path, captions


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    splits = {"train": demo_contents(args.num_train, rng), "val": demo_contents(args.num_val, rng)}
    annotations = {split: _write_split(args.output, split, contents, args, seed=1_000_000 * n)
                   for n, (split, contents) in enumerate(splits.items())}
    for name, split in (("retrieval_train", "train"), ("retrieval_test", "val")):
        annotations[name] = _write_captions(os.path.join(args.output, "annotations", f"{name}.jsonl"),
                                            [c.downstream_caption for c in splits[split]])
    annotations["mc_test"], distractor_captions = _write_mc(args.output, splits["val"], rng)
    contents = [c for split in splits.values() for c in split]
    vocab_size = write_vocab(os.path.join(args.output, "vocab.txt"), [c.caption for c in contents]
                             + [c.downstream_caption for c in contents] + distractor_captions)
    print(f"wrote {args.num_train} + {args.num_val} videos and a {vocab_size}-token vocab "
          f"in {time.time() - start:.1f}s")
    for split, videos, format_, shards in (("train", "train", "clips", 4), ("val", "val", "clips", 2),
                                           ("retrieval_train", "train", "retrieval", 2),
                                           ("retrieval_test", "val", "retrieval", 1),
                                           ("mc_test", "val", "msrvtt_mc", 1)):
        build_tfrecords.build(build_tfrecords.parse_args([
            "--videos", os.path.join(args.output, "videos", videos),
            "--annotations", annotations[split],
            "--format", format_,
            "--output", os.path.join(args.output, "records"),
            "--split", split,
            "--num_shards", str(shards),
            "--workers", str(args.workers),
            "--frame_size", str(args.frame_size[0]), str(args.frame_size[1]),
            "--sample_rate", str(args.sample_rate),
            "--num_candidates", str(args.num_candidates),
            "--min_clips", str(args.min_clips),
        ]))
    print(f"demo data ready in {args.output} ({time.time() - start:.1f}s)")


if __name__ == "__main__":
    main()
