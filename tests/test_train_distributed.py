"""Sharded training equals single-device training: 8 forced CPU devices with FSDP, and
2 processes x 2 devices (jax.distributed, gloo) against 1 process x 4 devices; a SIGTERM to one of
2 processes stops both after the same step, with its checkpoint."""
import json
import os
import re
import signal
import subprocess
import time
import sys

import numpy as np
import pytest

from benchmarks.reporting import run_on_forced_devices
from tests import train_helpers

EIGHT_DEVICES = r"""
import json, jax, numpy as np
from flax import traverse_util
from tests.test_train_step import FLOAT64, assert_same_update, build
from tests.train_helpers import synthetic_batch, tiny_config
from hdvila_jax import sharding

jax.config.update("jax_enable_x64", True)


def run(mesh_axes, devices):
    # float64: in float32 the two summation orders move a few ReLU/max-pool decisions in the HR
    # ResNet (test_train_step.assert_accumulation_matches). eps=1 makes Adam's update linear in
    # small gradients (test_train_step.OVERRIDES).
    config = tiny_config(1, "unused", batch_size=8, fsdp_min_size=256, total_steps=100,
                         **{"optimizer.warmup_ratio": 0.0, "optimizer.eps": 1.0, "model.hidden_dropout_prob": 0.0,
                            "model.attention_probs_dropout_prob": 0.0, "model.timesformer_drop_path_rate": 0.0,
                            **FLOAT64})
    for group in config.optimizer.groups.values():
        group.lr = 0.05
    config.mesh.update(mesh_axes)
    if devices == 1:
        config.mesh.update({"data": 1, "fsdp": 1})
    state, step, mesh = build(config) if devices == 8 else _one_device(config)
    batch = sharding.global_batch(synthetic_batch(config, 8, seed=1), mesh)
    initial = jax.device_get(state["params"])
    losses = []
    for _ in range(2):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    return state, losses, initial

def _one_device(config):
    import hdvila_jax.sharding as sh
    original = sh.make_mesh
    sh.make_mesh = lambda axes: original(axes, devices=jax.devices()[:1])
    try:
        return build(config)
    finally:
        sh.make_mesh = original

assert jax.device_count() == 8
state8, losses8, initial8 = run({"data": 2, "fsdp": 4}, 8)
state1, losses1, initial1 = run({}, 1)
flat8 = traverse_util.flatten_dict(state8["params"], sep="/")
flat1 = traverse_util.flatten_dict(state1["params"], sep="/")
sharded = [p for p, a in flat8.items() if "fsdp" in str(a.sharding.spec)
           and a.addressable_shards[0].data.shape != a.shape]
moments = [a for a in jax.tree.leaves(state8["opt_state"]) if a.ndim and "fsdp" in str(a.sharding.spec)]
diff = max(float(np.max(np.abs(np.asarray(flat8[p]) - np.asarray(flat1[p])))) for p in flat1)
same_init = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(initial8), jax.tree.leaves(initial1)))
# Each parameter's update over the two steps: 8 devices == 1 device to 1e-5 of its size.
assert_same_update(initial1, jax.device_get(state8["params"]), jax.device_get(state1["params"]))
print("RESULT" + json.dumps(dict(losses8=losses8, losses1=losses1, max_param_diff=diff, same_init=same_init,
                                 sharded=len(sharded),
                                 total=len(flat8), sharded_moments=len(moments))))
"""


def test_eight_devices_equal_one_device():
    result = run_on_forced_devices(EIGHT_DEVICES)
    # Tolerance: sums in a different order across 8 shards, some of them float32.
    np.testing.assert_allclose(result["losses8"], result["losses1"], rtol=1e-5)
    assert result["same_init"], result
    # Updates compared in the child (assert_same_update). In float64 the runs end apart by the rounding
    # of what stays float32 (the losses, the gradient norm): ~4e-8 at most on a parameter.
    assert result["max_param_diff"] < 1e-6, result
    assert result["sharded"] >= 20 and result["sharded_moments"] >= 2 * result["sharded"], result


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


TRAIN_PROCESS = r"""
import json
import sys
import jax
workdir, root, num_processes, process_id, port, run_fields = sys.argv[1:7]
if int(num_processes) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id))
from hdvila_jax.data import pipeline
from hdvila_jax.train import trainer
from tests import train_helpers
# The record pipeline shards by process, so its global batch depends on the process count;
# the synthetic one does not. Evaluation reads the real validation records.
pipeline.make_train_iterator = train_helpers.synthetic_train_iterator
config = train_helpers.tiny_config(1, root, **json.loads(run_fields))
trainer.train_and_evaluate(config, workdir)
"""


def _launch(workdir, root, num_processes, process_id, port, devices, total_steps=3, **run_fields):
    env = train_helpers.subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    run_fields = dict(total_steps=total_steps, ckpt_every_steps=total_steps, eval_every_steps=total_steps,
                      **run_fields)
    return subprocess.Popen([sys.executable, "-c", TRAIN_PROCESS, workdir, root, str(num_processes),
                             str(process_id), str(port), json.dumps(run_fields)], env=env, cwd=train_helpers.REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(procs):
    for p in procs:
        _, err = p.communicate(timeout=train_helpers.SUBPROCESS_TIMEOUT)
        assert p.returncode == 0, err[-5000:]


def test_two_processes_equal_one_process(demo_root, tmp_path):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    _wait([_launch(single, demo_root, 1, 0, 0, devices=4)])
    port = 20000 + os.getpid() % 10000
    _wait([_launch(multi, demo_root, 2, i, port, devices=2) for i in range(2)])
    one, two = train_helpers.read_metrics(single), train_helpers.read_metrics(multi)
    assert sorted(one) == sorted(two) == [1, 2, 3]
    for step in one:  # dropout on: the same random bits whatever the sharding
        np.testing.assert_allclose(two[step]["train/loss"], one[step]["train/loss"], rtol=1e-5)
        np.testing.assert_allclose(two[step]["train/grad_norm"], one[step]["train/grad_norm"], rtol=1e-4)
    eval_one, eval_two = train_helpers.read_metrics(single, "eval/"), train_helpers.read_metrics(multi, "eval/")
    assert eval_one[3]["eval/num_videos"] == eval_two[3]["eval/num_videos"] == 8
    np.testing.assert_allclose(eval_two[3]["eval/t2v_MeanR"], eval_one[3]["eval/t2v_MeanR"])


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_after_the_same_step(demo_root, tmp_path):
    # jax's preemption sync point: the coordination service tells every process, with no per-step
    # collective, and all of them save the same step and exit 0.
    workdir, total = str(tmp_path / "run"), 500
    port = 20000 + (os.getpid() + 7) % 10000
    procs = [_launch(workdir, demo_root, 2, i, port, devices=2, total_steps=total, log_every_steps=1)
             for i in range(2)]
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + train_helpers.SUBPROCESS_TIMEOUT
    while not (os.path.exists(metrics) and 2 in train_helpers.read_metrics(workdir)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "no step 2 was logged"
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    stopped = []
    for p in procs:
        _, err = p.communicate(timeout=train_helpers.SUBPROCESS_TIMEOUT)
        assert p.returncode == 0, err[-5000:]
        found = re.search(r"preempted: checkpoint of step (\d+)", err)
        assert found, err[-3000:]
        stopped.append(int(found.group(1)))
    assert stopped[0] == stopped[1] < total, stopped
    assert train_helpers.steps_on_disk(workdir) == [stopped[0]]
