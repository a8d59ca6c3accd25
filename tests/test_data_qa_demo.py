"""The demo's video QA files: its QA annotations and the QA splits it builds."""
from __future__ import annotations

import json

import numpy as np

from data_pipelines import make_demo
from data_pipelines.vocab import words_of
from hdvila_jax.data.answers import load_ans2label
from tests import data_helpers as h


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
    record = h.records_by_id(str(records / "qa_test-*.tfrecord"))["0"]
    assert (record.texts, record.answer_text, record.answer_type) == (
        [test_qa[0]["question"]], test_qa[0]["answer"], "colour")
    assert (record.frame_height, record.frame_width) == (64, 96)
