"""Decodes annotated videos into sharded TFRecords of HR/LR JPEG frames (one record per clip).

  python -m data_pipelines.build_tfrecords --videos DIR --annotations FILE --output DIR \
      [--split train] [--num_shards N] [--workers K] [--frame_size 720 1280] \
      [--sample_rate 12] [--num_candidates 8] [--min_clips 4] [--jpeg_quality 90]
  # HD-VILA-100M metadata (clips cut by span from full videos):
  python -m data_pipelines.build_tfrecords --format hdvila100m --annotations META.jsonl \
      --transcripts TEXTS.jsonl --videos DIR --output DIR
  # downstream (see data_pipelines/README.md for each dataset's full command):
  python -m data_pipelines.build_tfrecords --format {retrieval,msrvtt_mc} \
      --geometry {msrvtt,frames} [--middle_layout strided] ...
  # video QA (one record per question; open-ended answers need a vocabulary):
  python -m data_pipelines.build_tfrecords --format {msrvtt_qa,tgif_frameqa,tgif_mc} \
      --geometry {msrvtt,tgif} [--ans2label FILE [--unknown_answers {keep,skip}] | --min_answer_count N] ...

Writes `<split>-SSSSS-of-NNNNN.tfrecord` shards with JSON sidecars, `<split>_build.json`
(the options), `<split>_report.json` (every skipped input and warning with its reason) and, for an
open-ended QA split built without --ans2label, `<split>_ans2label.json` (its answer vocabulary).
Re-running the same command resumes: finished shards are kept. Every path (videos, annotations,
--output, --ans2label) may be local or `gs://BUCKET/...` (`hdvila_jax.storage`).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import multiprocessing
import multiprocessing.pool
import os
import sys
from typing import Iterator

from tqdm import tqdm

from data_pipelines import build_report, cli_checks
from data_pipelines import frame_folders
from data_pipelines.annotations import BadInput, ClipSpec, read_clip_annotations, read_hdvila100m_annotations
from data_pipelines.answer_vocab import build_ans2label, write_ans2label
from data_pipelines.clip_encoder import GEOMETRIES, BuildOptions, ClipResult, encode_clip, encode_clips, frame_source
from hdvila_jax.video.clip_plan import MIDDLE_LAYOUTS
from data_pipelines.custom_annotations import read_custom_retrieval
from data_pipelines.downstream_annotations import read_msrvtt_mc_annotations, read_retrieval_annotations
from data_pipelines.qa_annotations import OPEN_ENDED_FORMATS, QA_FORMATS, READERS, select_answers
from data_pipelines.shard_writer import ShardWriter, read_sidecar, shard_finished, shard_path, shard_ranges
from hdvila_jax import cli_errors, storage
from hdvila_jax.data.answers import AnswerVocabError, load_ans2label


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", required=True, help="directory of the video files")
    parser.add_argument("--annotations", required=True,
                        help="clip jsonl/json, hdvila100m metadata jsonl, retrieval, msrvtt_mc or QA jsonl, or your "
                             "own CSV/JSONL (--format custom, custom_qa, custom_mc: data_pipelines/custom_dataset.py)")
    parser.add_argument("--format", choices=("clips", "hdvila100m", "retrieval", "msrvtt_mc", "custom", *QA_FORMATS),
                        default="clips")
    parser.add_argument("--transcripts", help="clip_id -> text jsonl (required by --format hdvila100m)")
    parser.add_argument("--output", required=True, help="directory for shards and reports")
    parser.add_argument("--split", default="train", help="shard name prefix, e.g. train or val")
    parser.add_argument("--num_shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="decoding processes (1: decode in this process)")
    defaults = BuildOptions()
    parser.add_argument("--geometry", choices=GEOMETRIES, default=defaults.geometry,
                        help="resize: bicubic resize of the mp4 (pretraining); msrvtt: pipeline A (LR = "
                             "nearest resize, HR = its x4 bicubic); frames: pipeline B frame folders; tgif: "
                             "pipeline C (LR = bilinear letterbox padded with 127, HR = its x4 bicubic)")
    parser.add_argument("--middle_layout", choices=MIDDLE_LAYOUTS, default=defaults.middle_layout,
                        help="spread: candidates spread evenly; strided: the original's inference clips "
                             "c[::int(len(c)/K)][:K] (K = --num_candidates)")
    parser.add_argument("--frame_size", type=int, nargs=2, metavar=("H", "W"),
                        help="stored HR frame size (LR is a quarter); default 720 1280 for --geometry "
                             "resize, 720 1152 (LR 180x288) for msrvtt and frames, 768 768 (LR 192x192) for tgif")
    parser.add_argument("--sample_rate", type=int, default=defaults.sample_rate,
                        help="frame stride between the 7 frames of a clip (docs/fidelity.md §1)")
    parser.add_argument("--num_frm", type=int, default=defaults.num_frm)
    parser.add_argument("--min_clips", type=int, default=defaults.min_clips,
                        help="clips the short-video rule must leave room for (max of train/inference n_clips)")
    parser.add_argument("--num_candidates", type=int, default=defaults.num_candidates,
                        help="candidate middle frames stored per clip")
    parser.add_argument("--jpeg_quality", type=int, default=defaults.jpeg_quality)
    qa = parser.add_argument_group("open-ended QA (--format msrvtt_qa, tgif_frameqa)")
    qa.add_argument("--ans2label", help="answer vocabulary json (answer -> label), e.g. the original's "
                                        "train_ans2label.json; default: built from this split's answers")
    qa.add_argument("--unknown_answers", choices=("keep", "skip"),
                    help="with --ans2label, questions whose answer is not in it: keep (default; scored wrong "
                         "at evaluation, listed as warnings) or skip (for training splits)")
    qa.add_argument("--min_answer_count", type=int,
                    help="without --ans2label: answers seen fewer times in this split are dropped from the "
                         "vocabulary and their questions skipped (default 1)")
    cli_errors.add_debug_argument(parser)
    args = parser.parse_args(argv)
    if args.format == "hdvila100m" and not args.transcripts:
        parser.error("--format hdvila100m needs --transcripts")
    if args.geometry == "frames" and args.format == "hdvila100m":
        parser.error("--geometry frames reads whole frame folders; it cannot cut --format hdvila100m spans")
    if args.geometry == "frames" and args.format in QA_FORMATS:
        parser.error("--geometry frames reads frame folders named by clip_id; QA formats need video files")
    if args.num_shards < 1 or args.workers < 1:
        parser.error("--num_shards and --workers must be >= 1")
    _check_answer_flags(parser, args)
    if args.frame_size is None:
        args.frame_size = {"resize": (defaults.frame_height, defaults.frame_width),
                           "tgif": (768, 768)}.get(args.geometry, (720, 1152))
    cli_checks.check_build_options(parser, **_option_fields(args))
    return args


def _check_answer_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rejects answer-vocabulary flags that do not apply, and fills in their defaults."""
    given = [f"--{k}" for k in ("ans2label", "unknown_answers", "min_answer_count") if getattr(args, k) is not None]
    if args.format not in OPEN_ENDED_FORMATS:
        if given:
            parser.error(f"{', '.join(given)} only apply to --format {' or '.join(OPEN_ENDED_FORMATS)}")
        return
    if args.ans2label is not None:
        if args.min_answer_count is not None:
            parser.error("--min_answer_count builds a vocabulary; it cannot be combined with --ans2label")
        args.unknown_answers = args.unknown_answers or "keep"
        return
    if args.unknown_answers is not None:
        parser.error("--unknown_answers needs --ans2label (without it, answers under --min_answer_count are skipped)")
    args.min_answer_count = 1 if args.min_answer_count is None else args.min_answer_count
    if args.min_answer_count < 1:
        parser.error(f"--min_answer_count must be >= 1, got {args.min_answer_count}")


