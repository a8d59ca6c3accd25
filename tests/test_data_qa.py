"""Video QA data: MSRVTT-QA / TGIF annotation readers and their bad inputs, the answer vocabulary,
unknown-answer handling in real builds, GIF decoding, the TGIF letterbox geometry (pipeline C),
answer fields of the record, and the demo's QA files."""
from __future__ import annotations

import glob
import json
import re

import numpy as np
import pytest
from PIL import Image
from tensorflow.core.example import example_pb2

from data_pipelines import build_tfrecords, make_demo
from data_pipelines.answer_vocab import build_ans2label, write_ans2label
from hdvila_jax.data.answers import AnswerVocabError, load_ans2label
from data_pipelines.geometry import TGIF_PAD_VALUE, bicubic_resize, letterbox_size, tgif_lr_frame
from data_pipelines.qa_annotations import (read_msrvtt_qa_annotations, read_tgif_frameqa_annotations,
                                           read_tgif_mc_annotations)
from data_pipelines.synthetic_videos import MovingShape
from data_pipelines.video_decode import decode_rgb_frames, probe_video
from data_pipelines.vocab import words_of
from hdvila_jax.data.records import ClipRecord, parse_clip_record, serialize_clip_record
from hdvila_jax.data.tfrecord_source import TFRecordDataSource
from tests import data_helpers as h

OPTIONS = ["runs", "jumps", "sits", "waves", "spins"]


def _records(pattern: str) -> dict:
    source = TFRecordDataSource(sorted(glob.glob(pattern)))
    return {r.clip_id: r for r in (parse_clip_record(source[i]) for i in range(len(source)))}


def _reasons(bad: list, path: str | None = None) -> dict:
    """{line number (or item): reason} of BadInputs or report dicts."""
    items = [(b.item, b.reason) if hasattr(b, "item") else (b["item"], b["reason"]) for b in bad]
    return {(item.rsplit(":", 1)[1] if path and item.startswith(f"{path}:") else item): reason
            for item, reason in items}


# ---------------------------------------------------------------- annotation readers

def test_msrvtt_qa_reader(tmp_path):
    path = str(tmp_path / "qa.jsonl")
    h.write_jsonl(path, [
        {"video_id": "video7", "question": "what is a man doing?", "answer": " sing ", "answer_type": "what"},
        {"video_id": "video7", "question": "who sings?", "answer": "man"},  # no answer_type: warning
        b'{"video_id": "video8", "question": ',
        {"question": "where?", "answer": "x", "answer_type": "where"},
        {"video_id": "video8", "question": "  ", "answer": "x", "answer_type": "what"},
        {"video_id": "video8", "question": "what?", "answer_type": "what"},
        {"video_id": "video8", "question": "what?", "answer": "", "answer_type": "what"},
        {"video_id": "video8", "question": "how many?", "answer": 3, "answer_type": "how"},
        {"video_id": "video9", "question": "when?", "answer": "night", "answer_type": "when"},
    ])
    specs, skipped, warnings = read_msrvtt_qa_annotations(path, "/vids")
    assert [(s.clip_id, s.video_index, s.video_id, s.video_path, s.texts, s.answer_text, s.answer_type, s.answer)
            for s in specs] == [
        ("0", 0, "video7", "/vids/video7.mp4", ("what is a man doing?",), "sing", "what", None),
        ("1", 1, "video7", "/vids/video7.mp4", ("who sings?",), "man", "unknown", None),
        ("8", 8, "video9", "/vids/video9.mp4", ("when?",), "night", "when", None)]  # question id = 0-based line
    assert specs[2].line == f"{path}:9"
    reasons = _reasons(skipped, path)
    assert reasons == {"3": reasons["3"], "4": "missing key 'video_id'", "5": "empty question",
                       "6": "missing key 'answer'", "7": "empty answer", "8": "bad answer (3, expected a string)"}
    assert reasons["3"].startswith("malformed JSON")
    assert _reasons(warnings) == {f"{path}:2": "missing key 'answer_type': stored as 'unknown'"}


