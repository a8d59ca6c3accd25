"""Your own videos and captions (or questions) -> train/val clip records for fine-tuning.

  python -m data_pipelines.custom_dataset --annotations my_captions.csv --videos my_videos/ \
      --output data/custom [--val_fraction 0.1] [--frame_size 720 1280] [--sample_rate 12] [--workers 2]
  python -m data_pipelines.custom_dataset --task qa --annotations my_questions.jsonl --videos my_videos/ \
      --output data/custom_qa

Retrieval rows are `video, caption[, start, end]`; QA rows `video, question, answer[, choices]` (with
choices: multiple choice). CSV (header row) or JSONL; the schema is in data_pipelines/custom_annotations.py
and docs/own_videos.md. Bad rows (missing file, empty caption, end <= start, ...) are printed with their
line number and skipped. Videos are split into train and val (`--val_fraction` of the videos, chosen by
a hash of the path, so a video's clips never straddle the split and reruns split alike); each split is
then built by data_pipelines.build_tfrecords (`--format custom`, `custom_qa` or `custom_mc`) into
`<output>/records/{train,val}-*.tfrecord` with its `*_report.json`; open-ended QA also writes
`records/train_ans2label.json` (the val split uses it). Fine-tune with `configs/retrieval.py:custom`
(`configs/qa.py:custom`, `custom_mc`), whose default record paths are these under data/custom
(data/custom_qa). Annotations, videos and output may be local or `gs://BUCKET/...`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from data_pipelines import build_tfrecords
from data_pipelines.annotations import BadInput, ClipSpec
from data_pipelines.custom_annotations import read_custom_mc, read_custom_qa, read_custom_retrieval, read_rows
from hdvila_jax import storage

SPLITS = ("train", "val")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotations", required=True, help="CSV (with a header row) or JSONL of your rows")
    parser.add_argument("--videos", help="folder the `video` paths are relative to (default: the annotations' folder)")
    parser.add_argument("--output", required=True, help="dataset folder: annotations/, records/")
    parser.add_argument("--task", choices=("retrieval", "qa"), default="retrieval")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of the videos held out for val")
    parser.add_argument("--num_shards", type=int, default=4)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--frame_size", type=int, nargs=2, metavar=("H", "W"), default=(720, 1280),
                        help="stored HR frame size (the crop of the config must fit in it)")
    parser.add_argument("--sample_rate", type=int, default=12)
    parser.add_argument("--num_frm", type=int, default=7)
    parser.add_argument("--num_candidates", type=int, default=8)
    parser.add_argument("--min_clips", type=int, default=4)
    args = parser.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        parser.error(f"--val_fraction must be in [0, 1), got {args.val_fraction}")
    if not storage.isfile(args.annotations):
        parser.error(f"--annotations {args.annotations}: no such file")
    args.videos = args.videos or storage.dirname(storage.absolute(args.annotations))
    return args


def is_multiple_choice(path: str) -> bool:
    """Whether the QA file's rows carry choices (its first row with a non-empty `choices` decides)."""
    return any(row is not None and row.get("choices") not in (None, "", []) for _, row, _ in read_rows(path))


def split_of(video: str, val_fraction: float) -> str:
    """"val" for about `val_fraction` of the videos, by a hash of the path's file name."""
    digest = hashlib.sha256(os.path.basename(video).encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2 ** 64 < val_fraction else "train"


def split_videos(specs: list[ClipSpec], val_fraction: float) -> dict[str, set[str]]:
    """{split: videos}; with two or more videos and val_fraction > 0 both splits get at least one."""
    videos = sorted({spec.video_path for spec in specs})
    splits = {name: {v for v in videos if split_of(v, val_fraction) == name} for name in SPLITS}
    if len(videos) >= 2 and val_fraction > 0:
        for empty, full in (("val", "train"), ("train", "val")):
            if not splits[empty]:
                moved = sorted(splits[full])[-1]
                splits[full].remove(moved)
                splits[empty].add(moved)
    return splits


def write_split_rows(args: argparse.Namespace, bad: list[BadInput], splits: dict[str, set[str]]) -> dict[str, str]:
    """The good rows of the annotations (absolute `video`, `source` = their FILE:LINE) into
    `<output>/annotations/<split>.jsonl`; returns {split: path} of the non-empty splits."""
    bad_items = {b.item for b in bad}
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for item, row, _ in read_rows(args.annotations):
        if row is None or item in bad_items:
            continue
        video = row["video"].strip()
        as_given = os.path.isabs(video) or storage.is_remote(video)
        video = storage.absolute(video if as_given else storage.join(args.videos, video))
        split = next(name for name in SPLITS if video in splits[name])
        rows[split].append(dict(row, video=video, source=item))
    folder = storage.join(args.output, "annotations")
    storage.makedirs(folder)
    paths = {}
    for split, entries in rows.items():
        if entries:
            paths[split] = storage.join(folder, f"{split}.jsonl")
            storage.write_text(paths[split], "".join(json.dumps(entry) + "\n" for entry in entries))
    return paths


def _build_flags(args: argparse.Namespace, fmt: str, split: str, annotations: str, records: str) -> list[str]:
    flags = ["--format", fmt, "--annotations", annotations, "--videos", args.videos, "--output", records,
             "--split", split, "--num_shards", str(args.num_shards), "--workers", str(args.workers),
             "--frame_size", *map(str, args.frame_size), "--sample_rate", str(args.sample_rate),
             "--num_frm", str(args.num_frm), "--num_candidates", str(args.num_candidates),
             "--min_clips", str(args.min_clips)]
    if fmt == "custom_qa" and split == "val":
        flags += ["--ans2label", storage.join(records, "train_ans2label.json"), "--unknown_answers", "keep"]
    return flags


def convert(args: argparse.Namespace) -> dict:
    """Read, check and split the rows, build both splits' records; returns the summary it writes."""
    if args.task == "retrieval":
        fmt, reader = "custom", read_custom_retrieval
    elif is_multiple_choice(args.annotations):
        fmt, reader = "custom_mc", read_custom_mc
    else:
        fmt, reader = "custom_qa", read_custom_qa
    specs, bad, _ = reader(args.annotations, args.videos)
    for row in bad:
        print(f"skipped {row.item}: {row.reason}", file=sys.stderr)
    if not specs:
        raise SystemExit(f"--annotations {args.annotations}: no usable rows ({len(bad)} bad)")
    splits = split_videos(specs, args.val_fraction)
    records = storage.join(args.output, "records")
    summary = dict(format=fmt, annotations=storage.absolute(args.annotations), bad_rows=[vars(b) for b in bad])
    for split, path in write_split_rows(args, bad, splits).items():
        report = build_tfrecords.build(build_tfrecords.parse_args(_build_flags(args, fmt, split, path, records)))
        summary[split] = dict(videos=len(splits[split]), examples=report["records"], skipped=report["skipped"],
                              files=storage.join(storage.absolute(records), f"{split}-*.tfrecord"))
    storage.write_text(storage.join(args.output, "custom_dataset.json"), json.dumps(summary, indent=1))
    print(f"{len(bad)} bad rows skipped; " + "; ".join(
        f"{s}: {summary[s]['examples']} examples of {summary[s]['videos']} videos" for s in SPLITS if s in summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    convert(parse_args(argv))


if __name__ == "__main__":
    main()
