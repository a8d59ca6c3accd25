"""The Beam build (DirectRunner) against build_tfrecords: same clips, same report, readable
shards, resume across the two builders."""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest

pytest.importorskip("apache_beam", reason="needs the [beam] extra; .ci/run adds it after the suite and runs these tests")

import apache_beam as beam  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from data_pipelines import beam_pipeline, build_tfrecords  # noqa: E402
from data_pipelines.beam_transforms import BuildShards  # noqa: E402
from data_pipelines.synthetic_videos import MovingShape  # noqa: E402
from data_pipelines.vocab import write_vocab  # noqa: E402
from hdvila_jax.data.config import get_data_config  # noqa: E402
from hdvila_jax.data.pipeline import make_train_iterator  # noqa: E402
from hdvila_jax.data.records import parse_clip_record  # noqa: E402
from hdvila_jax.data.tfrecord_source import TFRecordDataSource, scan_record_offsets  # noqa: E402
from tests import data_helpers as h  # noqa: E402

DIRECTIONS = ["left", "right", "up", "down", "left"]
BEAM_FLAGS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"]
NUM_SHARDS = 3


def _args(videos: str, annotations: str, output: str, *extra: str):
    return build_tfrecords.parse_args([
        "--videos", videos, "--annotations", annotations, "--output", output, "--num_shards", str(NUM_SHARDS),
        "--workers", "1", "--frame_size", *map(str, h.FRAME_HW), "--sample_rate", "2", *extra])


def _beam_build(args) -> tuple[dict, dict]:
    return beam_pipeline.build(args, PipelineOptions(BEAM_FLAGS))


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("beam")
    videos = root / "videos"
    videos.mkdir()
    names = [f"v{i}" for i in range(len(DIRECTIONS))]
    for i, (name, direction) in enumerate(zip(names, DIRECTIONS)):
        h.write_video(str(videos / f"{name}.mp4"), seed=i, content=MovingShape("green", "circle", direction))
    h.write_video(str(videos / "tiny.mp4"), hw=(16, 24), seed=9)  # kept, with a warning
    (videos / "garbage.mp4").write_bytes(b"not a video" * 500)
    entries = [{"clip_id": n, "text": f"a green circle moves {d}"} for n, d in zip(names, DIRECTIONS)]
    entries += [{"clip_id": "tiny", "text": ["tiny one", "tiny two"]}, {"clip_id": "garbage", "text": "junk"},
                {"clip_id": "missing", "text": "no file"}, b'{"clip_id": "broken", ']
    annotations = root / "ann.jsonl"
    h.write_jsonl(str(annotations), entries)
    reference = build_tfrecords.build(_args(str(videos), str(annotations), str(root / "reference")))
    records = root / "beam" / "records"
    report, counters = _beam_build(_args(str(videos), str(annotations), str(records)))
    return dict(root=root, videos=str(videos), annotations=str(annotations), reference=reference,
                report=report, counters=counters, records=records)


def _shard_records(output) -> dict[str, dict[str, dict]]:
    """{shard name: {clip_id: every field of its record}}. Records are compared parsed: protobuf
    writes the features map in an order that varies between processes."""
    shards = {}
    for path in sorted(glob.glob(os.path.join(str(output), "train-*.tfrecord"))):
        source = TFRecordDataSource([path])
        records = (parse_clip_record(source[i]) for i in range(len(source)))
        shards[os.path.basename(path)] = {
            r.clip_id: {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in dataclasses.asdict(r).items()}
            for r in records}
    return shards


def test_same_records_in_the_same_shards(builds):
    reference = _shard_records(builds["root"] / "reference")
    beam = _shard_records(builds["records"])
    assert list(beam) == [f"train-0000{s}-of-0000{NUM_SHARDS}.tfrecord" for s in range(NUM_SHARDS)]
    assert beam == reference  # same clips in the same shards: texts, frame indices, JPEG bytes...
    parsed = {clip_id: r for shard in beam.values() for clip_id, r in shard.items()}
    assert set(parsed) == {"v0", "v1", "v2", "v3", "v4", "tiny"}
    assert parsed["tiny"]["texts"] == ["tiny one", "tiny two"]
    assert sorted(r["video_index"] for r in parsed.values()) == list(range(6))


