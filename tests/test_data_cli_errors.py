"""The data commands' user mistakes (issue 31): a missing or unreadable input, a bad flag value, an output
that cannot be written end in one ``error:`` line naming the flag, file or row, a non-zero exit, no
traceback, and what was on disk before is still there. Each case drives the real command line."""
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines.synthetic_videos import write_mp4
from tests import train_helpers

BUILD = ["data_pipelines.build_tfrecords", "--workers", "1", "--num_shards", "1", "--frame_size", "64", "96",
         "--sample_rate", "2"]
CUSTOM = ["data_pipelines.custom_dataset", "--workers", "1", "--num_shards", "1", "--frame_size", "64", "96",
          "--sample_rate", "2"]
DEMO = ["data_pipelines.make_demo", "--num_train", "1", "--num_val", "1", "--frame_size", "64", "96",
        "--workers", "1"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=train_helpers.REPO, env=train_helpers.subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def _fails(args: list[str], code: int = 1) -> str:
    """Run ``python -m ARGS`` expecting exit ``code`` and no traceback; its last stderr line."""
    proc = _run(args)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture
def inputs(tmp_path):
    """A folder with one 2 s video (v0.mp4), its clip jsonl, a file in the way of an output, and
    damaged annotation files: a .json cut short, a CSV that is not UTF-8."""
    frames = np.random.default_rng(0).integers(0, 255, (30, 64, 96, 3), dtype=np.uint8)
    write_mp4(str(tmp_path / "v0.mp4"), frames, fps=15)
    (tmp_path / "clips.jsonl").write_text(json.dumps({"clip_id": "v0", "text": "a noisy video"}) + "\n")
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "cut.json").write_text('[{"clip_id": "v0", "text"')
    (tmp_path / "latin1.csv").write_bytes("video,caption\nv0.mp4,caf\xe9\n".encode("latin-1"))
    (tmp_path / "rows.csv").write_text("video,caption\nv0.mp4,a noisy video\n")
    return tmp_path


def test_build_names_an_annotation_file_that_is_not_json_or_not_utf8(inputs):
    last = _fails([*BUILD, "--videos", str(inputs), "--annotations", str(inputs / "cut.json"),
                   "--output", str(inputs / "out")])
    assert last.startswith(f"error: {inputs / 'cut.json'}: not valid JSON (")
    last = _fails([*BUILD, "--format", "custom", "--videos", str(inputs), "--annotations",
                   str(inputs / "latin1.csv"), "--output", str(inputs / "out")])
    assert last == f"error: {inputs / 'latin1.csv'}: not UTF-8 text (invalid continuation byte); save the CSV as UTF-8"
    last = _fails([*BUILD, "--format", "hdvila100m", "--videos", str(inputs), "--annotations",
                   str(inputs / "clips.jsonl"), "--transcripts", str(inputs / "cut.json"), "--output",
                   str(inputs / "out")])
    assert last.startswith(f"error: {inputs / 'cut.json'}: not valid JSON (")


