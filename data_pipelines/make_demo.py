"""Synthesises the bundled demo set: MP4s of moving shapes with captions, then its TFRecords.

  python -m data_pipelines.make_demo --output demo_data [--num_train 200] [--num_val 50] \
      [--frame_size 144 224] [--fps 15] [--duration 3] [--sample_rate 2] [--workers 2]

Each video shows one coloured shape crossing the frame in one direction over a textured
background; its caption ("a red circle moves left") names colour, shape and direction, and
the direction is only visible across frames. A downstream retrieval split (MSRVTT jsonl format)
describes the same train/val videos in other words ("the crimson disc heads west"), as human
captions differ from pretraining transcripts; the val videos also get a multiple-choice test
(MSRVTT-MC format) in those words: per video, the true caption among 4 seeded distractors that
each change its colour, shape or direction. The video QA demo asks three questions per video in
MSRVTT-QA format ("what colour is the shape" -> "red", "what shape is it" -> "circle", "which way
does it move" -> "left"; answer types colour/shape/direction), and one multiple-choice question
per video in TGIF Action/Transition format ("what does the shape do": the pretraining caption
among 4 seeded one-attribute distractors). Layout of the output directory:

  videos/{train,val}/NNNNN.mp4   vocab.txt
  annotations/{train,val,retrieval_train,retrieval_test,mc_test,qa_train,qa_test,qa_mc_train,qa_mc_test}.jsonl
  records/{train,val,retrieval_train,retrieval_test,mc_test,qa_train,qa_test,qa_mc_train,qa_mc_test}
      -SSSSS-of-NNNNN.tfrecord (+ .json sidecars, *_build.json, *_report.json)
  records/qa_train_ans2label.json   (the QA answer vocabulary, built from qa_train; qa_test uses it)

matching `get_data_config("demo", root=OUTPUT)` of hdvila_jax/data/config.py. OUTPUT may be
`gs://BUCKET/...`: videos are encoded to local temporary files, then uploaded.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import tempfile
import time

import numpy as np

from data_pipelines import build_tfrecords, cli_checks
from data_pipelines.downstream_annotations import MC_NUM_OPTIONS
from data_pipelines.synthetic_videos import COLOURS, DIRECTIONS, SHAPES, MovingShape, write_moving_shape_video
from data_pipelines.vocab import write_vocab
from hdvila_jax import cli_errors, storage


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
    cli_errors.add_debug_argument(parser)
    args = parser.parse_args(argv)
    cli_checks.check_at_least_one(parser, args, "num_train", "num_val", "fps", "workers")
    if not args.duration > 0:
        parser.error(f"--duration must be > 0 seconds, got {args.duration}")
    cli_checks.check_build_options(parser, frame_height=args.frame_size[0], frame_width=args.frame_size[1],
                                   sample_rate=args.sample_rate, num_candidates=args.num_candidates,
                                   min_clips=args.min_clips)
    return args


def demo_contents(count: int, rng: np.random.Generator) -> list[MovingShape]:
    """`count` videos cycling through a shuffled list of all colour/shape/direction combinations."""
    combos = [MovingShape(*c) for c in itertools.product(COLOURS, SHAPES, DIRECTIONS)]
    order = rng.permutation(len(combos))
    return [combos[order[i % len(combos)]] for i in range(count)]


def _write_split(output: str, split: str, contents: list[MovingShape], args: argparse.Namespace,
                 seed: int) -> str:
    video_dir = storage.join(output, "videos", split)
    storage.makedirs(video_dir)
    storage.makedirs(storage.join(output, "annotations"))
    annotations = storage.join(output, "annotations", f"{split}.jsonl")
    height, width = args.frame_size
    num_frames = int(round(args.fps * args.duration))
    with tempfile.TemporaryDirectory(prefix="hdvila_demo_") as scratch:
        for i, content in enumerate(contents):
            path = storage.join(video_dir, f"{i:05d}.mp4")
            local = os.path.join(scratch, f"{i:05d}.mp4") if storage.is_remote(path) else path
            write_moving_shape_video(local, content, num_frames, height, width, args.fps, seed=seed + i)
            if local != path:
                storage.upload_file(local, path)
    return _write_captions(annotations, [c.caption for c in contents])


def _write_captions(path: str, captions: list[str]) -> str:
    """A clip jsonl (the pretraining and MSRVTT retrieval format) for videos 00000, 00001, ..."""
    return _write_jsonl(path, [{"clip_id": f"{i:05d}", "text": caption} for i, caption in enumerate(captions)])


def distractors(content: MovingShape) -> list[MovingShape]:
    """Every content differing from `content` in exactly one of colour, shape or direction."""
    return ([dataclasses.replace(content, colour=c) for c in COLOURS if c != content.colour]
            + [dataclasses.replace(content, shape=s) for s in SHAPES if s != content.shape]
            + [dataclasses.replace(content, direction=d) for d in DIRECTIONS if d != content.direction])


def _choices(content: MovingShape, rng: np.random.Generator) -> tuple[list[MovingShape], int]:
    """`content` among 4 seeded distractors, and its index."""
    others = distractors(content)
    chosen = [others[j] for j in rng.choice(len(others), MC_NUM_OPTIONS - 1, replace=False)]
    answer = int(rng.integers(MC_NUM_OPTIONS))
    chosen.insert(answer, content)
    return chosen, answer


def _write_jsonl(path: str, entries: list[dict]) -> str:
    storage.write_text(path, "".join(json.dumps(entry) + "\n" for entry in entries))
    return path


def _write_mc(output: str, contents: list[MovingShape], rng: np.random.Generator) -> tuple[str, list[str]]:
    """Writes annotations/mc_test.jsonl (one 5-way caption choice per val video); returns its
    path and the option captions."""
    entries = []
    for i, content in enumerate(contents):
        chosen, answer = _choices(content, rng)
        entries.append({"qid": i, "clip_name": f"{i:05d}", "options": [c.downstream_caption for c in chosen],
                        "answer": answer})
    path = _write_jsonl(storage.join(output, "annotations", "mc_test.jsonl"), entries)
    return path, [option for entry in entries for option in entry["options"]]


# (question, answer type = the MovingShape field that answers it)
QA_QUESTIONS = (("what colour is the shape", "colour"), ("what shape is it", "shape"),
                ("which way does it move", "direction"))
QA_MC_QUESTION = "what does the shape do"


def qa_entries(contents: list[MovingShape]) -> list[dict]:
    """MSRVTT-QA lines: the three QA_QUESTIONS on each video 00000, 00001, ..."""
    return [{"video_id": f"{i:05d}", "question": question, "answer": getattr(content, answer_type),
             "answer_type": answer_type}
            for i, content in enumerate(contents) for question, answer_type in QA_QUESTIONS]


def qa_mc_entries(contents: list[MovingShape], rng: np.random.Generator) -> list[dict]:
    """TGIF Action/Transition lines: per video, its pretraining caption among 4 distractors."""
    entries = []
    for i, content in enumerate(contents):
        chosen, answer = _choices(content, rng)
        entries.append({"gif_name": f"{i:05d}", "question": QA_MC_QUESTION, "options": [c.caption for c in chosen],
                        "answer": answer})
    return entries


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring); a user's mistake is one ``error:`` line."""
    args = _parse_args(argv)
    with cli_errors.user_errors(*cli_checks.INPUT_ERRORS, debug=args.debug):
        cli_checks.make_output_folder("--output", args.output)
        make_demo(args)


