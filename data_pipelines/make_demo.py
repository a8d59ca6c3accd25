"""Synthesises the bundled demo set: MP4s of moving shapes with captions, then its TFRecords.

  python -m data_pipelines.make_demo --output demo_data [--num_train 200] [--num_val 50] \
      [--frame_size 144 224] [--fps 15] [--duration 3] [--sample_rate 2] [--workers 2]

Each video shows one coloured shape crossing the frame in one direction over a textured
background; its caption ("a red circle moves left") names colour, shape and direction, and
the direction is only visible across frames. Layout of the output directory:

  videos/{train,val}/NNNNN.mp4   annotations/{train,val}.jsonl   vocab.txt
  records/{train,val}-SSSSS-of-NNNNN.tfrecord (+ .json sidecars, *_build.json, *_report.json)

matching `get_data_config("demo", root=OUTPUT)` of hdvila_jax/data/config.py.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import time

import numpy as np

from data_pipelines import build_tfrecords
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
    with open(annotations, "w") as f:
        for i, content in enumerate(contents):
            clip_id = f"{i:05d}"
            write_moving_shape_video(os.path.join(video_dir, clip_id + ".mp4"), content, num_frames,
                                     height, width, args.fps, seed=seed + i)
            f.write(json.dumps({"clip_id": clip_id, "text": content.caption}) + "\n")
    return annotations


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    splits = {"train": demo_contents(args.num_train, rng), "val": demo_contents(args.num_val, rng)}
    annotations = {split: _write_split(args.output, split, contents, args, seed=1_000_000 * n)
                   for n, (split, contents) in enumerate(splits.items())}
    vocab_size = write_vocab(os.path.join(args.output, "vocab.txt"),
                             [c.caption for contents in splits.values() for c in contents])
    print(f"wrote {args.num_train} + {args.num_val} videos and a {vocab_size}-token vocab "
          f"in {time.time() - start:.1f}s")
    for split in splits:
        build_tfrecords.build(build_tfrecords.parse_args([
            "--videos", os.path.join(args.output, "videos", split),
            "--annotations", annotations[split],
            "--output", os.path.join(args.output, "records"),
            "--split", split,
            "--num_shards", str(4 if split == "train" else 2),
            "--workers", str(args.workers),
            "--frame_size", str(args.frame_size[0]), str(args.frame_size[1]),
            "--sample_rate", str(args.sample_rate),
            "--num_candidates", str(args.num_candidates),
            "--min_clips", str(args.min_clips),
        ]))
    print(f"demo data ready in {args.output} ({time.time() - start:.1f}s)")


if __name__ == "__main__":
    main()
