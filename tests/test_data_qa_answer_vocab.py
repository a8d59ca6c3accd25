"""The answer vocabulary of open-ended video QA (ans2label): built by count, its file and its errors, and the
builder's answer flags (and the TGIF geometry's defaults)."""
from __future__ import annotations

import json

import pytest

from data_pipelines import build_tfrecords
from data_pipelines.answer_vocab import build_ans2label, write_ans2label
from hdvila_jax.data.answers import AnswerVocabError, load_ans2label


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


def test_answer_flag_and_geometry_defaults(capsys):
    base = ["--videos", "v", "--annotations", "a.jsonl", "--output", "o"]
    args = build_tfrecords.parse_args(base + ["--format", "msrvtt_qa"])
    assert (args.ans2label, args.unknown_answers, args.min_answer_count) == (None, None, 1)
    args = build_tfrecords.parse_args(base + ["--format", "tgif_frameqa", "--ans2label", "x.json"])
    assert (args.unknown_answers, args.min_answer_count) == ("keep", None)
    args = build_tfrecords.parse_args(base + ["--format", "tgif_mc", "--geometry", "tgif"])
    assert tuple(args.frame_size) == (768, 768)
    with pytest.raises(SystemExit):  # a flag error, named before anything is read or written
        build_tfrecords.parse_args(base + ["--geometry", "tgif", "--frame_size", "768", "1024"])
    assert "error: --geometry tgif letterboxes into a square: --frame_size must be square" in capsys.readouterr().err