def test_tgif_frameqa_reader_prefers_mp4_then_gif(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("both.mp4", "both.gif", "gif_only.gif"):
        (videos / name).write_bytes(b"x")
    path = str(tmp_path / "frameqa.jsonl")
    h.write_jsonl(path, [
        {"gif_name": name, "question": "what is the color of the cat", "answer": "white", "answer_type": "color"}
        for name in ("both", "gif_only", "neither")] + [{"video_id": "both", "question": "q", "answer": "a"}])
    specs, skipped, warnings = read_tgif_frameqa_annotations(path, str(videos))
    assert [s.video_path for s in specs] == [str(videos / "both.mp4"), str(videos / "gif_only.gif"),
                                             str(videos / "neither.mp4")]
    assert [(s.clip_id, s.video_id, s.answer_text, s.answer_type) for s in specs] == [
        ("0", "both", "white", "color"), ("1", "gif_only", "white", "color"), ("2", "neither", "white", "color")]
    assert _reasons(skipped, path) == {"4": "missing key 'gif_name'"} and warnings == []


def test_tgif_mc_reader(tmp_path):
    path = str(tmp_path / "action.jsonl")
    good = {"gif_name": "tumblr_a", "question": "what does the man do 3 times", "options": OPTIONS, "answer": 1}
    h.write_jsonl(path, [
        good,
        {**good, "options": OPTIONS[:4]},
        {**good, "options": OPTIONS + ["extra"]},
        {**good, "options": "runs"},
        {**good, "options": OPTIONS[:2] + [""] + OPTIONS[3:]},
        {**good, "answer": 5},
        {**good, "answer": -1},
        {**good, "answer": "1"},
        {**good, "answer": True},
        {k: v for k, v in good.items() if k != "answer"},
        {k: v for k, v in good.items() if k != "options"},
        {**good, "question": ""},
        {k: v for k, v in good.items() if k != "gif_name"},
        [1, 2],
        {**good, "gif_name": "tumblr_b", "answer": 4},
    ])
    specs, skipped, warnings = read_tgif_mc_annotations(path, "/gifs")
    assert [(s.clip_id, s.video_index, s.video_id, s.answer, s.answer_text) for s in specs] == [
        ("0", 0, "tumblr_a", 1, None), ("14", 14, "tumblr_b", 4, None)]
    # "question option" with one space and no [SEP] (SPEC_DOWNSTREAM 2.6)
    assert specs[0].texts == tuple(f"what does the man do 3 times {o}" for o in OPTIONS)
    assert specs[0].video_path == "/gifs/tumblr_a.mp4"
    reasons = _reasons(skipped, path)
    assert reasons == {
        "2": "wrong option count (4, expected 5)", "3": "wrong option count (6, expected 5)",
        "4": "wrong option count (not a list, expected 5)", "5": "empty option (index 2)",
        "6": "bad answer (5, expected an integer in [0, 5))", "7": "bad answer (-1, expected an integer in [0, 5))",
        "8": "bad answer ('1', expected an integer in [0, 5))", "9": "bad answer (True, expected an integer in [0, 5))",
        "10": "missing key 'answer'", "11": "missing key 'options'", "12": "empty question",
        "13": "missing key 'gif_name'", "14": "not a JSON object"}
    assert warnings == []


def test_json_list_question_ids_are_positions(tmp_path):
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"video_id": "v", "question": "q?"},
                                {"video_id": "v", "question": "q?", "answer": "a", "answer_type": "what"}]))
    specs, skipped, _ = read_msrvtt_qa_annotations(str(path), "/vids")
    assert [(s.clip_id, s.line) for s in specs] == [("1", f"{path}[1]")]
    assert _reasons(skipped) == {f"{path}[0]": "missing key 'answer'"}


# ---------------------------------------------------------------- answer vocabulary

def test_build_ans2label_orders_by_count_then_name():
    answers = ["b", "a", "c", "b", "a", "d", "b", "c", "e"]
    assert build_ans2label(answers, 1) == {"b": 0, "a": 1, "c": 2, "d": 3, "e": 4}
    assert build_ans2label(answers, 2) == {"b": 0, "a": 1, "c": 2}
    assert build_ans2label(answers, 4) == {}
    with pytest.raises(ValueError, match="min_count"):
        build_ans2label(answers, 0)


