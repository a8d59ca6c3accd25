"""Several processes and one workdir: 2 CPU processes (gloo on 127.0.0.1) training into a ``gs://``
workdir on fake-gcs-server (``tests/gcs_emulator.py``) resume there and reuse their compiled steps from
a ``gs://`` compilation cache, and their checkpoint restores in 1 process; 2 processes given
workdirs on their own disks stop at once with one clear line. Also where the compilation cache of
``hdvila_jax.main`` comes from (``hdvila_jax/compilation_cache.py``)."""
import json
import os
import re
import subprocess
import tempfile

import jax
import numpy as np
import pytest

from hdvila_jax import compilation_cache, storage
from tests import gcs_emulator, train_helpers

CACHE_OPTIONS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
                 "jax_persistent_cache_min_compile_time_secs", "jax_persistent_cache_min_entry_size_bytes")
CACHE_HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def _overrides(root: str, **extra) -> dict:
    return {"data.train_files": os.path.join(root, "records", "train-*.tfrecord"),
            "data.val_files": os.path.join(root, "records", "val-*.tfrecord"),
            "data.vocab_file": os.path.join(root, "vocab.txt"), "demo_data_dir": "''",
            "ckpt_every_steps": 2, "eval_every_steps": 1000, **extra}


def _run_two_processes(workdirs: list[str], overrides: dict, **env: str) -> list[subprocess.CompletedProcess]:
    """``python -m hdvila_jax.main`` as 2 processes of one run (one CPU device each), process i in
    ``workdirs[i]``; their exit codes and stderr (the environment, the emulator's included, is inherited)."""
    port = gcs_emulator.free_port()
    logs = [tempfile.TemporaryFile("w+") for _ in workdirs]  # not pipes: a full pipe would stall its process
    procs = [subprocess.Popen(train_helpers.main_command(
        "configs/stage1.py:tiny", workdir, overrides, f"--coordinator_address=127.0.0.1:{port}",
        "--num_processes=2", f"--process_id={i}"), env=train_helpers.subprocess_env(**env), cwd=train_helpers.REPO,
        stdout=subprocess.DEVNULL, stderr=log) for i, (workdir, log) in enumerate(zip(workdirs, logs))]
    done = []
    for p, log in zip(procs, logs):
        p.wait(timeout=train_helpers.SUBPROCESS_TIMEOUT)
        log.seek(0)
        done.append(subprocess.CompletedProcess(p.args, p.returncode, None, log.read()))
        log.close()
    return done


def _succeeded(runs: list[subprocess.CompletedProcess]) -> list[str]:
    for run in runs:
        assert run.returncode == 0, run.stderr[-5000:]
    return [run.stderr for run in runs]