def test_build_names_an_output_it_cannot_create_and_keeps_the_file_there(inputs):
    common = [*BUILD, "--videos", str(inputs), "--annotations", str(inputs / "clips.jsonl")]
    assert _fails([*common, "--output", str(inputs / "notes.txt")]) == (
        f"error: --output {inputs / 'notes.txt'} is a file; name a folder (new, or an earlier build's output)")
    assert _fails([*common, "--output", str(inputs / "notes.txt" / "records")]) == (
        f"error: --output {inputs / 'notes.txt' / 'records'}: cannot create the folder (Not a directory)")
    assert (inputs / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("flag, value, message", [
    ("--jpeg_quality", "500", "--jpeg_quality must be in [1, 100], got 500"),
    ("--sample_rate", "0", "--sample_rate must be >= 1 (frames between a clip's frames), got 0"),
    ("--frame_size", "63 95", "--frame_size must be positive and divisible by 4, got 63x95"),
])
def test_build_names_a_bad_option_before_writing_anything(inputs, flag, value, message):
    last = _fails([*BUILD, "--videos", str(inputs), "--annotations", str(inputs / "clips.jsonl"),
                   "--output", str(inputs / "out"), flag, *value.split()], code=2)
    assert last == f"build_tfrecords.py: error: {message}"
    assert not (inputs / "out").exists()


def test_build_names_a_bad_answer_vocabulary(inputs):
    (inputs / "qa.jsonl").write_text(json.dumps({"video_id": "v0", "question": "what", "answer": "noise"}) + "\n")
    last = _fails([*BUILD, "--format", "msrvtt_qa", "--videos", str(inputs), "--annotations",
                   str(inputs / "qa.jsonl"), "--ans2label", str(inputs / "cut.json"), "--output", str(inputs / "out")])
    assert last.startswith(f"error: --ans2label: {inputs / 'cut.json'}: not a JSON answer vocabulary")


def test_build_resumed_with_other_settings_is_refused_and_keeps_its_shards(inputs):
    common = [*BUILD, "--videos", str(inputs), "--annotations", str(inputs / "clips.jsonl"),
              "--output", str(inputs / "out")]
    assert _run(common).returncode == 0
    shard = inputs / "out" / "train-00000-of-00001.tfrecord"
    before = shard.read_bytes()
    assert _fails([*common, "--jpeg_quality", "80"]) == (
        f"error: {inputs / 'out' / 'train_build.json'}: existing shards were built with different settings "
        "(jpeg_quality); use another --output or delete them")
    assert shard.read_bytes() == before and len(before) > 0


def test_debug_shows_the_traceback_then_the_same_line(inputs):
    proc = _run([*BUILD, "--videos", str(inputs), "--annotations", str(inputs / "cut.json"),
                 "--output", str(inputs / "out"), "--debug"])
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "JSONDecodeError" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {inputs / 'cut.json'}: not valid JSON (")


def test_custom_dataset_names_an_annotation_file_that_is_not_utf8_and_a_missing_folder(inputs):
    assert _fails([*CUSTOM, "--annotations", str(inputs / "latin1.csv"), "--output", str(inputs / "out")]) == (
        f"error: {inputs / 'latin1.csv'}: not UTF-8 text (invalid continuation byte); save the CSV as UTF-8")
    assert _fails([*CUSTOM, "--annotations", str(inputs / "rows.csv"), "--videos", str(inputs / "nothere"),
                   "--output", str(inputs / "out2")], code=2) == (
        f"custom_dataset.py: error: --videos {inputs / 'nothere'}: no such folder")
    assert not (inputs / "out2").exists()


def test_custom_dataset_names_a_bad_flag_and_an_output_it_cannot_create(inputs):
    rows = ["--annotations", str(inputs / "rows.csv")]
    assert _fails([*CUSTOM, *rows, "--output", str(inputs / "out"), "--num_shards", "0"], code=2) == (
        "custom_dataset.py: error: --num_shards must be >= 1, got 0")
    assert _fails([*CUSTOM, *rows, "--output", str(inputs / "notes.txt")]) == (
        f"error: --output {inputs / 'notes.txt'} is a file; name a folder (new, or an earlier build's output)")
    assert (inputs / "notes.txt").read_text() == "keep me" and not (inputs / "out").exists()


def test_make_demo_names_bad_flags_and_outputs(inputs):
    assert _fails([*DEMO, "--output", str(inputs / "demo"), "--num_train", "0"], code=2) == (
        "make_demo.py: error: --num_train must be >= 1, got 0")
    assert _fails([*DEMO, "--output", str(inputs / "demo"), "--duration", "0"], code=2) == (
        "make_demo.py: error: --duration must be > 0 seconds, got 0.0")
    assert _fails([*DEMO, "--output", str(inputs / "notes.txt")]) == (
        f"error: --output {inputs / 'notes.txt'} is a file; name a folder (new, or an earlier build's output)")
    assert (inputs / "notes.txt").read_text() == "keep me" and not (inputs / "demo").exists()


def test_make_demo_with_videos_too_short_for_a_clip_is_an_error(inputs):
    last = _fails([*DEMO, "--output", str(inputs / "demo"), "--duration", "0.3"])
    assert last.startswith("error: the demo's train records are empty: every clip was skipped (too short: ")
    assert last.endswith("make the videos longer (--duration, --fps) or the clips shorter (--sample_rate, --min_clips)")


def test_beam_pipeline_without_beam_says_which_extra(tmp_path):
    if importlib.util.find_spec("apache_beam") is not None:
        pytest.skip("apache_beam is installed")
    assert _fails(["data_pipelines.beam_pipeline", "--help"]) == (
        "error: No module named 'apache_beam': the Beam build needs the [beam] extra: pip install -e '.[beam]'")
