"""The record builders on ``gs://`` (fake-gcs-server on loopback, ``tests/gcs_emulator.py``): videos,
annotations and output in a bucket give the same shards, sidecars and reports as the local build;
commits are atomic (sidecar, then shard, each one object); the Beam build (DirectRunner, when
apache_beam is installed: .ci/run's second virtualenv) from gs:// videos to gs:// shards."""
from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest

from data_pipelines import build_tfrecords, custom_dataset, make_demo
from data_pipelines.annotations import BadInput, ClipSpec
from data_pipelines.beam_plan import parse_plan_line, read_chunk, write_plan
from data_pipelines.clip_encoder import ClipResult
from data_pipelines.remote_files import FileSet
from data_pipelines.shard_writer import ShardWriter
from data_pipelines.synthetic_videos import MovingShape
from hdvila_jax import storage
from hdvila_jax.data.tfrecord_source import scan_record_offsets
from tests import data_helpers as h

needs_beam = pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None,
                                reason="needs the [beam] extra; .ci/run adds it after the suite and runs these tests")
BEAM_FLAGS = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_threading"]
NUM_SHARDS = 3


def _upload_tree(local: str, remote: str) -> None:
    """Copy every file under the local folder to the same relative paths under ``remote``."""
    for folder, _, files in os.walk(local):
        for name in files:
            path = os.path.join(folder, name)
            storage.copy(path, storage.join(remote, os.path.relpath(path, local)))


def _files(root: str) -> dict[str, bytes]:
    """{relative path: contents} of every file under a local folder or gs:// prefix."""
    paths = storage.glob(storage.join(root, "**"))
    return {p[len(root) + 1:]: storage.read_bytes(p) for p in paths if storage.isfile(p)}


def _comparable(name: str, contents: bytes, remote: str = "", local: str = "") -> bytes | str:
    """A file's contents for comparison: a JSON file (sidecar, report, build config) as text with the
    bucket root ``remote`` replaced by ``local`` and FFmpeg's name of an unreadable input dropped (PyAV
    reads a bucket object as a file object, which FFmpeg calls '<none>')."""
    if not name.endswith(".json"):
        return contents
    return re.sub(r"input: '[^']*'", "input: FILE", contents.decode().replace(remote, local))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, gcs_server):
    """Local videos (good, tiny, garbage; one annotated clip missing) and annotations, the same uploaded
    to a bucket: {"local": folder, "remote": gs:// prefix}."""
    from tests import gcs_emulator
    root = tmp_path_factory.mktemp("gcs_inputs")
    videos = root / "videos"
    videos.mkdir()
    directions = ["left", "right", "up", "down"]
    for i, direction in enumerate(directions):
        h.write_video(str(videos / f"v{i}.mp4"), seed=i, content=MovingShape("green", "circle", direction))
    h.write_video(str(videos / "tiny.mp4"), hw=(16, 24), seed=9)
    (videos / "garbage.mp4").write_bytes(b"not a video" * 500)
    entries = [{"clip_id": f"v{i}", "text": f"a green circle moves {d}"} for i, d in enumerate(directions)]
    entries += [{"clip_id": "tiny", "text": ["tiny one", "tiny two"]}, {"clip_id": "garbage", "text": "junk"},
                {"clip_id": "missing", "text": "no file"}, b'{"clip_id": "broken", ']
    h.write_jsonl(str(root / "ann.jsonl"), entries)
    remote = f"gs://{gcs_emulator.create_bucket(gcs_server)}/inputs"
    _upload_tree(str(root), remote)
    return {"local": str(root), "remote": remote}


def _build_args(root: str, output: str, *extra: str):
    return build_tfrecords.parse_args([
        "--videos", storage.join(root, "videos"), "--annotations", storage.join(root, "ann.jsonl"),
        "--output", output, "--num_shards", str(NUM_SHARDS), "--workers", "1",
        "--frame_size", *map(str, h.FRAME_HW), "--sample_rate", "2", *extra])


@pytest.fixture(scope="module")
def local_build(inputs, tmp_path_factory):
    """The local build of the inputs: (output folder, report)."""
    output = str(tmp_path_factory.mktemp("gcs_local_build"))
    return output, build_tfrecords.build(_build_args(inputs["local"], output))


def _assert_same_build(remote_output: str, local_output: str, inputs: dict) -> None:
    """The same shards (bytes), sidecars and report; the build config differs only in its paths."""
    remote, local = _files(remote_output), _files(local_output)
    assert sorted(remote) == sorted(local)
    assert [n for n in remote if n.endswith(".tfrecord")] == [
        f"train-0000{s}-of-0000{NUM_SHARDS}.tfrecord" for s in range(NUM_SHARDS)]
    for name, contents in remote.items():
        assert _comparable(name, contents, inputs["remote"], inputs["local"]) == _comparable(name, local[name]), name


