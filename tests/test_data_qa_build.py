"""Open-ended video QA builds (MSRVTT-QA format): the answer vocabulary built from a split, missing videos,
the records, unknown answers kept or skipped, resume checks of the answer options; and the answer fields
of a clip record."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from tensorflow.core.example import example_pb2

from data_pipelines.synthetic_videos import MovingShape
from hdvila_jax.data.answers import load_ans2label
from hdvila_jax.data.records import ClipRecord, parse_clip_record, serialize_clip_record
from tests import data_helpers as h


QA_LINES = [  # (video, question, answer); three videos, one missing
    ("v0", "what colour is the shape", "red"), ("v0", "what shape is it", "circle"),
    ("v0", "which way does it move", "left"), ("v1", "what colour is the shape", "red"),
    ("v1", "what shape is it", "circle"), ("v2", "what colour is the shape", "red"),
    ("gone", "what colour is the shape", "blue"),
]


@pytest.fixture(scope="module")
def qa_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("qa")
    videos = root / "videos"
    videos.mkdir()
    for i, direction in enumerate(("left", "right", "up")):
        h.write_video(str(videos / f"v{i}.mp4"), num_frames=30, seed=i, content=MovingShape("red", "circle", direction))
    h.write_jsonl(str(root / "train.jsonl"), [{"video_id": v, "question": q, "answer": a, "answer_type": q.split()[1]}
                                              for v, q, a in QA_LINES])
    h.write_jsonl(str(root / "test.jsonl"), [
        {"video_id": "v1", "question": "what colour is the shape", "answer": "red", "answer_type": "colour"},
        {"video_id": "v1", "question": "which way does it move", "answer": "right", "answer_type": "way"},
        {"video_id": "v2", "question": "what shape is it", "answer": "circle", "answer_type": "shape"}])
    records = root / "records"
    train = h.build(str(videos), str(root / "train.jsonl"), str(records), "--format", "msrvtt_qa",
                    "--split", "train", "--min_answer_count", "2", num_shards=2)
    vocab = str(records / "train_ans2label.json")
    keep = h.build(str(videos), str(root / "test.jsonl"), str(records), "--format", "msrvtt_qa", "--split", "test",
                   "--ans2label", vocab, num_shards=1)
    skip = h.build(str(videos), str(root / "test.jsonl"), str(records), "--format", "msrvtt_qa",
                   "--split", "test_skip", "--ans2label", vocab, "--unknown_answers", "skip", num_shards=1)
    return dict(root=root, videos=videos, records=records, train=train, keep=keep, skip=skip)


def test_vocabulary_built_from_the_split(qa_build):
    records, ann = qa_build["records"], str(qa_build["root"] / "train.jsonl")
    assert load_ans2label(str(records / "train_ans2label.json")) == {"red": 0, "circle": 1}  # "left", "blue": once
    report = qa_build["train"]
    assert h.reasons(report["skipped"], ann) == {
        "3": "rare answer (seen fewer than --min_answer_count 2 times): 'left'",
        "7": "rare answer (seen fewer than --min_answer_count 2 times): 'blue'"}
    assert report["answer_vocabulary"] == {"path": str(records / "train_ans2label.json"), "answers": 2}
    assert (report["records"], report["annotated_clips"], report["warnings"]) == (5, 7, [])
    config = json.loads((records / "train_build.json").read_text())
    assert (config["format"], config["ans2label"], config["min_answer_count"]) == ("msrvtt_qa", None, 2)


def test_missing_video_is_listed_by_line(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    h.write_video(str(videos / "v0.mp4"), num_frames=30)
    ann = str(tmp_path / "qa.jsonl")
    h.write_jsonl(ann, [{"video_id": v, "question": "what colour", "answer": "red", "answer_type": "colour"}
                        for v in ("v0", "gone", "gone")])
    report = h.build(str(videos), ann, str(tmp_path / "out"), "--format", "msrvtt_qa", num_shards=1)
    reasons = h.reasons(report["skipped"], ann)
    assert set(reasons) == {"2", "3"} and reasons["2"] == reasons["3"]
    assert reasons["2"] == f"missing video file ({videos / 'gone.mp4'})"
    assert report["skipped_counts"] == {"missing video file": 2} and report["records"] == 1


def test_open_ended_records(qa_build):
    records = h.records_by_id(str(qa_build["records"] / "train-*.tfrecord"))
    assert sorted(records, key=int) == ["0", "1", "3", "4", "5"]
    for qid, record in records.items():
        video, question, answer = QA_LINES[int(qid)]
        assert (record.video_id, record.video_index, record.texts) == (video, int(qid), [question])
        assert (record.answer_text, record.answer_type, record.answer) == (answer, question.split()[1], None)
    # Questions on one video store the same frames (the video is decoded once per run of questions).
    assert records["0"].hr_jpeg == records["1"].hr_jpeg and records["0"].lr_jpeg == records["1"].lr_jpeg
    assert records["0"].hr_jpeg != records["3"].hr_jpeg


def test_unknown_answers_keep_or_skip(qa_build):
    ann = str(qa_build["root"] / "test.jsonl")
    keep, skip = qa_build["keep"], qa_build["skip"]
    assert keep["records"] == 3 and keep["skipped"] == []
    assert h.reasons(keep["warnings"], ann) == {
        "2": "answer not in --ans2label: 'right', kept (scored wrong at evaluation)"}
    assert keep["warning_counts"] == {"answer not in --ans2label": 1}
    assert skip["records"] == 2 and skip["warnings"] == []
    assert h.reasons(skip["skipped"], ann) == {"2": "answer not in --ans2label: 'right'"}
    kept = h.records_by_id(str(qa_build["records"] / "test-*.tfrecord"))["1"]
    assert (kept.answer_text, kept.answer_type) == ("right", "way")
    config = json.loads((qa_build["records"] / "test_skip_build.json").read_text())
    assert config["ans2label"] == str(qa_build["records"] / "train_ans2label.json")
    assert config["unknown_answers"] == "skip" and len(config["ans2label_sha256"]) == 64
    assert not (qa_build["records"] / "test_ans2label.json").exists()  # only built vocabularies are written


def test_resume_checks_the_answer_options(qa_build, tmp_path):
    videos, records, root = str(qa_build["videos"]), str(qa_build["records"]), qa_build["root"]
    vocab = str(qa_build["records"] / "train_ans2label.json")
    with pytest.raises(SystemExit, match="unknown_answers"):
        h.build(videos, str(root / "test.jsonl"), records, "--format", "msrvtt_qa", "--split", "test",
                "--ans2label", vocab, "--unknown_answers", "skip", num_shards=1)
    with pytest.raises(SystemExit, match="min_answer_count"):
        h.build(videos, str(root / "train.jsonl"), records, "--format", "msrvtt_qa", "--split", "train",
                num_shards=2)
    edited = tmp_path / "ans2label.json"
    edited.write_text('{"red": 0}')
    with pytest.raises(SystemExit, match=re.escape(f"--ans2label: {tmp_path / 'missing.json'}: cannot read")):
        h.build(videos, str(root / "test.jsonl"), str(tmp_path / "out"), "--format", "msrvtt_qa",
                "--ans2label", str(tmp_path / "missing.json"), num_shards=1)
    h.build(videos, str(root / "test.jsonl"), str(tmp_path / "out"), "--format", "msrvtt_qa",
            "--ans2label", str(edited), num_shards=1)
    edited.write_text('{"red": 0, "right": 1}')
    with pytest.raises(SystemExit, match="ans2label_sha256"):
        h.build(videos, str(root / "test.jsonl"), str(tmp_path / "out"), "--format", "msrvtt_qa",
                "--ans2label", str(edited), num_shards=1)


def _record(**answers) -> ClipRecord:
    return ClipRecord(clip_id="12", video_id="video7", video_index=12, texts=["what is he doing?"], num_frames=30,
                      fps=6.0, sample_rate=4, num_frm=3, frame_height=8, frame_width=8,
                      middle_frames=np.array([10]), hr_jpeg=[b"hr"], lr_frames=np.array([6, 14]),
                      lr_jpeg=[b"a", b"b"], neighbour_slots=np.array([[0, 1]]), **answers)


def test_record_round_trip_of_answer_fields():
    parsed = parse_clip_record(serialize_clip_record(_record(answer_text="sing ½", answer_type="what")))
    assert (parsed.answer_text, parsed.answer_type, parsed.answer) == ("sing ½", "what", None)
    old = serialize_clip_record(_record())
    assert not {"answer", "answer_text", "answer_type"} & set(example_pb2.Example.FromString(old).features.feature)
    parsed = parse_clip_record(old)
    assert (parsed.answer_text, parsed.answer_type, parsed.answer) == (None, None, None)
