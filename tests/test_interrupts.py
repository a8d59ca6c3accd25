"""Ctrl-C is never lost (issue 31): Python drops a KeyboardInterrupt raised inside a garbage-collection
callback (jax runs one at every collection), so a Ctrl-C landing there let the run train on; with
``hdvila_jax.interrupts`` it is raised once the collection is over. And a Ctrl-C while the first step
compiles ends ``hdvila_jax.main`` cleanly."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests import train_helpers

# A collection during which SIGINT arrives and its handler runs (inside a gc callback).
SCRIPT = """
import gc, os, signal, sys, time
from hdvila_jax import interrupts
if sys.argv[1] == "ours":
    interrupts.install()
armed = []
def interrupted_in_gc(phase, info):
    if phase == "start" and armed:
        armed.clear()
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass
gc.callbacks.append(interrupted_in_gc)
armed.append(1)
try:
    gc.collect()
    time.sleep(1)
    print("lost")
except KeyboardInterrupt:
    print("raised")
"""


@pytest.mark.parametrize("handler, expected", [("default", "lost"), ("ours", "raised")])
def test_a_ctrl_c_during_a_garbage_collection_is_raised_after_it(handler, expected):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, handler], cwd=train_helpers.REPO, capture_output=True,
                          text=True, env=train_helpers.subprocess_env(), timeout=60)
    assert proc.stdout.strip() == expected, proc.stderr


@pytest.mark.slow
def test_ctrl_c_twice_while_the_first_step_compiles_exits_cleanly(tmp_path_factory, tmp_path):
    root = train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))
    overrides = {"data.train_files": os.path.join(root, "records", "train-*.tfrecord"),
                 "data.val_files": os.path.join(root, "records", "val-*.tfrecord"),
                 "data.vocab_file": os.path.join(root, "vocab.txt"), "demo_data_dir": "", "total_steps": 4,
                 "compilation_cache_dir": ""}  # nothing cached: the train step compiles for tens of seconds
    env = train_helpers.subprocess_env(JAX_COMPILATION_CACHE_DIR="", JAX_ENABLE_COMPILATION_CACHE="false")
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(train_helpers.main_command("configs/stage1.py:tiny", workdir, overrides), env=env,
                            cwd=train_helpers.REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = []
    for line in proc.stderr:  # the step-0 eval is logged, then the train step compiles
        stderr.append(line)
        if "step 0 eval:" in line:
            break
    time.sleep(2)
    proc.send_signal(signal.SIGINT)  # the first one asks for a checkpoint at the next step boundary
    time.sleep(1)
    proc.send_signal(signal.SIGINT)  # the second one stops at once
    _, rest = proc.communicate(timeout=120)
    stderr = "".join(stderr) + rest
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Segmentation fault" not in stderr and "Fatal Python error" not in stderr
    assert stderr.strip().splitlines()[-1] == ("interrupted (Ctrl-C): stopped without saving; the workdir's "
                                               "complete checkpoints are kept")
    assert not train_helpers.steps_on_disk(workdir)