@pytest.mark.slow
def test_two_processes_share_a_bucket_workdir_resume_reuse_compiled_steps_and_restore_on_one(
        gcs_bucket, demo_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a gs:// path taken for a local one would make a "gs:" folder
    workdir, cache = f"gs://{gcs_bucket}/run", f"gs://{gcs_bucket}/xla_cache"
    overrides = _overrides(demo_root, total_steps=4, compilation_cache_dir=cache)
    first = _succeeded(_run_two_processes([workdir] * 2, overrides))
    entries = storage.listdir(cache)
    assert any("train_step" in name for name in entries), entries  # written by process 0
    # as if preempted after step 2's checkpoint: the same job restarted resumes from step 2, and its compiled
    # train step comes from the cache (a config that differs, total_steps included, compiles another step)
    storage.rmtree(f"{workdir}/checkpoints/4")
    second = _succeeded(_run_two_processes([workdir] * 2, overrides, JAX_LOG_COMPILES="1"))
    for err in first:
        assert "starting at step 0 of 4" in err
    for err in second:
        assert f"starting at step 2 of 4 from resumed from {workdir}/checkpoints step 2" in err
    # process 0's: on a CPU each process compiles for its own device, a program whose cache key is its own, and
    # only process 0 writes entries (on a TPU slice every host compiles the same program and reads process 0's)
    assert any("train_step" in name for name in CACHE_HIT.findall(second[0])), second[0][-3000:]

    assert sorted(n for n in storage.listdir(f"{workdir}/checkpoints") if n.isdigit()) == ["2", "4"]
    rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert [row["step"] for row in rows if "train/loss" in row] == [1, 2, 3, 4]  # once each: one writer
    assert json.loads(storage.read_text(f"{workdir}/config.json"))["total_steps"] == 4
    assert not storage.exists(f"{workdir}/.hosts")  # the check's tokens are gone
    assert not os.path.exists(tmp_path / "gs:")

    # the checkpoint the 2 processes wrote, restored in this 1 process: the model's variables, all of them
    from hdvila_jax import variables_io
    from hdvila_jax.encoder import Encoder
    from hdvila_jax.models import model_config_from_dict
    from hdvila_jax.models.variables import abstract_variables
    config = train_helpers.tiny_config(1, demo_root)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
                          abstract_variables(model_config_from_dict(config.model.to_dict()), 1))
    steps = {step: variables_io.restore_variables(f"{workdir}/checkpoints/{step}", target) for step in (2, 4)}
    assert steps[4].unused == [] and steps[4].directory == f"{workdir}/checkpoints/4/variables"
    trained = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), steps[2].variables["params"],
                                           steps[4].variables["params"]))
    assert sum(trained) > len(trained) // 2  # steps 3 and 4 moved the parameters
    encoder = Encoder.from_checkpoint(f"{workdir}/checkpoints")
    texts = encoder.encode_texts(["a red circle moves left"])
    assert encoder.origin == f"{workdir}/checkpoints/4/variables" and np.all(np.isfinite(texts))


def test_two_processes_with_workdirs_on_their_own_disks_stop_at_once(demo_root, tmp_path):
    workdirs = [str(tmp_path / "a"), str(tmp_path / "b")]  # as on two hosts, each with its own disk
    runs = _run_two_processes(workdirs, _overrides(demo_root, total_steps=2))
    for run, workdir in zip(runs, workdirs):
        assert run.returncode != 0, run.stderr[-3000:]
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: workdir {workdir} is not shared by the 2 processes"), run.stderr[-3000:]
        assert "process 0 sees 1, process 1 sees 1 of 2" in last
        assert "Use a gs:// bucket" in last and "shared mount" in last
        assert os.listdir(workdir) == []  # stopped before config.json, checkpoints, metrics; tokens removed


@pytest.fixture
def restore_cache_options():
    """Put the cache options of this (the test) process back after a test changes them."""
    saved = {name: getattr(jax.config, name) for name in CACHE_OPTIONS}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


def test_compilation_cache_folder_follows_the_config_then_the_environment(tmp_path, restore_cache_options):
    workdir = str(tmp_path / "run")
    assert compilation_cache.cache_dir(compilation_cache.DEFAULT, workdir) == os.path.join(workdir, "xla_cache")
    assert compilation_cache.cache_dir("gs://b/cache/", workdir) == "gs://b/cache"
    assert compilation_cache.cache_dir("{workdir}/c", "gs://b/run") == "gs://b/run/c"
    assert compilation_cache.cache_dir("", workdir) == ""

    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "from_environment"))
    # the default yields to a cache the environment names (the test session's); any other value wins
    assert compilation_cache.setup_compilation_cache(compilation_cache.DEFAULT, workdir) == str(
        tmp_path / "from_environment")
    assert compilation_cache.setup_compilation_cache(str(tmp_path / "mine"), workdir) == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine") and jax.config.jax_enable_compilation_cache
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0  # small programs too
    assert compilation_cache.setup_compilation_cache("", workdir) == ""
    assert not jax.config.jax_enable_compilation_cache

    jax.config.update("jax_compilation_cache_dir", None)
    assert compilation_cache.setup_compilation_cache(compilation_cache.DEFAULT, workdir) == os.path.join(
        workdir, "xla_cache")