def _option_fields(args: argparse.Namespace) -> dict:
    """The ``BuildOptions`` fields of parsed arguments."""
    return dict(frame_height=args.frame_size[0], frame_width=args.frame_size[1], sample_rate=args.sample_rate,
                num_frm=args.num_frm, min_clips=args.min_clips, num_candidates=args.num_candidates,
                jpeg_quality=args.jpeg_quality, geometry=args.geometry, middle_layout=args.middle_layout)


def build_options(args: argparse.Namespace) -> BuildOptions:
    """The checked build options of parsed arguments."""
    return BuildOptions(**_option_fields(args)).validate()


def _check_build_config(path: str, config: dict) -> None:
    """Records the build config, or checks that a resumed build uses the same one."""
    if storage.exists(path):
        previous = json.loads(storage.read_text(path))
        if previous != config:
            changed = sorted(k for k in config.keys() | previous.keys() if config.get(k) != previous.get(k))
            raise cli_errors.UserError(f"{path}: existing shards were built with different settings "
                                       f"({', '.join(changed)}); use another --output or delete them")
        return
    storage.write_text(path, json.dumps(config, indent=1))


def _runs(specs: list[ClipSpec]) -> list[list[ClipSpec]]:
    """Consecutive specs on the same video (questions on it): one worker job, one decode."""
    return [list(run) for _, run in itertools.groupby(specs, key=frame_source)]


