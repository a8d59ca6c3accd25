"""Checkpoints: exact resume after SIGKILL and after SIGTERM (save, exit 0), and the NaN guard never
saving bad state."""
import os
import signal
import subprocess
import time

import grain
import numpy as np
import pytest
from flax import traverse_util

from hdvila_jax.data import pipeline
from hdvila_jax.train import trainer
from hdvila_jax.train.pending_metrics import NonFiniteLossError
from tests import train_helpers


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def _overrides(root, **extra):
    return {"data.train_files": os.path.join(root, "records", "train-*.tfrecord"),
            "data.val_files": os.path.join(root, "records", "val-*.tfrecord"),
            "data.vocab_file": os.path.join(root, "vocab.txt"), "demo_data_dir": "''", **extra}


def _straight_run(demo_root, tmp_path_factory, **extra):
    """An uninterrupted 4-step run (checkpoints at 2 and 4), its overrides and environment."""
    tmp = tmp_path_factory.mktemp("straight")
    overrides = _overrides(demo_root, total_steps=4, ckpt_every_steps=2, eval_every_steps=1000, **extra)
    env = train_helpers.subprocess_env(JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
                                       JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    workdir = str(tmp / "straight")
    train_helpers.run_main("configs/stage1.py:tiny", workdir, overrides, env)
    return workdir, overrides, env


@pytest.fixture(scope="module")
def straight_run(demo_root, tmp_path_factory):
    return _straight_run(demo_root, tmp_path_factory)


@pytest.fixture(scope="module")
def straight_run_with_workers(demo_root, tmp_path_factory):
    """As ``straight_run``, decoding in 2 grain worker processes (whose stream depends on the count)."""
    return _straight_run(demo_root, tmp_path_factory, **{"data.num_workers": 2})


def _logged_steps(workdir) -> set[int]:
    path = os.path.join(workdir, "metrics.jsonl")
    return set(train_helpers.read_metrics(workdir)) if os.path.exists(path) else set()


def _interrupt(workdir, overrides, env, signum, ready) -> subprocess.Popen:
    """Start a run and send ``signum`` once ``ready(workdir)``; returns the finished process."""
    proc = subprocess.Popen(train_helpers.main_command("configs/stage1.py:tiny", workdir, overrides),
                            env=env, cwd=train_helpers.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + train_helpers.SUBPROCESS_TIMEOUT
    while not ready(workdir) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    try:
        proc.wait(timeout=train_helpers.SUBPROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the run did not exit within {train_helpers.SUBPROCESS_TIMEOUT} s of signal {signum}")
    return proc


def _assert_same_run(one_dir, two_dir):
    one, two = train_helpers.read_metrics(one_dir), train_helpers.read_metrics(two_dir)
    for step in (1, 2, 3, 4):
        for key in ("train/loss", "train/grad_norm", "train/t2v_acc", "train/param_norm"):
            assert two[step][key] == one[step][key], (step, key)
    a = traverse_util.flatten_dict(train_helpers.checkpoint_params(one_dir, 4), sep="/")
    b = traverse_util.flatten_dict(train_helpers.checkpoint_params(two_dir, 4), sep="/")
    assert a.keys() == b.keys()
    for path in a:
        assert np.array_equal(a[path], b[path]), path


def test_resume_after_sigkill_is_exact(straight_run, tmp_path):
    straight, overrides, env = straight_run
    killed = str(tmp_path / "killed")
    # Kill once step 2 is on disk; the final eval and save of step 4 take seconds more.
    _interrupt(killed, overrides, env, signal.SIGKILL, lambda w: 2 in train_helpers.steps_on_disk(w))
    assert train_helpers.steps_on_disk(killed) == [2], "the kill came too late"
    train_helpers.run_main("configs/stage1.py:tiny", killed, overrides, env)
    _assert_same_run(straight, killed)


def _sigterm_then_resume(straight_run, preempted, sig=signal.SIGTERM):
    straight, overrides, env = straight_run
    # SIGTERM once step 1 is logged: the step in flight finishes, is saved, and the process exits 0.
    proc = _interrupt(preempted, overrides, env, sig, lambda w: 1 in _logged_steps(w))
    stderr = proc.stderr.read().decode()
    assert proc.returncode == 0, stderr[-3000:]
    steps = train_helpers.steps_on_disk(preempted)
    assert "preempted: checkpoint of step" in stderr and max(steps) < 4, (steps, "the signal came too late")
    train_helpers.run_main("configs/stage1.py:tiny", preempted, overrides, env)
    _assert_same_run(straight, preempted)


def test_sigterm_saves_exits_zero_and_resumes_exactly(straight_run, tmp_path):
    _sigterm_then_resume(straight_run, str(tmp_path / "preempted"))


def test_ctrl_c_saves_exits_zero_and_resumes_exactly(straight_run, tmp_path):
    _sigterm_then_resume(straight_run, str(tmp_path / "interrupted"), signal.SIGINT)


@pytest.mark.slow
def test_sigterm_with_worker_processes_saves_exits_zero_and_resumes_exactly(straight_run_with_workers, straight_run,
                                                                            tmp_path):
    # The workers really decode: their batches (and so the losses) differ from the in-process stream's.
    with_workers, in_process = (train_helpers.read_metrics(run[0]) for run in (straight_run_with_workers, straight_run))
    assert [with_workers[s]["train/loss"] for s in (1, 2, 3, 4)] != [in_process[s]["train/loss"] for s in (1, 2, 3, 4)]
    _sigterm_then_resume(straight_run_with_workers, str(tmp_path / "preempted"))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(demo_root, tmp_path, monkeypatch):
    real = pipeline.make_train_iterator

    class Poisoned(grain.DatasetIterator):
        """Batch 3 has no valid text token: the masked text mean divides 0 by 0."""

        count = 0

        def __next__(self):
            batch = next(self._parent)
            self.count += 1
            if self.count == 3:
                batch["text_input_mask"] = np.zeros_like(batch["text_input_mask"])
            return batch

        def get_state(self):
            return self._parent.get_state()

        def set_state(self, state):
            self._parent.set_state(state)

    def poisoned(config, process_index, process_count):
        return Poisoned(real(config, process_index, process_count))

    monkeypatch.setattr(pipeline, "make_train_iterator", poisoned)
    config = train_helpers.tiny_config(1, demo_root, total_steps=6, ckpt_every_steps=2, eval_every_steps=1000)
    workdir = str(tmp_path / "run")
    with pytest.raises(NonFiniteLossError, match="step 3: loss nan"):
        trainer.train_and_evaluate(config, workdir)
    assert train_helpers.steps_on_disk(workdir) == [2]
    params = traverse_util.flatten_dict(train_helpers.checkpoint_params(workdir, 2), sep="/")
    assert all(np.all(np.isfinite(v)) for v in params.values())
    assert max(train_helpers.read_metrics(workdir)) == 2
