"""Your own captions / questions (CSV, JSONL) -> train/val records; bad rows named by line and skipped;
fine-tuning configs/retrieval.py:custom_tiny on them; one-command evaluation of every retrieval set."""
import glob
import json
import os
import re
import subprocess
import sys

import pytest

from data_pipelines import custom_dataset
from data_pipelines.custom_annotations import read_custom_qa, read_custom_retrieval
from hdvila_jax import config_files
from hdvila_jax.data.records import parse_clip_record
from hdvila_jax.data.tfrecord_source import TFRecordDataSource
from tests import own_videos, train_helpers

CSV = """video,start,end,caption
wide.mp4,0,3,a blue square moves right
wide.mp4,0,3,the square slides to the right
clips/qcif.mp4,,,a green triangle moves up
missing.mp4,0,2,a clip of a file that is not there
wide.mp4,4,2,end before start
hd.mp4,1,3,
hd.mp4,0.5,3.5,a red circle moves left
"""


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("custom_videos"))
    own_videos.write_videos(folder, broken=False)
    return folder


def test_retrieval_rows_bad_lines_and_merged_captions(videos):
    path = os.path.join(videos, "captions.csv")
    with open(path, "w") as f:
        f.write(CSV)
    specs, bad, _ = read_custom_retrieval(path, videos)
    assert [(b.item, b.reason) for b in bad] == [
        (f"{path}:5", f"missing video file {os.path.join(videos, 'missing.mp4')}"),
        (f"{path}:6", "end (2) <= start (4)"),
        (f"{path}:7", "missing or empty caption")]
    assert [(s.clip_id, s.span, s.texts) for s in specs] == [
        ("wide.mp4@0-3", (0.0, 3.0), ("a blue square moves right", "the square slides to the right")),
        ("clips/qcif.mp4", None, ("a green triangle moves up",)),
        ("hd.mp4@0.5-3.5", (0.5, 3.5), ("a red circle moves left",))]
    assert specs[1].line == f"{path}:4" and specs[1].video_path == os.path.join(videos, "clips/qcif.mp4")


def test_qa_rows_jsonl_open_and_multiple_choice(videos):
    path = os.path.join(videos, "questions.jsonl")
    rows = [{"video": "hd.mp4", "question": "what colour is it", "answer": "red"},
            {"video": "hd.mp4", "question": "", "answer": "red"},
            {"video": "wide.mp4", "question": "what moves", "answer": "square",
             "choices": ["circle", "square", "triangle"]},
            {"video": "wide.mp4", "question": "which way", "answer": 2, "choices": ["up", "down", "right"]},
            {"video": "wide.mp4", "question": "which way", "answer": "left", "choices": ["up", "down", "right"]},
            {"video": "wide.mp4", "question": "how many", "answer": 0, "choices": ["one", "two"]}]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    specs, bad, _ = read_custom_qa(path, videos)
    assert [(s.line, s.answer_text) for s in specs] == [(f"{path}:1", "red"), (f"{path}:3", "square"),
                                                        (f"{path}:5", "left")]
    assert [(b.item, b.reason) for b in bad] == [(f"{path}:2", "missing or empty question"),
                                                 (f"{path}:4", "bad answer (2, expected a string)"),
                                                 (f"{path}:6", "bad answer (0, expected a string)")]
    mc, mc_bad, _ = read_custom_qa(path, videos, multiple_choice=True)
    assert [(s.answer, s.texts[s.answer]) for s in mc] == [(1, "what moves square"), (2, "which way right")]
    assert [(b.item, b.reason) for b in mc_bad] == [
        (f"{path}:1", "choices must be a list of at least 2 non-empty strings"),
        (f"{path}:2", "missing or empty question"),
        (f"{path}:5", "answer 'left' is neither one of the choices nor an index in [0, 3)"),
        (f"{path}:6", "2 choices, the file's first question has 3")]


