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

from data_pipelines import build_tfrecords, cli_checks
from data_pipelines.annotations import BadInput, ClipSpec
from data_pipelines.custom_annotations import (read_custom_mc, read_custom_qa, read_custom_retrieval, read_rows,
                                               row_span)
from hdvila_jax import cli_errors, storage
from hdvila_jax.video.decode import VideoError, VideoInfo, probe_video

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
    cli_errors.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.val_fraction < 1:
        parser.error(f"--val_fraction must be in [0, 1), got {args.val_fraction}")
    cli_checks.check_at_least_one(parser, args, "num_shards", "workers")
    cli_checks.check_build_options(parser, frame_height=args.frame_size[0], frame_width=args.frame_size[1],
                                   sample_rate=args.sample_rate, num_frm=args.num_frm, min_clips=args.min_clips,
                                   num_candidates=args.num_candidates)
    missing = cli_checks.missing_inputs({"--annotations": args.annotations}, {"--videos": args.videos})
    if missing:
        parser.error(missing[0])
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


def usable_clips(specs: list[ClipSpec]) -> tuple[list[ClipSpec], list[BadInput]]:
    """The clips whose video can be read and whose span lies within it, and a bad row for each other one
    (every row of an unreadable video is bad): checked before the split, so no split ends up with
    clips the build would drop."""
    infos: dict[str, VideoInfo | str] = {}
    kept, bad = [], []
    for spec in specs:
        if spec.video_path not in infos:
            try:
                infos[spec.video_path] = probe_video(spec.video_path)
            except VideoError as e:
                infos[spec.video_path] = str(e)
        info = infos[spec.video_path]
        rows = f" (clip {spec.clip_id}, {len(spec.texts)} rows)" if len(spec.texts) > 1 else ""
        if isinstance(info, str):
            bad.append(BadInput(spec.line, f"unreadable video {spec.video_path}: {info}{rows}"))
        elif spec.span is not None and info.fps and spec.span[1] > info.end_time + 1.0 / info.fps:
            bad.append(BadInput(spec.line, f"end ({spec.span[1]:g}) is past the video's end "
                                           f"({info.end_time:.2f} s){rows}"))
        else:
            kept.append(spec)
    return kept, bad


def write_split_rows(args: argparse.Namespace, specs: list[ClipSpec], splits: dict[str, set[str]],
                     left_out: list[BadInput]) -> dict[str, str]:
    """The rows of the usable clips ``specs`` but those ``left_out`` (bad or duplicate rows; absolute
    `video`, `source` = their FILE:LINE) into `<output>/annotations/<split>.jsonl`; returns {split: path}
    of the non-empty splits."""
    clips = {(spec.video_path, spec.span) for spec in specs}
    left_out_items = {b.item for b in left_out}
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for item, row, _ in read_rows(args.annotations):
        if row is None or item in left_out_items or not isinstance(row.get("video"), str):
            continue
        video = row["video"].strip()
        as_given = os.path.isabs(video) or storage.is_remote(video)
        video = storage.absolute(video if as_given else storage.join(args.videos, video))
        if (video, row_span(row)[0] if args.task == "retrieval" else None) not in clips:
            continue  # a bad row, or a row of a clip found unusable
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
    specs, bad, duplicates = reader(args.annotations, args.videos)
    specs, unusable = usable_clips(specs)
    bad += unusable
    for row in bad:
        print(f"skipped {row.item}: {row.reason}", file=sys.stderr)
    for row in duplicates:
        print(f"stored once {row.item}: {row.reason}", file=sys.stderr)
    if not specs:
        raise cli_errors.UserError(f"--annotations {args.annotations}: no usable rows ({len(bad)} bad)")
    splits = split_videos(specs, args.val_fraction)
    for split in SPLITS:
        if not splits[split] and (split == "train" or args.val_fraction > 0):
            raise cli_errors.UserError(f"the {split} split would be empty: {len(splits['train'] | splits['val'])} "
                                       "usable video(s); add videos" + (" or use --val_fraction 0 (no val split)"
                                                                        if split == "val" else ""))
    records = storage.join(args.output, "records")
    summary = dict(format=fmt, annotations=storage.absolute(args.annotations), bad_rows=[vars(b) for b in bad],
                   duplicate_rows=[vars(d) for d in duplicates])
    for split, path in write_split_rows(args, specs, splits, bad + duplicates).items():
        report = build_tfrecords.build(build_tfrecords.parse_args(_build_flags(args, fmt, split, path, records)))
        summary[split] = dict(videos=len(splits[split]), examples=report["records"], skipped=report["skipped"],
                              files=storage.join(storage.absolute(records), f"{split}-*.tfrecord"))
        if not report["records"]:
            raise cli_errors.UserError(f"the {split} split has 0 examples after the build ({len(report['skipped'])} "
                                       f"skipped: {storage.join(records, f'{split}_report.json')})")
    storage.write_text(storage.join(args.output, "custom_dataset.json"), json.dumps(summary, indent=1))
    dropped = sum(len(summary[s]["skipped"]) for s in SPLITS if s in summary)
    print(f"{len(bad)} bad rows skipped, {dropped} clips dropped at build time, {len(duplicates)} duplicate rows "
          "stored once; " + "; ".join(f"{s}: {summary[s]['examples']} examples of {summary[s]['videos']} videos"
                                      for s in SPLITS if s in summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring); a user's mistake is one ``error:`` line."""
    args = parse_args(argv)
    with cli_errors.user_errors(*cli_checks.INPUT_ERRORS, debug=args.debug):
        cli_checks.make_output_folder("--output", args.output)
        convert(args)


if __name__ == "__main__":
    main()
