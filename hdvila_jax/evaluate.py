"""Zero-shot or fine-tuned text-video retrieval of one checkpoint on every set whose records exist.

    python -m hdvila_jax.evaluate --checkpoint=runs/stage1/checkpoints \
        [--config=configs/retrieval.py] [--sets=msrvtt,didemo,lsmdc,actnet] [--data_root=data] \
        [--workdir=runs/eval] [--json=eval.json] [--batch_size=N]

Each set is the variant of that name of the --config file (loaded by path): its test split, frames per
clip, clips per video and text length (DiDeMo and ActivityNet records hold paragraphs: paragraph-to-
video, as the original). The model is the checkpoint's own (its run's config.json; converted weights
without one: the variant's model) and is evaluated by the trainer's eval-only mode
(``eval_only.evaluate_checkpoint``, metrics also in ``<workdir>/<set>/metrics.jsonl``). Sets whose
records are missing are listed as missing. Prints one markdown table (t2v and v2t R@1/5/10, MedR,
MnR) and writes all metrics as JSON. The checkpoint, --data_root, --workdir and --json may be local or
``gs://``.
"""
from __future__ import annotations

import json
import sys

import ml_collections
from absl import app, flags

from hdvila_jax import cli_errors, config_files, eval_only, multihost, storage
from hdvila_jax.encoder import find_run_config
from hdvila_jax.tasks.base import TrainConfigError

SETS = ("msrvtt", "didemo", "lsmdc", "actnet")
MIN_MEANINGFUL_VIDEOS = 100  # below this a set's recalls move in steps of more than one point
COLUMNS = ("R1", "R5", "R10", "MedR", "MeanR")
HEADERS = ("R@1", "R@5", "R@10", "MedR", "MnR")

def set_config(config_file: str, name: str, checkpoint: str, data_root: str | None = None,
               run_config: ml_collections.ConfigDict | None = None,
               batch_size: int | None = None) -> ml_collections.ConfigDict:
    """The eval config of set ``name``: the variant's data with the checkpoint's model (``run_config``)."""
    config = config_files.load_config(f"{config_file}:{name}")
    if data_root:
        for key in ("val_files", "vocab_file"):
            value = config.data[key]
            if value.startswith("data/"):
                config.data[key] = storage.join(data_root, value[len("data/"):])
    if run_config is not None:
        num_frames = config.model.num_frames  # the set's frames per clip (its records)
        config.model = ml_collections.ConfigDict(run_config.model.to_dict())
        config.model.num_frames = num_frames
        config.data.vocab_file = run_config.data.vocab_file
        config.data.max_txt_len = min(config.data.max_txt_len, int(config.model.max_position_embeddings))
        config.mesh = ml_collections.ConfigDict(run_config.mesh.to_dict())
    config.data.mc_files = ""
    config.demo_data_dir = ""
    config.init.restore = checkpoint
    config.init.demo_config = ""
    if batch_size:
        config.eval_batch_size = batch_size
    return config


def evaluate_sets(config_file: str, names: list[str], checkpoint: str, workdir: str,
                  data_root: str | None = None, batch_size: int | None = None) -> dict[str, dict]:
    """{set: retrieval metrics, or {"missing": the records pattern}} for each set."""
    found = find_run_config(checkpoint)
    run_config = config_files.load_config(found) if found else None
    results = {}
    for name in names:
        config = set_config(config_file, name, checkpoint, data_root, run_config, batch_size)
        if not storage.glob(config.data.val_files):
            results[name] = {"missing": config.data.val_files}
            continue
        results[name] = eval_only.evaluate_checkpoint(config, storage.join(workdir, name))
        warning = small_set_warning(name, int(results[name].get("num_videos", 0)))
        if warning:
            print(warning, file=sys.stderr)
    return results


def small_set_warning(name: str, videos: int) -> str:
    """A warning for a set of fewer than :data:`MIN_MEANINGFUL_VIDEOS` videos ("" otherwise): its
    recalls move in steps of 100/videos points, chance R@1 is 100/videos."""
    if videos >= MIN_MEANINGFUL_VIDEOS:
        return ""
    step = 100.0 / max(videos, 1)
    return (f"warning: set {name} has only {videos} videos: its recalls move in steps of {step:.3g} points and "
            f"chance R@1 is {step:.3g}%; compare numbers only on sets of {MIN_MEANINGFUL_VIDEOS} or more")


def markdown_table(results: dict[str, dict]) -> str:
    """One row per set: t2v then v2t R@1/5/10, MedR, MnR (missing sets say so)."""
    head = ["set", "videos", *(f"t2v {h}" for h in HEADERS), *(f"v2t {h}" for h in HEADERS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, metrics in results.items():
        if "missing" in metrics:
            lines.append(f"| {name} | missing: no records at `{metrics['missing']}` |" + " |" * (len(head) - 2))
            continue
        cells = [name, str(int(metrics["num_videos"]))]
        cells += [f"{metrics[f'{d}_{c}']:.1f}" for d in ("t2v", "v2t") for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def define_flags() -> None:
    """The command line (defined only when run as a program, so that importing this module defines no flags)."""
    flags.DEFINE_string("config", "configs/retrieval.py", "Retrieval config file; each set is its variant.")
    flags.DEFINE_list("sets", list(SETS), "Sets (variants of --config) to evaluate.")
    flags.DEFINE_string("checkpoint", None, "A run's checkpoints dir, a step dir or converted weights "
                        "(local or gs://).")
    flags.DEFINE_string("data_root", None, "Folder replacing the leading 'data/' of the sets' record "
                        "paths (local or gs://).")
    flags.DEFINE_string("workdir", "runs/eval", "Each set's metrics go to <workdir>/<set>/metrics.jsonl "
                        "(local or gs://).")
    flags.DEFINE_string("json", None, "Also write {set: metrics or {missing: pattern}} to this file "
                        "(local or gs://).")
    flags.DEFINE_integer("batch_size", None, "Global eval batch (default each variant's).")
    cli_errors.define_debug_flag()


def main(argv: list[str]) -> None:
    """Evaluate --checkpoint on --sets (see the module docstring); a user's mistake is one ``error:`` line."""
    args = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not args.checkpoint:
        raise app.UsageError("--checkpoint is required")
    multihost.initialize_from_flags()
    with cli_errors.user_errors(config_files.ConfigFileError, TrainConfigError, ValueError, storage.StorageError):
        results = evaluate_sets(args.config, args.sets, args.checkpoint, args.workdir, args.data_root,
                                args.batch_size)
        print(markdown_table(results))
        missing = [f"{name} ({result['missing']})" for name, result in results.items() if "missing" in result]
        if len(missing) == len(results):
            raise cli_errors.UserError(f"no set could be evaluated: no records match {'; '.join(missing)} "
                                       "(--data_root names the folder that replaces their leading 'data/')")
        if args.json:
            storage.write_text(args.json, json.dumps(dict(checkpoint=storage.absolute(args.checkpoint),
                                                          sets=results), indent=1))
            print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    app.run(main)