@pytest.mark.parametrize("text, problem", [
    ("", "empty CSV (the first row must name the columns: video, caption)"),
    ("file,text\nwide.mp4,a blue square\n", "the header row (file, text) lacks the column(s) video, caption"),
    ("wide.mp4,a blue square\nhd.mp4,a red circle\n",
     "the header row (wide.mp4, a blue square) lacks the column(s) video, caption"),
])
def test_a_csv_without_the_right_header_is_named(videos, tmp_path, text, problem):
    path = tmp_path / "captions.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {problem}")):
        read_custom_retrieval(str(path), videos)
    proc = subprocess.run([sys.executable, "-m", "data_pipelines.custom_dataset", "--annotations", str(path),
                           "--videos", videos, "--output", str(tmp_path / "out")], cwd=train_helpers.REPO,
                          env=train_helpers.subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {path}: {problem}")


def test_unreadable_videos_spans_past_the_end_and_duplicates_are_found_before_the_split(tmp_path):
    folder = str(tmp_path / "videos")
    own_videos.write_videos(folder, names=("wide.mp4", "hd.mp4"))  # 6 s and 4 s, and a broken.mp4
    path = tmp_path / "captions.csv"
    path.write_text("video,start,end,caption\n"
                    "wide.mp4,0,3,a blue square\n"
                    "wide.mp4,0,3,a blue square\n"  # the same row again
                    "wide.mp4,4,9,past the end of a 6 s video\n"
                    "broken.mp4,,,not a video\n"
                    "hd.mp4,0,3,a red circle\n")
    specs, bad, duplicates = read_custom_retrieval(str(path), folder)
    assert [(d.item, d.reason) for d in duplicates] == [(f"{path}:3", f"duplicate of {path}:2")]
    assert specs[0].texts == ("a blue square",) and bad == []
    kept, unusable = custom_dataset.usable_clips(specs)
    assert [s.clip_id for s in kept] == ["wide.mp4@0-3", "hd.mp4@0-3"]
    assert [b.item for b in unusable] == [f"{path}:4", f"{path}:5"]
    assert unusable[0].reason.startswith("end (9) is past the video's end (6.")
    assert unusable[1].reason.startswith(f"unreadable video {os.path.join(folder, 'broken.mp4')}: unreadable")

    # Two usable videos: a val split of one; with a single usable video the val split would be empty.
    args = ["--annotations", str(path), "--videos", folder, "--frame_size", "72", "240", "--sample_rate", "2",
            "--num_shards", "1", "--workers", "1", "--min_clips", "1", "--num_candidates", "1"]
    summary = custom_dataset.convert(custom_dataset.parse_args([*args, "--output", str(tmp_path / "two"),
                                                                "--val_fraction", "0.5"]))
    assert summary["train"]["examples"] + summary["val"]["examples"] == 2
    assert [b["item"] for b in summary["bad_rows"]] == [f"{path}:4", f"{path}:5"]
    assert summary["duplicate_rows"] == [{"item": f"{path}:3", "reason": f"duplicate of {path}:2"}]
    (tmp_path / "one.csv").write_text("video,caption\nwide.mp4,a blue square\nbroken.mp4,not a video\n")
    with pytest.raises(SystemExit, match="error: the val split would be empty: 1 usable video.*--val_fraction 0"):
        custom_dataset.convert(custom_dataset.parse_args([*args, "--annotations", str(tmp_path / "one.csv"),
                                                          "--output", str(tmp_path / "one"), "--val_fraction", "0.5"]))


def test_split_keeps_videos_whole_and_both_splits_filled():
    from data_pipelines.annotations import ClipSpec
    specs = [ClipSpec(clip_id=f"c{i}", video_id=v, video_path=v, texts=("t",), span=(i, i + 1.0), video_index=i)
             for i, v in enumerate(["/a.mp4", "/a.mp4", "/b.mp4", "/c.mp4"])]
    splits = custom_dataset.split_videos(specs, 0.1)
    assert splits["train"] | splits["val"] == {"/a.mp4", "/b.mp4", "/c.mp4"}
    assert splits["train"] and splits["val"] and not splits["train"] & splits["val"]
    assert custom_dataset.split_videos(specs, 0.0)["val"] == set()


def test_custom_config_variants_take_paths_from_flags():
    config = config_files.load_config(os.path.join(train_helpers.REPO, "configs/retrieval.py:custom"))
    assert config.data.train_files == "data/custom/records/train-*.tfrecord" and config.task == "retrieval"
    qa = config_files.load_config(os.path.join(train_helpers.REPO, "configs/qa.py:custom_mc"))
    assert qa.qa.type == "multiple_choice" and qa.model.num_qa_outputs == 1
    assert config_files.load_config(os.path.join(train_helpers.REPO, "configs/qa.py:custom")).data.ans2label.endswith(
        "custom_qa/records/train_ans2label.json")


@pytest.mark.slow
def test_csv_to_records_fine_tune_and_evaluate(videos, tmp_path_factory):
    from hdvila_jax import evaluate
    from hdvila_jax.train import trainer

    base = str(tmp_path_factory.getbasetemp())
    checkpoints = own_videos.tiny_run(base)
    demo = os.path.join(base, "demo_data")
    # Captions of the demo videos (plus one bad row), as a user would write them.
    with open(os.path.join(demo, "annotations", "train.jsonl")) as f:
        captions = [json.loads(line)["text"] for line in f][:12]
    csv_path = os.path.join(demo, "my_captions.csv")
    with open(csv_path, "w") as f:
        f.write("video,caption\n" + "".join(f"videos/train/{i:05d}.mp4,{c}\n" for i, c in enumerate(captions)))
        f.write("videos/train/nope.mp4,a lost video\n")
    out = os.path.join(base, "custom_data")
    summary = custom_dataset.convert(custom_dataset.parse_args([
        "--annotations", csv_path, "--output", out, "--val_fraction", "0.25", "--frame_size", "72", "240",
        "--sample_rate", "2", "--num_shards", "1", "--workers", "1"]))
    assert summary["bad_rows"] == [{"item": f"{csv_path}:14", "reason":
                                    f"missing video file {os.path.join(demo, 'videos/train/nope.mp4')}"}]
    assert summary["train"]["examples"] + summary["val"]["examples"] == 12 and summary["val"]["examples"] >= 1
    val = TFRecordDataSource(sorted(glob.glob(summary["val"]["files"])))
    assert parse_clip_record(val[0]).texts[0] in captions

    config = config_files.load_config(os.path.join(train_helpers.REPO, "configs/retrieval.py:custom_tiny"))
    train_helpers.apply_overrides(config, {
        "data.train_files": summary["train"]["files"], "data.val_files": summary["val"]["files"],
        "data.vocab_file": os.path.join(demo, "vocab.txt"), "init.restore": checkpoints, "total_steps": 2,
        "eval_every_steps": 2, "ckpt_every_steps": 2, "batch_size": 4, "eval_batch_size": 4})
    workdir = os.path.join(base, "custom_run")
    metrics = trainer.train_and_evaluate(config, workdir)
    assert metrics["num_videos"] == summary["val"]["examples"] and 0 <= metrics["t2v_R1"] <= 100

    # The fine-tuned checkpoint on every set: msrvtt's records exist (the custom val split, laid out as
    # data/msrvtt/records/test-*), the other three are missing.
    records = os.path.join(base, "eval_data", "msrvtt", "records")
    os.makedirs(records, exist_ok=True)
    for path in glob.glob(summary["val"]["files"]):
        os.symlink(path, os.path.join(records, "test-" + os.path.basename(path).split("-", 1)[1]))
    results = evaluate.evaluate_sets(os.path.join(train_helpers.REPO, "configs/retrieval.py"), list(evaluate.SETS),
                                     os.path.join(workdir, "checkpoints"), os.path.join(base, "eval_out"),
                                     data_root=os.path.join(base, "eval_data"), batch_size=4)
    assert results["msrvtt"]["num_videos"] == summary["val"]["examples"]
    assert results["msrvtt"]["t2v_R1"] <= results["msrvtt"]["t2v_R5"] <= results["msrvtt"]["t2v_R10"] == 100.0
    assert all(results[name]["missing"].endswith(f"{name}/records/{split}-*.tfrecord")
               for name, split in (("didemo", "test"), ("lsmdc", "test"), ("actnet", "val")))
    table = evaluate.markdown_table(results)
    assert table.count("\n") == 5 and "| msrvtt | " in table and "| didemo | missing" in table