def test_ans2label_file_round_trip_and_errors(tmp_path):
    path = str(tmp_path / "ans2label.json")
    write_ans2label(path, {"yes": 1, "two": 2, "no": 0, "café": 3})
    assert list(json.loads(open(path, encoding="utf-8").read())) == ["no", "yes", "two", "café"]  # label order
    assert load_ans2label(path) == {"no": 0, "yes": 1, "two": 2, "café": 3}
    cases = {
        "missing.json": (None, "cannot read"),
        "broken.json": ('{"a": 0,', "not a JSON answer vocabulary"),
        "list.json": ('["a", "b"]', "expected a non-empty JSON object"),
        "empty.json": ("{}", "expected a non-empty JSON object"),
        "string_label.json": ('{"a": "0"}', "label of answer 'a' is '0', expected an integer"),
        "bool_label.json": ('{"a": true}', "label of answer 'a' is True"),
        "duplicate.json": ('{"a": 0, "b": 0, "c": 1}', r"labels must be 0\.\.2, each once \(label 0 used twice\)"),
        "gap.json": ('{"a": 0, "b": 2}', r"labels must be 0\.\.1, each once \(labels span 0\.\.2 with gaps\)"),
    }
    for name, (text, message) in cases.items():
        bad = tmp_path / name
        if text is not None:
            bad.write_text(text)
        with pytest.raises(AnswerVocabError, match=message) as error:
            load_ans2label(str(bad))
        assert str(error.value).startswith(f"{bad}: ")


@pytest.mark.parametrize("flags,message", [
    (["--format", "tgif_mc", "--ans2label", "x.json"], "--ans2label only apply to --format msrvtt_qa or tgif_frameqa"),
    (["--format", "retrieval", "--min_answer_count", "2"], "--min_answer_count only apply"),
    (["--format", "msrvtt_qa", "--unknown_answers", "skip"], "--unknown_answers needs --ans2label"),
    (["--format", "msrvtt_qa", "--ans2label", "x.json", "--min_answer_count", "2"], "cannot be combined"),
    (["--format", "tgif_frameqa", "--min_answer_count", "0"], "--min_answer_count must be >= 1"),
    (["--format", "msrvtt_qa", "--geometry", "frames"], "QA formats need video files"),
])
def test_answer_flags_are_checked(flags, message, capsys):
    with pytest.raises(SystemExit):
        build_tfrecords.parse_args(["--videos", "v", "--annotations", "a.jsonl", "--output", "o", *flags])
    assert message in capsys.readouterr().err


def test_answer_flag_and_geometry_defaults():
    base = ["--videos", "v", "--annotations", "a.jsonl", "--output", "o"]
    args = build_tfrecords.parse_args(base + ["--format", "msrvtt_qa"])
    assert (args.ans2label, args.unknown_answers, args.min_answer_count) == (None, None, 1)
    args = build_tfrecords.parse_args(base + ["--format", "tgif_frameqa", "--ans2label", "x.json"])
    assert (args.unknown_answers, args.min_answer_count) == ("keep", None)
    args = build_tfrecords.parse_args(base + ["--format", "tgif_mc", "--geometry", "tgif"])
    assert tuple(args.frame_size) == (768, 768)
    with pytest.raises(ValueError, match="must be square"):
        build_tfrecords.build(build_tfrecords.parse_args(base + ["--geometry", "tgif", "--frame_size", "768", "1024"]))