def _results(specs: list[ClipSpec], options: BuildOptions, workers: int,
             pool: multiprocessing.pool.Pool | None) -> Iterator[ClipResult]:
    """The encoded clips in order: in this process (one worker, no pool) or in the pool's processes."""
    if pool is None and workers == 1:
        yield from (encode_clip(options, spec) for spec in specs)
        return
    if pool is None:
        with multiprocessing.get_context("spawn").Pool(workers) as own_pool:
            yield from _results(specs, options, workers, own_pool)
        return
    for results in pool.imap(functools.partial(encode_clips, options), _runs(specs), chunksize=1):
        yield from results


def read_annotations(args: argparse.Namespace) -> tuple[list[ClipSpec], list[BadInput], list[BadInput]]:
    """(clips, skipped entries, warnings) of the annotation file in `--format`, with frame-folder
    paths when `--geometry frames`."""
    warnings: list[BadInput] = []
    if args.format == "clips":
        specs, skipped = read_clip_annotations(args.annotations, args.videos)
    elif args.format == "hdvila100m":
        specs, skipped = read_hdvila100m_annotations(args.annotations, args.transcripts, args.videos)
    elif args.format == "retrieval":
        specs, skipped, warnings = read_retrieval_annotations(args.annotations, args.videos)
    elif args.format == "msrvtt_mc":
        specs, skipped, warnings = read_msrvtt_mc_annotations(args.annotations, args.videos)
    elif args.format == "custom":
        specs, skipped, warnings = read_custom_retrieval(args.annotations, args.videos)
    else:
        specs, skipped, warnings = READERS[args.format](args.annotations, args.videos)
    if args.geometry == "frames":
        specs = [frame_folders.with_frame_folders(spec, args.videos) for spec in specs]
    return specs, skipped, warnings


def answer_vocabulary(args: argparse.Namespace, specs: list[ClipSpec]) -> tuple[dict[str, int], dict]:
    """The ans2label of an open-ended QA build (--ans2label, or built from the split's answers)
    and the build-config entries that record where it came from."""
    if args.ans2label is not None:
        path = storage.absolute(args.ans2label)
        try:
            ans2label = load_ans2label(path)
        except AnswerVocabError as e:
            raise cli_errors.UserError(f"--ans2label: {e}") from e
        digest = hashlib.sha256(storage.read_bytes(path)).hexdigest()
        return ans2label, {"ans2label": path, "ans2label_sha256": digest, "unknown_answers": args.unknown_answers}
    ans2label = build_ans2label((s.answer_text for s in specs), args.min_answer_count)
    return ans2label, {"ans2label": None, "min_answer_count": args.min_answer_count}


@dataclasses.dataclass
class BuildPlan:
    """What a split's build writes: the clips (after the answer-vocabulary filter), their shards, the
    shards still to write, and what the report says about the annotations."""

    options: BuildOptions
    specs: list[ClipSpec]
    annotation_errors: list[BadInput]
    annotation_warnings: list[BadInput]
    details: dict
    paths: list[str]  # every shard of the split
    ranges: list[range]  # the specs of each shard
    todo: list[int]  # shards not finished yet


