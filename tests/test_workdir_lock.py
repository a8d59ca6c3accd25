"""One training run per workdir (``hdvila_jax/train/workdir_lock.py``): a second run stops at once naming
the first; the lock of a run that crashed or was killed is taken over; local and ``gs://``."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from hdvila_jax import storage
from hdvila_jax.train import workdir_lock
from hdvila_jax.train.workdir_lock import WorkdirLock, WorkdirLockedError
from tests import train_helpers


def _gone_pid() -> int:
    """The pid of a process of this host that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(params=["local", "gs"])
def workdir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return f"gs://{request.getfixturevalue('gcs_bucket')}/run"


def test_a_second_lock_is_refused_naming_the_holder_then_released(workdir):
    lock = WorkdirLock(workdir)
    path = storage.join(workdir, workdir_lock.LOCK)
    held = json.loads(storage.read_text(path))
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(WorkdirLockedError, match=rf"is in use by the run of pid {os.getpid()} on "
                                                 rf"{socket.gethostname()} .*stop it first, or use another --workdir"):
        WorkdirLock(workdir)
    lock.release()
    assert not storage.exists(path)
    WorkdirLock(workdir).release()  # free again


@pytest.mark.parametrize("holder", ["dead pid of this host", "silent host", "torn file"])
def test_a_stale_lock_is_taken_over(workdir, holder, caplog):
    path = storage.join(workdir, workdir_lock.LOCK)
    now = time.time()
    contents = {"dead pid of this host": json.dumps(dict(host=socket.gethostname(), pid=_gone_pid(), started=now,
                                                         heartbeat=now)),
                "silent host": json.dumps(dict(host="another-host", pid=1, started=now - 999,
                                               heartbeat=now - workdir_lock.STALE_S - 5)),
                "torn file": '{"host": "x", "pi'}[holder]
    storage.write_text(path, contents)
    lock = WorkdirLock(workdir)
    assert json.loads(storage.read_text(path))["pid"] == os.getpid()
    assert "taking over the stale lock" in caplog.text
    lock.release()


def test_a_live_lock_of_another_host_is_refused(workdir):
    path = storage.join(workdir, workdir_lock.LOCK)
    storage.write_text(path, json.dumps(dict(host="pod-host-3", pid=4242, started=time.time(), heartbeat=time.time())))
    with pytest.raises(WorkdirLockedError, match="pid 4242 on pod-host-3 .* If that run is gone, its lock goes stale"):
        WorkdirLock(workdir)
    assert json.loads(storage.read_text(path))["pid"] == 4242  # left as it was


@pytest.mark.slow
def test_a_second_main_on_a_running_workdir_stops_at_once(tmp_path, tmp_path_factory):
    demo = train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))
    overrides = {"data.train_files": os.path.join(demo, "records", "train-*.tfrecord"),
                 "data.val_files": os.path.join(demo, "records", "val-*.tfrecord"),
                 "data.vocab_file": os.path.join(demo, "vocab.txt"), "demo_data_dir": "''",
                 "total_steps": 1000, "ckpt_every_steps": 1000, "eval_every_steps": 1000, "log_every_steps": 1}
    workdir = str(tmp_path / "run")
    env = train_helpers.subprocess_env()
    first = subprocess.Popen(train_helpers.main_command("configs/stage1.py:tiny", workdir, overrides), env=env,
                             cwd=train_helpers.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + train_helpers.SUBPROCESS_TIMEOUT
        while not os.path.exists(os.path.join(workdir, "metrics.jsonl")) or not train_helpers.read_metrics(workdir):
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start training"
            time.sleep(0.2)
        second = subprocess.run(train_helpers.main_command("configs/stage1.py:tiny", workdir, overrides), env=env,
                                cwd=train_helpers.REPO, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: workdir {workdir} is in use by the run of pid {first.pid} on "), last
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait()
    assert os.path.exists(os.path.join(workdir, workdir_lock.LOCK))  # left by the kill -9, and stale now