# ---------------------------------------------------------------- open-ended builds

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
    assert _reasons(report["skipped"], ann) == {
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
    reasons = _reasons(report["skipped"], ann)
    assert set(reasons) == {"2", "3"} and reasons["2"] == reasons["3"]
    assert reasons["2"] == f"missing video file ({videos / 'gone.mp4'})"
    assert report["skipped_counts"] == {"missing video file": 2} and report["records"] == 1


def test_open_ended_records(qa_build):
    records = _records(str(qa_build["records"] / "train-*.tfrecord"))
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
    assert _reasons(keep["warnings"], ann) == {"2": "answer not in --ans2label: 'right', kept (scored wrong at evaluation)"}
    assert keep["warning_counts"] == {"answer not in --ans2label": 1}
    assert skip["records"] == 2 and skip["warnings"] == []
    assert _reasons(skip["skipped"], ann) == {"2": "answer not in --ans2label: 'right'"}
    kept = _records(str(qa_build["records"] / "test-*.tfrecord"))["1"]
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


# ---------------------------------------------------------------- GIFs and the TGIF geometry

GIF_HW = (40, 70)


def _gif_frames(num_frames: int, hw: tuple[int, int]) -> np.ndarray:
    """Distinct frames of few colours (exact in a GIF palette): a bar moving over blocks."""
    frames = np.zeros((num_frames, *hw, 3), np.uint8)
    frames[..., 0] = (np.arange(hw[1]) // 10 * 30)[None, None, :]
    frames[..., 1] = (np.arange(hw[0]) // 10 * 50)[None, :, None]
    for t in range(num_frames):
        frames[t, :, 2 * t:2 * t + 4] = (250, 250, 30 + 10 * t)
    return frames


def _write_gif(path: str, frames: np.ndarray, duration_ms: int = 80) -> None:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


def test_gif_decoding(tmp_path):
    frames = _gif_frames(16, GIF_HW)
    path = str(tmp_path / "anim.gif")
    _write_gif(path, frames)
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (16, *GIF_HW)
    assert info.fps == pytest.approx(12.5)  # 80 ms per frame
    decoded = decode_rgb_frames(path, None, np.array([0, 5, 15]))
    assert sorted(decoded) == [0, 5, 15]
    for index, frame in decoded.items():
        np.testing.assert_array_equal(frame, frames[index])


@pytest.mark.parametrize("hw", [(40, 70), (45, 70), (100, 33), (300, 301), (192, 100), (500, 250)])
def test_tgif_letterbox_matches_torch(hw):
    torch = pytest.importorskip("torch")
    image = np.random.default_rng(sum(hw)).integers(0, 256, (*hw, 3), np.uint8)
    # The original's get_resize_size: longer side 192, the other int(192 * short / long).
    expected_size = (192, int(192 * (hw[1] / hw[0]))) if hw[0] >= hw[1] else (int(192 * (hw[0] / hw[1])), 192)
    assert letterbox_size(hw, 192) == expected_size
    lr = tgif_lr_frame(image, 192)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None].double()
    resized = torch.nn.functional.interpolate(tensor, size=expected_size, mode="bilinear", align_corners=False)
    reference = np.clip(np.rint(resized[0].permute(1, 2, 0).numpy()), 0, 255)
    assert lr.shape == (192, 192, 3) and lr.dtype == np.uint8
    assert np.abs(lr[:expected_size[0], :expected_size[1]].astype(int) - reference).max() <= 1
    pad = np.ones((192, 192), bool)
    pad[:expected_size[0], :expected_size[1]] = False
    assert (lr[pad] == TGIF_PAD_VALUE).all()


@pytest.fixture(scope="module")
def tgif_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("tgif")
    videos = root / "gifs"
    videos.mkdir()
    frames = _gif_frames(16, GIF_HW)
    _write_gif(str(videos / "tumblr_x.gif"), frames)
    h.write_jsonl(str(root / "action.jsonl"), [
        {"gif_name": "tumblr_x", "question": "what does the bar do", "options": OPTIONS, "answer": 3}])
    args = build_tfrecords.parse_args([
        "--videos", str(videos), "--annotations", str(root / "action.jsonl"), "--output", str(root / "records"),
        "--format", "tgif_mc", "--geometry", "tgif", "--num_shards", "1", "--workers", "1",
        "--sample_rate", "2", "--num_candidates", "2", "--min_clips", "2"])
    report = build_tfrecords.build(args)
    record = _records(str(root / "records" / "train-*.tfrecord"))["0"]
    return dict(frames=frames, report=report, record=record)


def test_tgif_records_are_letterboxed(tgif_build):
    record, frames = tgif_build["record"], tgif_build["frames"]
    assert tgif_build["report"]["records"] == 1 and tgif_build["report"]["skipped"] == []
    assert (record.frame_height, record.frame_width, record.num_frames, record.answer) == (768, 768, 16, 3)
    assert record.texts == [f"what does the bar do {o}" for o in OPTIONS]
    rows = letterbox_size(GIF_HW, 192)[0]  # 109 of 192 rows hold the picture, the rest is padding
    assert rows == 109
    for index, jpeg in zip(record.lr_frames, record.lr_jpeg):
        stored = h.decode_jpeg(jpeg).astype(int)
        assert stored.shape == (192, 192, 3)
        assert np.abs(stored[rows + 16:] - TGIF_PAD_VALUE).max() <= 2  # past JPEG's 16-row chroma blocks
        assert h.psnr(stored[:rows - 3], tgif_lr_frame(frames[index], 192)[:rows - 3]) > 30
    for index, jpeg in zip(record.middle_frames, record.hr_jpeg):
        stored = h.decode_jpeg(jpeg)
        expected = bicubic_resize(tgif_lr_frame(frames[index], 192), (768, 768))
        assert stored.shape == (768, 768, 3)
        assert h.psnr(stored, expected) > 35
        assert np.abs(stored[4 * rows + 24:].astype(int) - TGIF_PAD_VALUE).max() <= 2
        neighbour = bicubic_resize(tgif_lr_frame(frames[index + 1], 192), (768, 768))
        assert h.psnr(stored, expected) > h.psnr(stored, neighbour) + 3


# ---------------------------------------------------------------- records

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


# ---------------------------------------------------------------- demo

def test_demo_qa_annotations():
    rng = np.random.default_rng(0)
    contents = make_demo.demo_contents(6, rng)
    qa = make_demo.qa_entries(contents)
    assert len(qa) == 18
    for i, content in enumerate(contents):
        assert [(e["video_id"], e["answer"], e["answer_type"]) for e in qa[3 * i:3 * i + 3]] == [
            (f"{i:05d}", content.colour, "colour"), (f"{i:05d}", content.shape, "shape"),
            (f"{i:05d}", content.direction, "direction")]
    for i, (entry, content) in enumerate(zip(make_demo.qa_mc_entries(contents, rng), contents)):
        assert entry["gif_name"] == f"{i:05d}" and entry["question"] == "what does the shape do"
        assert len(set(entry["options"])) == 5 and entry["options"][entry["answer"]] == content.caption
        for option in entry["options"]:
            if option != content.caption:
                assert sum(a != b for a, b in zip(option.split(), content.caption.split())) == 1


def test_demo_builds_the_qa_splits(tmp_path):
    make_demo.main(["--output", str(tmp_path), "--num_train", "4", "--num_val", "2", "--frame_size", "64", "96",
                    "--duration", "2", "--workers", "1"])
    records = tmp_path / "records"
    vocab = load_ans2label(str(records / "qa_train_ans2label.json"))
    train_qa = [json.loads(line) for line in open(tmp_path / "annotations" / "qa_train.jsonl")]
    assert set(vocab) == {e["answer"] for e in train_qa}
    counts = {split: json.loads((records / f"{split}_report.json").read_text())["records"]
              for split in ("qa_train", "qa_test", "qa_mc_train", "qa_mc_test")}
    assert counts == {"qa_train": 12, "qa_test": 6, "qa_mc_train": 4, "qa_mc_test": 2}
    test_qa = [json.loads(line) for line in open(tmp_path / "annotations" / "qa_test.jsonl")]
    report = json.loads((records / "qa_test_report.json").read_text())
    assert len(report["warnings"]) == sum(e["answer"] not in vocab for e in test_qa)
    assert json.loads((records / "qa_test_build.json").read_text())["ans2label"] == str(
        records / "qa_train_ans2label.json")
    texts = [e[k] for name in ("qa_train", "qa_test") for e in (json.loads(line) for line in
             open(tmp_path / "annotations" / f"{name}.jsonl")) for k in ("question", "answer")]
    texts += [o for name in ("qa_mc_train", "qa_mc_test") for line in open(tmp_path / "annotations" / f"{name}.jsonl")
              for o in json.loads(line)["options"] + [json.loads(line)["question"]]]
    tokens = set(open(tmp_path / "vocab.txt").read().split())
    assert words_of(texts) <= tokens
    record = _records(str(records / "qa_test-*.tfrecord"))["0"]
    assert (record.texts, record.answer_text, record.answer_type) == (
        [test_qa[0]["question"]], test_qa[0]["answer"], "colour")
    assert (record.frame_height, record.frame_width) == (64, 96)
