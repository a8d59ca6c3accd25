"""The command lines of docs/cloud.md against fake-gcs-server on loopback (``tests/gcs_emulator.py``),
with only the emulator's environment set and nothing local: ``python -m hdvila_jax.main`` with its
workdir, records and vocab in a bucket, 2 steps then resumed to 4; and the server going away while a
checkpoint is being written: the run stops with one ``error:`` line, and once the server is back the
same command resumes from the last complete checkpoint."""
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.parse

import numpy as np
import pytest

from hdvila_jax import storage
from tests import gcs_emulator, train_helpers


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def _upload_demo(demo_root: str, bucket: str) -> dict:
    """The demo records and vocab copied to ``gs://bucket/demo/``; the data overrides that name them."""
    gcs_emulator.upload_tree(os.path.join(demo_root, "records"), f"gs://{bucket}/demo/records")
    storage.copy(os.path.join(demo_root, "vocab.txt"), f"gs://{bucket}/demo/vocab.txt")
    return {"demo_data_dir": "''", "data.train_files": f"gs://{bucket}/demo/records/train-*.tfrecord",
            "data.val_files": f"gs://{bucket}/demo/records/val-*.tfrecord",
            "data.vocab_file": f"gs://{bucket}/demo/vocab.txt"}


def _main(workdir: str, overrides: dict, cwd: str, stderr=subprocess.PIPE, **popen) -> subprocess.Popen:
    return subprocess.Popen(train_helpers.main_command("configs/stage1.py:tiny", workdir, overrides),
                            env=train_helpers.subprocess_env(), cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True, **popen)


def _finished(proc: subprocess.Popen) -> str:
    _, err = proc.communicate(timeout=train_helpers.SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, err[-5000:]
    return err


def _train_steps(workdir: str) -> list[int]:
    rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    return [row["step"] for row in rows if "train/loss" in row]


@pytest.mark.slow
def test_main_with_workdir_records_and_vocab_in_a_bucket_resumes_and_the_encoder_reads_it(
        gcs_bucket, demo_root, tmp_path):
    data = _upload_demo(demo_root, gcs_bucket)
    workdir = f"gs://{gcs_bucket}/runs/t"
    first = _finished(_main(workdir, {**data, "total_steps": 2}, str(tmp_path)))
    second = _finished(_main(workdir, {**data, "total_steps": 4}, str(tmp_path)))
    assert "starting at step 0 of 2" in first
    assert f"starting at step 2 of 4 from resumed from {workdir}/checkpoints step 2" in second
    assert sorted(n for n in storage.listdir(f"{workdir}/checkpoints") if n.isdigit()) == ["2", "4"]
    assert json.loads(storage.read_text(f"{workdir}/config.json"))["total_steps"] == 4
    assert _train_steps(workdir) == [1, 2, 3, 4]
    assert os.listdir(tmp_path) == []  # nothing local: no "gs:" folder

    from hdvila_jax.encoder import Encoder
    encoder = Encoder.from_checkpoint(f"{workdir}/checkpoints",
                                      config=os.path.join(train_helpers.REPO, "configs", "stage1.py:tiny"))
    texts = encoder.encode_texts(["a red circle moves left", "a blue square moves right"])
    assert encoder.origin == f"{workdir}/checkpoints/4/variables"
    assert texts.shape == (2, encoder.dim) and np.all(np.isfinite(texts))
    assert np.abs(texts[0] - texts[1]).max() > 1e-3


def _objects(root: str) -> list[str]:
    """The object names fake-gcs-server's filesystem backend holds under ``root``."""
    return [urllib.parse.unquote(os.path.relpath(os.path.join(folder, name), root))
            for folder, _, names in os.walk(root) for name in names]


@pytest.mark.slow
def test_server_gone_during_a_checkpoint_write_then_back_resumes_from_the_last_complete_one(demo_root, tmp_path):
    root, port, bucket = str(tmp_path / "buckets"), gcs_emulator.free_port(), "faults"
    workdir = f"gs://{bucket}/run"
    log = tempfile.TemporaryFile("w+")
    with gcs_emulator.gcs_emulator(port=port, root=root) as url:  # objects kept on disk across the restart
        gcs_emulator.create_bucket(url, bucket)
        overrides = {**_upload_demo(demo_root, bucket), "total_steps": 8, "ckpt_every_steps": 2,
                     "log_every_steps": 1, "eval_every_steps": 1000}
        proc = _main(workdir, overrides, str(tmp_path), stderr=log)
        deadline = time.monotonic() + train_helpers.SUBPROCESS_TIMEOUT
        while not any(name.startswith(f"{bucket}/run/checkpoints/4") for name in _objects(root)):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint of step 4 was started"
            time.sleep(0.05)
    stopped = time.monotonic()  # the server is gone while step 4's checkpoint is being written

    assert proc.wait(timeout=train_helpers.SUBPROCESS_TIMEOUT) == 1
    failed_after = time.monotonic() - stopped
    log.seek(0)
    err = log.read()
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {workdir}/") and "Cannot connect to host 127.0.0.1" in last, err[-3000:]
    assert failed_after < 240, failed_after  # gcsfs's retries (about 30 s a request), then a bounded wait
    # the save of step 4 is named: it failed, or was left unfinished
    assert re.search(rf"(checkpoint save in|saving a checkpoint in) {workdir}/checkpoints (did not finish|failed)",
                     err), err[-3000:]
    complete = [n for n in os.listdir(os.path.join(root, bucket, "run", "checkpoints")) if n.isdigit()]
    assert "2" in complete

    with gcs_emulator.gcs_emulator(port=port, root=root):  # back, with what it held
        resumed = _finished(_main(workdir, overrides, str(tmp_path)))
        assert f"starting at step 2 of 8 from resumed from {workdir}/checkpoints step 2" in resumed
        assert _train_steps(workdir) == list(range(1, 9))  # each once: the lines after step 2 dropped
        assert sorted(int(n) for n in storage.listdir(f"{workdir}/checkpoints") if n.isdigit()) == [4, 6, 8]
    assert os.listdir(tmp_path) == ["buckets"]
