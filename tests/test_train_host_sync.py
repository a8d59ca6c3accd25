"""The step loop never waits on the host between log steps: the steps in between make no
device-to-host transfer, on 8 forced CPU devices and with 2 processes (jax.distributed, gloo).

XLA:CPU arrays live in host memory, so jax's transfer guard does not fire on CPU; the test counts
instead every host read of a jax array (``ArrayImpl._value``, the path of ``jax.device_get``,
``float()``, ``np.asarray`` and ``bool()`` alike), per step of the real trainer."""
import os
import subprocess
import sys

import pytest

from tests import train_helpers

TRAIN_AND_COUNT = r"""
import json, sys
import jax
workdir, root, num_processes, process_id, port = sys.argv[1:6]
if int(num_processes) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id))
from jax._src import array
from hdvila_jax.data import pipeline
from hdvila_jax.train import trainer
from tests import train_helpers

reads = [0]
host_value = array.ArrayImpl._value
def counted(self):
    reads[0] += 1
    return host_value.fget(self)
array.ArrayImpl._value = property(counted)

reads_at_step = []  # host reads so far, at the dispatch of each train step
real_build = trainer.build_step
def recording_build(config, **kwargs):
    built = real_build(config, **kwargs)
    step = built.step
    def recorded(state, batch):
        reads_at_step.append(reads[0])
        return step(state, batch)
    built.step = recorded
    return built
trainer.build_step = recording_build
pipeline.make_train_iterator = train_helpers.synthetic_train_iterator
config = train_helpers.tiny_config(1, root, total_steps=7, log_every_steps=3, eval_every_steps=1000, batch_size=8,
                                   eval_batch_size=8, ckpt_every_steps=1000)
trainer.train_and_evaluate(config, workdir)
reads_at_step.append(reads[0])
print("RESULT" + json.dumps(dict(reads_at_step=reads_at_step, logged=sorted(train_helpers.read_metrics(workdir))
                                 if jax.process_index() == 0 else [])))
"""


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def _launch(workdir: str, root: str, num_processes: int, process_id: int, port: int, devices: int):
    env = train_helpers.subprocess_env(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, "-c", TRAIN_AND_COUNT, workdir, root, str(num_processes),
                             str(process_id), str(port)], env=env, cwd=train_helpers.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _assert_no_reads_between_log_steps(result: dict) -> None:
    reads = result["reads_at_step"]  # 7 dispatches, then the end of the run
    between = [later - earlier for earlier, later in zip(reads, reads[1:])]  # after step 1, 2, ..., 7
    assert len(between) == 7, result
    # Steps 1, 2, 4, 5 are neither log, eval nor checkpoint steps: nothing read back after them.
    assert [between[i] for i in (0, 1, 3, 4)] == [0, 0, 0, 0], between
    # Log steps 3 and 6 read the pending metrics (the count does see reads).
    assert between[2] > 0 and between[5] > 0, between


def test_steps_between_log_steps_read_nothing_back_on_eight_devices(demo_root, tmp_path):
    (result,) = train_helpers.process_results([_launch(str(tmp_path / "run"), demo_root, 1, 0, 0, devices=8)])
    _assert_no_reads_between_log_steps(result)
    assert result["logged"] == [3, 6, 7]


@pytest.mark.slow
def test_steps_between_log_steps_read_nothing_back_with_two_processes(demo_root, tmp_path):
    port = 21000 + os.getpid() % 10000
    results = train_helpers.process_results([_launch(str(tmp_path / "run"), demo_root, 2, i, port, devices=2)
                                             for i in range(2)])
    for result in results:
        _assert_no_reads_between_log_steps(result)
    assert results[0]["logged"] == [3, 6, 7]