def make_demo(args: argparse.Namespace) -> None:
    """Write the demo set of parsed arguments (see the module docstring)."""
    rng = np.random.default_rng(args.seed)
    start = time.time()
    splits = {"train": demo_contents(args.num_train, rng), "val": demo_contents(args.num_val, rng)}
    annotations = {split: _write_split(args.output, split, contents, args, seed=1_000_000 * n)
                   for n, (split, contents) in enumerate(splits.items())}
    for name, split in (("retrieval_train", "train"), ("retrieval_test", "val")):
        annotations[name] = _write_captions(storage.join(args.output, "annotations", f"{name}.jsonl"),
                                            [c.downstream_caption for c in splits[split]])
    annotations["mc_test"], mc_options = _write_mc(args.output, splits["val"], rng)
    qa_texts = [QA_MC_QUESTION]
    for name, split in (("train", "train"), ("test", "val")):
        qa, mc = qa_entries(splits[split]), qa_mc_entries(splits[split], rng)
        for prefix, entries in (("qa", qa), ("qa_mc", mc)):
            path = storage.join(args.output, "annotations", f"{prefix}_{name}.jsonl")
            annotations[f"{prefix}_{name}"] = _write_jsonl(path, entries)
        qa_texts += [e[k] for e in qa for k in ("question", "answer")] + [o for e in mc for o in e["options"]]
    contents = [c for split in splits.values() for c in split]
    vocab_size = write_vocab(storage.join(args.output, "vocab.txt"), [c.caption for c in contents]
                             + [c.downstream_caption for c in contents] + mc_options + qa_texts)
    print(f"wrote {args.num_train} + {args.num_val} videos and a {vocab_size}-token vocab "
          f"in {time.time() - start:.1f}s")
    records = storage.join(args.output, "records")
    builds = (("train", "train", "clips", 4, []), ("val", "val", "clips", 2, []),
              ("retrieval_train", "train", "retrieval", 2, []), ("retrieval_test", "val", "retrieval", 1, []),
              ("mc_test", "val", "msrvtt_mc", 1, []),
              ("qa_train", "train", "msrvtt_qa", 2, []),  # writes records/qa_train_ans2label.json
              ("qa_test", "val", "msrvtt_qa", 1, ["--ans2label", storage.join(records, "qa_train_ans2label.json")]),
              ("qa_mc_train", "train", "tgif_mc", 2, []), ("qa_mc_test", "val", "tgif_mc", 1, []))
    # One pool for all builds: starting worker processes (and TensorFlow in them) takes seconds.
    pool = multiprocessing.get_context("spawn").Pool(args.workers) if args.workers > 1 else None
    with pool or contextlib.nullcontext():
        for split, videos, format_, shards, extra in builds:
            report = build_tfrecords.build(build_tfrecords.parse_args([
                "--videos", storage.join(args.output, "videos", videos),
                "--annotations", annotations[split],
                "--format", format_,
                "--output", records,
                "--split", split,
                "--num_shards", str(shards),
                "--workers", str(args.workers),
                "--frame_size", str(args.frame_size[0]), str(args.frame_size[1]),
                "--sample_rate", str(args.sample_rate),
                "--num_candidates", str(args.num_candidates),
                "--min_clips", str(args.min_clips),
                *extra,
            ]), pool=pool)
            if not report["records"]:
                reason = report["skipped"][0]["reason"] if report["skipped"] else "no clips"
                raise cli_errors.UserError(
                    f"the demo's {split} records are empty: every clip was skipped ({reason}); make the videos "
                    "longer (--duration, --fps) or the clips shorter (--sample_rate, --min_clips)")
    print(f"demo data ready in {args.output} ({time.time() - start:.1f}s)")


if __name__ == "__main__":
    main()
