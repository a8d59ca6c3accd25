"""Faults while training: damaged records in a shard, a damaged latest checkpoint, an interrupted save, a full disk."""
import glob
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import traverse_util

from hdvila_jax import variables_io
from hdvila_jax.data.tfrecord_source import record_offsets
from hdvila_jax.train import trainer
from tests import train_helpers
from tests.data_helpers import flip_byte


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def _config(root, **overrides):
    return train_helpers.tiny_config(1, root, eval_every_steps=1000, ckpt_every_steps=2, **overrides)


def _params(workdir, step):
    return traverse_util.flatten_dict(train_helpers.checkpoint_params(workdir, step), sep="/")


def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(demo_root, tmp_path, caplog):
    workdir = str(tmp_path / "run")
    trainer.train_and_evaluate(_config(demo_root, total_steps=4), workdir)
    assert train_helpers.steps_on_disk(workdir) == [2, 4]
    reference = _params(workdir, 4)
    ckpt = os.path.join(workdir, "checkpoints")
    # Damage step 4 (its optimizer state's array data files lost) and leave an interrupted save of step 6.
    lost = glob.glob(os.path.join(ckpt, "4", "train", "ocdbt.process_0", "d", "*"))
    assert lost
    for path in lost:
        os.remove(path)
    os.makedirs(os.path.join(ckpt, "6.orbax-checkpoint-tmp-1234", "variables"))

    caplog.set_level(logging.INFO)
    trainer.train_and_evaluate(_config(demo_root, total_steps=4), workdir)
    assert "cannot be restored" in caplog.text and "resumed from" in caplog.text and "step 2" in caplog.text
    assert os.path.isdir(os.path.join(ckpt, "4.damaged-0"))
    assert not glob.glob(os.path.join(ckpt, "*orbax-checkpoint-tmp*"))
    # Steps 3 and 4 were recomputed from step 2: bit-identical to the first run.
    redone = _params(workdir, 4)
    assert all(np.array_equal(reference[p], redone[p]) for p in reference)


def test_every_checkpoint_damaged_is_an_error_not_a_fresh_start(demo_root, tmp_path):
    workdir = str(tmp_path / "run")
    trainer.train_and_evaluate(_config(demo_root, total_steps=2), workdir)
    for meta in glob.glob(os.path.join(workdir, "checkpoints", "2", "variables", "*")):
        if os.path.isfile(meta):
            os.remove(meta)
        else:
            shutil.rmtree(meta)
    with pytest.raises(variables_io.CheckpointError, match="no checkpoint in .* could be restored"):
        trainer.train_and_evaluate(_config(demo_root, total_steps=4), workdir)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))  # left for inspection


IN_USER_NAMESPACE = "HDVILA_TEST_IN_USER_NAMESPACE"  # set when a test reruns itself under unshare


def _mount_tmpfs(path: str, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True).returncode == 0


def test_disk_full_while_saving_is_a_clear_error_and_keeps_the_previous_checkpoint(demo_root, tmp_path, request):
    disk = str(tmp_path / "disk")
    if not _mount_tmpfs(disk, "2g"):
        if os.environ.get(IN_USER_NAMESPACE) or shutil.which("unshare") is None:
            pytest.fail("cannot mount a tmpfs: needs root, or unshare(1) and unprivileged user namespaces")
        # Not root: run this test again as root of a user and mount namespace of its own.
        proc = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-m", "pytest",
                               "-q", "-p", "no:cacheprovider", request.node.nodeid], cwd=request.config.rootpath,
                              env=dict(os.environ, **{IN_USER_NAMESPACE: "1"}), capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        return
    try:
        workdir = os.path.join(disk, "run")
        trainer.train_and_evaluate(_config(demo_root, total_steps=2), workdir)
        before = _params(workdir, 2)
        stat = os.statvfs(disk)
        with open(os.path.join(disk, "ballast"), "wb") as f:  # leave 1 MiB free
            f.truncate(stat.f_bavail * stat.f_frsize - 2 ** 20)
            f.seek(0)
            f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 2 ** 20))
        with pytest.raises(variables_io.CheckpointError, match="disk full: .* newest complete checkpoint is step 2, intact"):
            trainer.train_and_evaluate(_config(demo_root, total_steps=4), workdir)
        os.remove(os.path.join(disk, "ballast"))
        assert train_helpers.steps_on_disk(workdir) == [2]
        after = _params(workdir, 2)
        assert all(np.array_equal(before[p], after[p]) for p in before)
    finally:
        subprocess.run(["umount", "-l", disk], check=False)


def test_training_skips_a_damaged_shard_and_counts_it_in_metrics(demo_root, tmp_path):
    root = tmp_path / "demo"
    shutil.copytree(demo_root, root)
    damaged = sorted(glob.glob(str(root / "records" / "train-*.tfrecord")))[0]
    offsets = record_offsets(damaged)
    for offset in offsets:  # one payload byte of every record of the shard
        flip_byte(damaged, offset + 100)
    workdir = str(tmp_path / "run")
    readable_steps = (16 - len(offsets)) // 4  # one epoch of the readable records, batch 4
    config = _config(str(root), total_steps=readable_steps + 1, log_every_steps=1)
    trainer.train_and_evaluate(config, workdir)
    rows = [row for _, row in sorted(train_helpers.read_metrics(workdir).items())]
    skipped = [r["train/data_skipped_records"] for r in rows if "train/data_skipped_records" in r]
    # A skip is counted with the example after it: once the second epoch has begun, every damaged
    # record of the first has come up and been skipped; the second epoch's may have begun to.
    assert len(offsets) <= skipped[-1] < 2 * len(offsets) and skipped == sorted(skipped)
    assert all(r.get("train/data_skipped_shards", 0) == 0 for r in rows)
