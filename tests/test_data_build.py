"""Building clip records: bad inputs, report, frame fidelity, HR/LR alignment, resume."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from data_pipelines import build_tfrecords
from data_pipelines.synthetic_videos import MovingShape
from hdvila_jax.data.tfrecord_source import scan_record_offsets
from hdvila_jax.video.clip_plan import plan_clip
from tests import data_helpers as h

GOOD = ["good0", "good1", "good2", "good3"]
# Stored JPEG (quality 90, 4:2:0 chroma) vs PyAV's decode of the same frame. The LR frames
# of these tiny videos are 16x24, where chroma subsampling of the coloured edges costs more.
HR_PSNR_DB = 30.0
LR_PSNR_DB = 27.0


@pytest.fixture(scope="module")
def bad_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    videos = root / "videos"
    videos.mkdir()
    directions = ["left", "right", "up", "down"]
    for i, name in enumerate(GOOD):
        h.write_video(str(videos / f"{name}.mp4"), seed=i, content=MovingShape("blue", "square", directions[i]))
    h.write_video(str(videos / "tiny.mp4"), hw=(16, 24), seed=7)
    h.write_video(str(videos / "short.mp4"), num_frames=12, seed=8)
    h.write_video(str(videos / "too_short.mp4"), num_frames=8, seed=9)
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
    (videos / "text.mp4").write_text("this is not a video\n" * 20)
    full = (videos / "good0.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(full[: len(full) // 2])
    entries = [{"clip_id": n, "text": f"clip {n}"} for n in GOOD]
    entries += [{"clip_id": n, "text": [f"{n} caption one", f"{n} caption two"]}
                for n in ["tiny", "short", "too_short", "zero", "garbage", "text", "truncated", "missing"]]
    entries += [b'{"clip_id": "broken", "text": ', {"clip_id": "notext"}, b'{"clip_id": "latin", "text": "caf\xe9"}',
                {"clip_id": "good0", "text": "duplicate"}]
    annotations = root / "ann.jsonl"
    h.write_jsonl(str(annotations), entries)
    output = root / "out"
    report = h.build(str(videos), str(annotations), str(output))
    return dict(root=root, videos=videos, output=output, report=report, annotations=annotations)


def test_report_lists_exactly_the_bad_inputs(bad_build):
    report = bad_build["report"]
    ann = str(bad_build["annotations"])
    skipped = {s["item"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"too_short", "zero", "garbage", "text", "truncated", "missing",
                            f"{ann}:13", f"{ann}:14", f"{ann}:15", f"{ann}:16"}
    assert skipped["too_short"].startswith("too short")
    assert skipped["zero"].startswith("zero-length file")
    assert skipped["garbage"].startswith("unreadable")
    assert skipped["text"].startswith("unreadable")
    assert skipped["truncated"].startswith("unreadable")  # moov atom lost with the second half
    assert skipped["missing"].startswith("missing video file")
    assert skipped[f"{ann}:13"].startswith("malformed JSON")
    assert skipped[f"{ann}:14"].startswith("missing key 'text'")
    assert skipped[f"{ann}:15"].startswith("invalid UTF-8")
    assert skipped[f"{ann}:16"].startswith("duplicate clip_id")
    warnings = {w["item"]: w["reason"] for w in report["warnings"]}
    assert warnings == {"tiny": "resized up: 16x24 -> 64x96",
                        "short": "short video: sample_rate 2 -> 1 (12 frames)"}
    assert report["records"] == 6
    assert report["skipped_counts"]["unreadable"] == 3
    on_disk = json.loads((bad_build["output"] / "train_report.json").read_text())
    assert on_disk == report


def test_records_hold_the_planned_frames(bad_build):
    records = h.records_by_id(str(bad_build["output"] / "train-*.tfrecord"))
    assert set(records) == set(GOOD) | {"tiny", "short"}
    assert records["tiny"].texts == ["tiny caption one", "tiny caption two"]
    assert sorted(r.video_index for r in records.values()) == [0, 1, 2, 3, 4, 5]
    record = records["good1"]
    plan = plan_clip(40, 2, 7, 4, 8)
    np.testing.assert_array_equal(record.middle_frames, plan.middle_frames)
    assert (record.num_frames, record.sample_rate, record.fps) == (40, 2, 15.0)
    # Neighbour slots point at the frames 3, 2, 1 strides before and 1, 2, 3 after.
    neighbours = record.lr_frames[record.neighbour_slots]
    expected = record.middle_frames[:, None] + 2 * np.array([-3, -2, -1, 1, 2, 3])
    np.testing.assert_array_equal(neighbours, expected)
    short = records["short"]
    assert short.sample_rate == 1 and short.num_candidates == 6
    assert short.middle_frames.min() >= 3 and short.middle_frames.max() < 12 - 3


def test_frames_match_pyav_decode(bad_build):
    records = h.records_by_id(str(bad_build["output"] / "train-*.tfrecord"))
    for name in GOOD + ["tiny"]:
        record = records[name]
        hr_all = h.decode_all_frames(str(bad_build["videos"] / f"{name}.mp4"), h.FRAME_HW)
        lr_all = h.decode_all_frames(str(bad_build["videos"] / f"{name}.mp4"), (16, 24))
        for frame, jpeg in zip(record.middle_frames, record.hr_jpeg):
            stored = h.decode_jpeg(jpeg)
            assert stored.shape == (64, 96, 3)
            right = h.psnr(stored, hr_all[frame])
            assert right > HR_PSNR_DB, (name, frame, right)
            # The shape moves, so the neighbouring frame must match clearly worse.
            assert right > h.psnr(stored, hr_all[frame + 1]) + 3, (name, frame)
        for frame, jpeg in zip(record.lr_frames, record.lr_jpeg):
            stored = h.decode_jpeg(jpeg)
            assert stored.shape == (16, 24, 3)
            assert h.psnr(stored, lr_all[frame]) > LR_PSNR_DB, (name, frame)


def test_index_sidecar_matches_scan(bad_build):
    for path in glob.glob(str(bad_build["output"] / "train-*.tfrecord")):
        sidecar = json.loads(open(path + ".json").read())
        assert sidecar["offsets"] == scan_record_offsets(path)
        assert sidecar["num_records"] == len(sidecar["offsets"])


def test_hdvila100m_spans(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    h.write_video(str(videos / "vid.mp4"), num_frames=60, seed=3)  # 4 s at 15 fps
    h.write_jsonl(str(tmp_path / "meta.jsonl"), [
        {"video_id": "vid", "clip": [{"clip_id": "vid.0", "span": [0, 2.0]},
                                     {"clip_id": "vid.1", "span": ["00:00:02.000", "00:00:04.0"]},
                                     {"clip_id": "vid.2", "span": [3, 1]},
                                     {"clip_id": "vid.3", "span": [0, 1]}]},
        {"clip": []},
    ])
    h.write_jsonl(str(tmp_path / "texts.jsonl"), [{"clip_id": "vid.0", "text": "first half"},
                                                  {"clip_id": "vid.1", "text": "second half"},
                                                  {"clip_id": "vid.2", "text": "bad span"}])
    report = h.build(str(videos), str(tmp_path / "meta.jsonl"), str(tmp_path / "out"),
                     "--format", "hdvila100m", "--transcripts", str(tmp_path / "texts.jsonl"))
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert reasons["vid.2"].startswith("bad span") and reasons["vid.3"] == "no transcript"
    assert reasons[f"{tmp_path / 'meta.jsonl'}:2"] == "missing key 'video_id'"
    records = h.records_by_id(str(tmp_path / "out" / "train-*.tfrecord"))
    assert set(records) == {"vid.0", "vid.1"}
    all_frames = h.decode_all_frames(str(videos / "vid.mp4"), h.FRAME_HW)
    for clip_id, start in (("vid.0", 0), ("vid.1", 30)):
        record = records[clip_id]
        assert record.num_frames == 30 and record.video_id == "vid"
        for frame, jpeg in zip(record.middle_frames, record.hr_jpeg):
            assert h.psnr(h.decode_jpeg(jpeg), all_frames[start + frame]) > HR_PSNR_DB


def _good_set(tmp_path, count=6):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(count):
        h.write_video(str(videos / f"v{i}.mp4"), seed=i)
    h.write_jsonl(str(tmp_path / "ann.jsonl"), [{"clip_id": f"v{i}", "text": f"video {i}"} for i in range(count)])
    return str(videos), str(tmp_path / "ann.jsonl")


def test_interrupted_build_resumes(tmp_path, monkeypatch, capsys):
    videos, annotations = _good_set(tmp_path)
    reference = h.build(videos, annotations, str(tmp_path / "reference"), num_shards=3)
    output = tmp_path / "out"
    real_encode = build_tfrecords.encode_clip
    calls = []

    def crash_on_fifth(options, spec):
        calls.append(spec.clip_id)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_encode(options, spec)

    monkeypatch.setattr(build_tfrecords, "encode_clip", crash_on_fifth)
    with pytest.raises(KeyboardInterrupt):
        h.build(videos, annotations, str(output), num_shards=3)
    shards = sorted(glob.glob(str(output / "train-*.tfrecord")))
    assert [os.path.basename(p) for p in shards] == ["train-00000-of-00003.tfrecord",
                                                      "train-00001-of-00003.tfrecord"]
    assert not glob.glob(str(output / "*.tmp"))
    first_mtime = os.path.getmtime(shards[0])
    monkeypatch.setattr(build_tfrecords, "encode_clip", real_encode)
    calls.clear()
    report = h.build(videos, annotations, str(output), num_shards=3)
    assert "resuming: 2 of 3 shards already written" in capsys.readouterr().out
    assert os.path.getmtime(shards[0]) == first_mtime
    assert report["records"] == reference["records"] == 6
    for name in ("train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord"):
        assert (output / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()


def test_resume_with_other_settings_is_refused(tmp_path):
    videos, annotations = _good_set(tmp_path, count=2)
    h.build(videos, annotations, str(tmp_path / "out"), num_shards=1)
    with pytest.raises(SystemExit, match="jpeg_quality"):
        h.build(videos, annotations, str(tmp_path / "out"), "--jpeg_quality", "80", num_shards=1)
