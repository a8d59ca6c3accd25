"""`build_tfrecords` as an Apache Beam pipeline: the same records, shards, sidecars and report.

  python -m data_pipelines.beam_pipeline --videos DIR --annotations FILE --output DIR \
      [build_tfrecords flags] --runner=DirectRunner --direct_num_workers=2 \
      --direct_running_mode=multi_threading   # or multi_processing
  # any runner: --runner=DataflowRunner|FlinkRunner|SparkRunner|PortableRunner and its options
  # (see data_pipelines/README.md, "Preprocessing on Apache Beam")

The build flags are `build_tfrecords`'s (parsed by its `parse_args`; `--workers` is unused: the
runner's workers decode; `--help` lists only these); every flag that Beam's PipelineOptions
define goes to the runner, as `--name=value` or `--name value`.

The launcher reads and checks the annotations with `build_tfrecords.read_annotations`, assigns
clips to shards exactly as `build_tfrecords` does (so the two builds resume each other's
output), and writes the pending clips as a plan file (`beam_plan`), one line per video. The
pipeline (`beam_transforms.BuildShards`) reads it in parallel, encodes each video's clips with
`clip_encoder.encode_clips`, groups the results by shard and writes each shard with
`ShardWriter` (TFRecord framing, offsets sidecar with the skipped clips and warnings), records in
annotation order as `build_tfrecords` writes them. The launcher then writes `<split>_report.json`
from the sidecars with `build_report`, as `build_tfrecords` does.

Why a plain Beam pipeline rather than the TFDS builder's Beam path: TFDS would write its own
example encoding and file layout, which the training reader (`TFRecordDataSource` over
`<split>-*.tfrecord` clip records) cannot read unchanged; and `WriteToTFRecord` cannot write
the offsets/bad-input sidecar per shard nor keep `build_tfrecords`' shard assignment (resume).
A per-shard DoFn reusing `ShardWriter` writes the same files (names, framing, sidecars). Inputs and
output must be paths every worker can open: `gs://` paths (Dataflow; read and written through
`hdvila_jax.storage`, each shard and sidecar uploaded as one object) or a shared POSIX filesystem.

The launcher plans the split with `build_tfrecords.plan_build` (annotations, the open-ended QA
answer vocabulary, the build config, the shard layout) and writes the report with
`build_tfrecords.write_split_report`: only the encoding and shard writing run on Beam.
"""
from __future__ import annotations

import argparse
import sys
import time

try:
    from apache_beam import Pipeline
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions
except ImportError as missing_beam:  # the [beam] extra is not installed
    if __name__ != "__main__":
        raise
    raise SystemExit(f"error: {missing_beam}: the Beam build needs the [beam] extra: pip install -e '.[beam]'"
                     ) from None

from data_pipelines import build_tfrecords, cli_checks
from data_pipelines.beam_plan import PlanFile, write_plan
from data_pipelines.beam_transforms import COUNTER_NAMESPACE, COUNTERS, BuildShards
from hdvila_jax import cli_errors, storage


def _beam_option_actions() -> dict[str, argparse.Action]:
    """Every flag the registered PipelineOptions classes define, with its argparse action."""
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    for cls in PipelineOptions.__subclasses__():
        cls._add_argparse_args(parser)  # the hook every PipelineOptions class implements
    # argparse has no public list of a parser's actions
    return {flag: action for action in parser._actions for flag in action.option_strings}


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(build_tfrecords flags, Beam pipeline flags) of a command line."""
    actions = _beam_option_actions()
    build, beam = [], []
    i = 0
    while i < len(argv):
        name, has_value = argv[i].split("=", 1)[0], "=" in argv[i]
        action = actions.get(name)
        if action is None:
            build.append(argv[i])
            i += 1
            continue
        takes_next = (not has_value and action.nargs != 0 and i + 1 < len(argv)
                      and not argv[i + 1].startswith("-"))
        width = 2 if takes_next else 1
        beam += argv[i:i + width]
        i += width
    return build, beam


def _counters(result) -> dict[str, int]:
    """The build's committed counters (attempted where the runner commits none)."""
    found = result.metrics().query(MetricsFilter().with_namespace(COUNTER_NAMESPACE))["counters"]
    totals = dict.fromkeys(COUNTERS, 0)
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += value
    return totals


def write_plan_file(args: argparse.Namespace, plan: build_tfrecords.BuildPlan) -> PlanFile:
    """Writes the clips of the shards still to build (`plan.todo`) beside the output."""
    plan_path = storage.join(args.output, f"{args.split}_beam_plan.jsonl")
    return write_plan(plan_path, ((s, (plan.specs[i] for i in plan.ranges[s])) for s in plan.todo))


def build(args: argparse.Namespace, pipeline_options: PipelineOptions) -> tuple[dict, dict[str, int]]:
    """Runs the build described by `build_tfrecords.parse_args` arguments on a Beam runner;
    returns the report (as `build_tfrecords.build` does) and the pipeline's counters."""
    plan = build_tfrecords.plan_build(args)
    counters: dict[str, int] = {}
    if plan.todo:
        plan_file = write_plan_file(args, plan)
        pipeline = Pipeline(options=pipeline_options)
        _ = pipeline | BuildShards(plan_file, plan.options, args.output, args.split, len(plan.paths), plan.todo)
        result = pipeline.run()
        result.wait_until_finish()
        counters = _counters(result)
        storage.remove(plan_file.path)
    return build_tfrecords.write_split_report(args, plan), counters


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring); a user's mistake is one ``error:`` line."""
    build_argv, beam_argv = split_argv(sys.argv[1:] if argv is None else argv)
    args = build_tfrecords.parse_args(build_argv)
    start = time.time()
    with cli_errors.user_errors(*cli_checks.INPUT_ERRORS, debug=args.debug):
        build_tfrecords.check_inputs(args)
        _, counters = build(args, PipelineOptions(beam_argv))
    print(f"  beam counters: {counters}; {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