def test_build_tfrecords_in_a_bucket_equals_the_local_build(inputs, local_build, gcs_bucket, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = f"gs://{gcs_bucket}/records"
    report = build_tfrecords.build(_build_args(inputs["remote"], output))
    _assert_same_build(output, local_build[0], inputs)
    assert report["records"] == local_build[1]["records"] == 5
    assert {s["item"] for s in report["skipped"]} == {"garbage", "missing", f"{inputs['remote']}/ann.jsonl:8"}
    assert report["skipped_counts"] == {"malformed JSON": 1, "missing video file": 1, "unreadable": 1}
    assert os.listdir(tmp_path) == []  # no local "gs:" folder


def test_interrupted_bucket_build_resumes_the_missing_shard(inputs, local_build, gcs_bucket, capsys):
    output = f"gs://{gcs_bucket}/records"
    build_tfrecords.build(_build_args(inputs["remote"], output))
    kept = storage.read_bytes(f"{output}/train-00000-of-00003.tfrecord")
    storage.remove(f"{output}/train-00001-of-00003.tfrecord")  # the sidecar alone does not finish a shard
    report = build_tfrecords.build(_build_args(inputs["remote"], output))
    assert "resuming: 2 of 3 shards already written" in capsys.readouterr().out
    assert storage.read_bytes(f"{output}/train-00000-of-00003.tfrecord") == kept
    _assert_same_build(output, local_build[0], inputs)
    assert report["records"] == 5
    with pytest.raises(SystemExit, match="jpeg_quality"):
        build_tfrecords.build(_build_args(inputs["remote"], output, "--jpeg_quality", "80"))


def test_shard_commit_in_a_bucket_is_all_or_nothing(gcs_bucket):
    path = f"gs://{gcs_bucket}/out/train-00000-of-00001.tfrecord"
    with pytest.raises(RuntimeError, match="worker lost"):
        with ShardWriter(path) as writer:
            writer.write(b"record one")
            raise RuntimeError("worker lost")
    assert not storage.exists(path) and not storage.exists(path + ".json")
    with ShardWriter(path) as writer:
        writer.write(b"record one")
        writer.write(b"record two")
        writer.note(BadInput("clip", "missing video file"), ())
        writer.finish()
    assert json.loads(storage.read_text(path + ".json")) == {
        "num_records": 2, "offsets": [0, 26], "skipped": [{"item": "clip", "reason": "missing video file"}],
        "warnings": []}
    assert storage.size(path) == 2 * 16 + len(b"record one") + len(b"record two")


def test_file_set_lists_a_bucket_folder_once(gcs_bucket):
    root = f"gs://{gcs_bucket}/videos"
    for name in ("a.mp4", "abc/abc", "deep/x/y.mp4"):
        storage.write_bytes(f"{root}/{name}", b"v")
    files = FileSet(root)
    assert files.isfile(f"{root}/a.mp4") and files.isfile(f"{root}/abc/abc") and files.isfile(f"{root}/deep/x/y.mp4")
    assert not files.isfile(f"{root}/abc") and not files.isfile(f"{root}/b.mp4")  # a folder is not a file
    storage.write_bytes(f"{root}/b.mp4", b"v")
    assert not files.isfile(f"{root}/b.mp4")  # the listing was made once
    assert FileSet(root).isfile(f"{root}/b.mp4")


def test_plan_in_a_bucket_reads_back_in_chunks(gcs_bucket):
    def spec(clip_id: str, video: str) -> ClipSpec:
        return ClipSpec(clip_id=clip_id, video_id=video, video_path=f"gs://{gcs_bucket}/videos/{video}.mp4",
                        texts=(f"caption of {clip_id}",), span=None, video_index=int(clip_id[1:]))
    shards = [(0, [spec("c0", "a"), spec("c1", "a"), spec("c2", "b")]), (2, [spec("c3", "c"), spec("c4", "d")])]
    plan = write_plan(f"gs://{gcs_bucket}/plan.jsonl", shards, chunk_lines=2)
    assert len(plan.chunks) == 2  # 4 lines: a, b | c, d
    lines = [parse_plan_line(line) for chunk in plan.chunks for line in read_chunk(chunk, plan.path)]
    assert [(shard, first, [s.clip_id for s in specs]) for shard, first, specs in lines] == [
        (0, 0, ["c0", "c1"]), (0, 2, ["c2"]), (2, 0, ["c3"]), (2, 1, ["c4"])]
    assert lines[0][2][0] == shards[0][1][0]


def test_make_demo_in_a_bucket_equals_the_local_demo(gcs_bucket, tmp_path):
    flags = ["--num_train", "4", "--num_val", "2", "--frame_size", "32", "48", "--fps", "8", "--duration", "2",
             "--workers", "1", "--min_clips", "2", "--num_candidates", "2"]
    make_demo.main(["--output", str(tmp_path / "demo"), *flags])
    remote = f"gs://{gcs_bucket}/demo"
    make_demo.main(["--output", remote, *flags])
    local, bucket = _files(str(tmp_path / "demo")), _files(remote)
    assert sorted(bucket) == sorted(local)
    assert {n.split("/")[0] for n in bucket} == {"videos", "annotations", "records", "vocab.txt"}
    for name, contents in bucket.items():
        assert _comparable(name, contents, remote, str(tmp_path / "demo")) == _comparable(name, local[name]), name


def test_custom_dataset_from_and_to_a_bucket(gcs_bucket, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    h.write_video(str(videos / "a.mp4"), seed=1)
    h.write_video(str(videos / "b.mp4"), seed=2, content=MovingShape("blue", "square", "left"))
    (videos / "captions.csv").write_text("video,caption\na.mp4,a red circle\nb.mp4,a blue square\n"
                                         "nope.mp4,a lost video\n")
    remote = f"gs://{gcs_bucket}/custom"
    _upload_tree(str(videos), f"{remote}/videos")
    flags = ["--val_fraction", "0.5", "--frame_size", *map(str, h.FRAME_HW), "--sample_rate", "2",
             "--num_shards", "1", "--workers", "1", "--min_clips", "2", "--num_candidates", "2"]
    local = custom_dataset.convert(custom_dataset.parse_args(
        ["--annotations", str(videos / "captions.csv"), "--output", str(tmp_path / "out"), *flags]))
    bucket = custom_dataset.convert(custom_dataset.parse_args(
        ["--annotations", f"{remote}/videos/captions.csv", "--output", f"{remote}/out", *flags]))
    assert bucket["bad_rows"] == [{"item": f"{remote}/videos/captions.csv:4",
                                   "reason": f"missing video file {remote}/videos/nope.mp4"}]
    assert bucket["train"]["files"] == f"{remote}/out/records/train-*.tfrecord"
    assert [bucket[s]["examples"] for s in custom_dataset.SPLITS] == [local[s]["examples"] for s in
                                                                       custom_dataset.SPLITS] == [1, 1]
    for split in ("train", "val"):
        name = f"records/{split}-00000-of-00001.tfrecord"
        assert storage.read_bytes(f"{remote}/out/{name}") == (tmp_path / "out" / name).read_bytes()
        assert storage.read_bytes(f"{remote}/out/{name}.json") == (tmp_path / "out" / f"{name}.json").read_bytes()


# ---- the Beam build --------------------------------------------------------------------------------------------

@needs_beam
def test_beam_build_from_bucket_videos_to_bucket_shards(inputs, local_build, gcs_bucket):
    from apache_beam.options.pipeline_options import PipelineOptions
    from data_pipelines import beam_pipeline
    output = f"gs://{gcs_bucket}/beam"
    report, counters = beam_pipeline.build(_build_args(inputs["remote"], output), PipelineOptions(BEAM_FLAGS))
    _assert_same_build(output, local_build[0], inputs)  # same bytes: records in annotation order
    assert counters == {"records_written": 5, "clips_skipped": 2, "clip_warnings": 1, "shards_written": NUM_SHARDS}
    assert report["records"] == 5
    assert not storage.exists(f"{output}/train_beam_plan.jsonl")


@needs_beam
def test_retried_shard_writes_rewrite_the_same_objects(gcs_bucket, tmp_path):
    from data_pipelines.beam_transforms import _WriteShard
    results = [(p, ClipResult(f"record {p}".encode() * (p + 1), None, (BadInput(f"c{p}", "short video"),)))
               for p in range(4)] + [(4, ClipResult(None, BadInput("c4", "missing video file")))]
    output = f"gs://{gcs_bucket}/retry"
    writer = _WriteShard(output, "train", 1)
    path = f"{output}/train-00000-of-00001.tfrecord"
    written = []
    for arrival in (results, list(reversed(results)), [None, *results[2:], *results[:2]]):
        assert list(writer.process((0, arrival))) == [0]
        written.append((storage.read_bytes(path), storage.read_bytes(path + ".json")))
    assert written[0] == written[1] == written[2]
    sidecar = json.loads(written[0][1])
    assert sidecar["skipped"] == [{"item": "c4", "reason": "missing video file"}]
    assert [w["item"] for w in sidecar["warnings"]] == ["c0", "c1", "c2", "c3"]
    local = tmp_path / "shard.tfrecord"
    local.write_bytes(written[0][0])
    assert scan_record_offsets(str(local)) == sidecar["offsets"]
