"""Multi-process start-up: explicit flags, auto-detection (a SLURM job, faked with its environment
variables on this host), and a plain single process when no cluster is found."""
import os
import subprocess
import sys

from tests import train_helpers

START = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from absl import flags
from jax.experimental import multihost_utils
from hdvila_jax import multihost
flags.FLAGS(sys.argv)
how = multihost.initialize_from_flags()
total = multihost_utils.process_allgather(np.int32(jax.process_index() + 1)).sum()  # a real cross-process collective
print("RESULT" + json.dumps(dict(how=how, index=jax.process_index(), count=jax.process_count(), total=int(total))))
"""
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _start(args: list[str], extra_env: dict[str, str]) -> subprocess.Popen:
    env = {k: v for k, v in train_helpers.subprocess_env().items() if k not in SLURM_VARS}
    env.update(extra_env)
    return subprocess.Popen([sys.executable, "-c", START, *args], env=env, cwd=train_helpers.REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _port() -> int:
    return 30000 + os.getpid() % 10000


def test_no_cluster_is_a_single_process():
    (result,) = train_helpers.process_results([_start([], {})])
    assert result == dict(how="single process", index=0, count=1, total=1)


def test_explicit_flags_join_two_processes():
    flags = [f"--coordinator_address=127.0.0.1:{_port()}", "--num_processes=2"]
    results = train_helpers.process_results([_start([*flags, f"--process_id={i}"], {}) for i in range(2)])
    assert [(r["how"], r["index"], r["count"], r["total"]) for r in results] == [
        ("explicit", 0, 2, 3), ("explicit", 1, 2, 3)]


def test_a_slurm_job_is_detected_without_flags():
    slurm = dict(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="127.0.0.1", SLURM_NTASKS="2",
                 JAX_COORDINATOR_PORT=str(_port() + 1))
    results = train_helpers.process_results([_start([], dict(slurm, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)))
                                             for i in range(2)])
    assert [(r["how"], r["index"], r["count"], r["total"]) for r in results] == [
        ("auto-detected", 0, 2, 3), ("auto-detected", 1, 2, 3)]