def test_same_report_and_counters(builds):
    report, reference = builds["report"], builds["reference"]
    ann = builds["annotations"]

    def key(entries):
        return sorted((e["item"], e["reason"]) for e in entries)

    assert key(report["skipped"]) == key(reference["skipped"])
    assert {s["item"] for s in report["skipped"]} == {"garbage", "missing", f"{ann}:9"}
    assert key(report["warnings"]) == key(reference["warnings"]) == [("tiny", "resized up: 16x24 -> 64x96")]
    same = {k: v for k, v in report.items() if k not in ("skipped", "warnings")}
    assert same == {k: v for k, v in reference.items() if k not in ("skipped", "warnings")}
    assert json.loads((builds["records"] / "train_report.json").read_text()) == report
    assert builds["counters"] == {"records_written": 6, "clips_skipped": 2, "clip_warnings": 1,
                                  "shards_written": NUM_SHARDS}
    assert not glob.glob(str(builds["records"] / ".*")) and not glob.glob(str(builds["records"] / "*plan*"))


def test_sidecar_offsets_match_scan(builds):
    for path in glob.glob(str(builds["records"] / "train-*.tfrecord")):
        sidecar = json.loads(open(path + ".json").read())
        assert sidecar["offsets"] == scan_record_offsets(path)


def test_train_iterator_reads_beam_shards(builds):
    root = builds["records"].parent
    write_vocab(str(root / "vocab.txt"), ["a green circle moves left right up down", "tiny one two"])
    data = get_data_config("tiny", root=str(root))
    model = {"crop_size": h.FRAME_HW, "num_frames": 7}  # the whole stored frame
    config = ml_collections.ConfigDict({"batch_size": 2, "data": data, "model": model})
    batch = next(make_train_iterator(config, 0, 1))
    assert batch["img_middle"].shape == (2, 1, *h.FRAME_HW, 3)


def test_resume_rewrites_only_missing_shards(builds, tmp_path, capsys):
    output = tmp_path / "out"
    shutil.copytree(builds["root"] / "reference", output)  # a build_tfrecords output
    kept = output / "train-00000-of-00003.tfrecord"
    mtime = os.path.getmtime(kept)
    os.remove(output / "train-00001-of-00003.tfrecord")
    report, counters = _beam_build(_args(builds["videos"], builds["annotations"], str(output)))
    assert "resuming: 2 of 3 shards already written" in capsys.readouterr().out
    assert counters["shards_written"] == 1 and os.path.getmtime(kept) == mtime
    assert _shard_records(output) == _shard_records(builds["root"] / "reference")
    assert report["records"] == 6


def test_build_shards_outputs_the_shards_it_wrote(builds, tmp_path):
    args = _args(builds["videos"], builds["annotations"], str(tmp_path), "--num_shards", "4")
    plan = dataclasses.replace(build_tfrecords.plan_build(args), todo=[1, 2, 3])
    plan_file = beam_pipeline.write_plan_file(args, plan)
    with beam.Pipeline(options=PipelineOptions(BEAM_FLAGS)) as pipeline:
        written = pipeline | BuildShards(plan_file, plan.options, args.output, args.split, 4, plan.todo)
        assert_that(written, equal_to([1, 2, 3]))
    shards = [f"train-0000{s}-of-00004.tfrecord{ext}" for s in (1, 2, 3) for ext in ("", ".json")]
    assert sorted(os.listdir(tmp_path)) == shards + ["train_beam_plan.jsonl", "train_build.json"]


def test_split_argv():
    build, beam = beam_pipeline.split_argv([
        "--videos", "V", "--runner=DirectRunner", "--frame_size", "64", "96", "--direct_num_workers", "2",
        "--num_shards=4", "--save_main_session", "--project", "p"])
    assert build == ["--videos", "V", "--frame_size", "64", "96", "--num_shards=4"]
    assert beam == ["--runner=DirectRunner", "--direct_num_workers", "2", "--save_main_session", "--project", "p"]


def test_open_ended_qa_builds_the_same_records_and_vocabulary(builds, tmp_path):
    qa = tmp_path / "qa.jsonl"
    h.write_jsonl(str(qa), [{"video_id": "v0", "question": "which way", "answer": "left", "answer_type": "direction"},
                            {"video_id": "v1", "question": "which way", "answer": "right", "answer_type": "direction"},
                            {"video_id": "v4", "question": "which way", "answer": "left", "answer_type": "direction"}])
    outputs = {}
    for name in ("reference", "beam"):
        args = _args(builds["videos"], str(qa), str(tmp_path / name), "--format", "msrvtt_qa", "--min_answer_count", "2")
        report = build_tfrecords.build(args) if name == "reference" else _beam_build(args)[0]
        outputs[name] = (report, json.loads((tmp_path / name / "train_ans2label.json").read_text()))
    assert outputs["beam"][1] == outputs["reference"][1] == {"left": 0}
    assert outputs["beam"][0]["records"] == 2 and _shard_records(tmp_path / "beam") == _shard_records(
        tmp_path / "reference")