def plan_build(args: argparse.Namespace) -> BuildPlan:
    """Reads the annotations, applies the answer vocabulary (open-ended QA; writes a built one),
    records or checks the build config and lays out the shards (finished ones are kept)."""
    options = build_options(args)
    specs, annotation_errors, annotation_warnings = read_annotations(args)
    ans2label, vocab_config, details = None, {}, {}
    if args.format in OPEN_ENDED_FORMATS:
        ans2label, vocab_config = answer_vocabulary(args, specs)
        reason = ("answer not in --ans2label" if args.ans2label is not None else
                  f"rare answer (seen fewer than --min_answer_count {args.min_answer_count} times)")
        specs, skipped, warnings = select_answers(specs, ans2label, args.unknown_answers == "keep", reason)
        annotation_errors, annotation_warnings = annotation_errors + skipped, annotation_warnings + warnings
        vocab_path = args.ans2label or storage.join(args.output, f"{args.split}_ans2label.json")
        details["answer_vocabulary"] = {"path": storage.absolute(vocab_path), "answers": len(ans2label)}
    storage.makedirs(args.output)
    _check_build_config(storage.join(args.output, f"{args.split}_build.json"), {
        **dataclasses.asdict(options), "format": args.format, "num_shards": args.num_shards,
        "annotations": storage.absolute(args.annotations), "num_clips": len(specs), **vocab_config})
    if ans2label is not None and args.ans2label is None:
        write_ans2label(details["answer_vocabulary"]["path"], ans2label)
    num_shards = min(args.num_shards, max(1, len(specs)))
    paths = [shard_path(args.output, args.split, s, num_shards) for s in range(num_shards)]
    todo = [s for s in range(num_shards) if not shard_finished(paths[s])]
    if len(todo) < num_shards:
        print(f"resuming: {num_shards - len(todo)} of {num_shards} shards already written")
    return BuildPlan(options, specs, annotation_errors, annotation_warnings, details, paths,
                     shard_ranges(len(specs), num_shards), todo)


def write_split_report(args: argparse.Namespace, plan: BuildPlan) -> dict:
    """`<split>_report.json` from the annotations and every shard's sidecar; prints its summary."""
    sidecars = [read_sidecar(p) for p in plan.paths]
    report_path = storage.join(args.output, f"{args.split}_report.json")
    report = build_report.write_report(
        report_path, args.split, num_annotated=len(plan.specs) + len(plan.annotation_errors),
        num_records=sum(s["num_records"] for s in sidecars),
        total_bytes=sum(storage.size(p) for p in plan.paths),
        annotation_errors=plan.annotation_errors, skipped=[b for s in sidecars for b in s["skipped"]],
        warnings=[dataclasses.asdict(w) for w in plan.annotation_warnings]
        + [w for s in sidecars for w in s["warnings"]],
        details=plan.details)
    print(build_report.summary(report, report_path))
    return report


def build(args: argparse.Namespace, pool: multiprocessing.pool.Pool | None = None) -> dict:
    """Runs the build described by parsed arguments; returns the report. `pool`: worker processes
    to reuse across builds (else `--workers` new ones are started)."""
    plan = plan_build(args)
    pending = [plan.specs[i] for s in plan.todo for i in plan.ranges[s]]
    results = _results(pending, plan.options, min(args.workers, max(1, len(pending))), pool)
    with tqdm(total=len(pending), unit="clip", desc=f"{args.split} clips", file=sys.stdout) as bar:
        for s in plan.todo:
            with ShardWriter(plan.paths[s]) as writer:
                for _ in plan.ranges[s]:
                    result = next(results)
                    if result.record is not None:
                        writer.write(result.record)
                    writer.note(result.skipped, result.warnings)
                    bar.update()
                writer.finish()
    results.close()
    return write_split_report(args, plan)


def check_inputs(args: argparse.Namespace) -> None:
    """Stop with one line naming the flag when an input is not there or the output folder cannot be made."""
    missing = cli_checks.missing_inputs({"--annotations": args.annotations, "--transcripts": args.transcripts},
                                        {"--videos": args.videos})
    if missing:
        raise cli_errors.UserError(missing[0])
    cli_checks.make_output_folder("--output", args.output)


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring); a user's mistake is one ``error:`` line."""
    args = parse_args(argv)
    with cli_errors.user_errors(*cli_checks.INPUT_ERRORS, debug=args.debug):
        check_inputs(args)
        build(args)


if __name__ == "__main__":
    main()
