"""Support for the trainer tests: a small demo dataset, tiny configs, synthetic batches,
running the real entry point in subprocesses and reading what a run wrote."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from benchmarks.reporting import parse_result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBPROCESS_TIMEOUT = 600


def make_demo_data(root: str) -> str:
    """A 16-train / 8-val demo set under ``root`` (written once, reused by every test)."""
    if not os.path.exists(os.path.join(root, "vocab.txt")) or not os.path.isdir(os.path.join(root, "records")):
        subprocess.run([sys.executable, "-m", "data_pipelines.make_demo", "--output", root, "--num_train", "16",
                        "--num_val", "8", "--duration", "2", "--workers", "2"],
                       cwd=REPO, check=True, capture_output=True, timeout=SUBPROCESS_TIMEOUT)
    return root


def tiny_config(stage: int, data_root: str, **overrides):
    """The ``tiny`` variant of stage ``stage`` reading ``data_root``, with dotted-key overrides."""
    from configs import stage1, stage2
    from hdvila_jax.data.config import get_data_config

    config = (stage1 if stage == 1 else stage2).get_config("tiny")
    data = get_data_config("tiny", root=data_root)
    for key in ("train_files", "val_files", "vocab_file"):
        config.data[key] = data[key]
    config.demo_data_dir = ""
    return apply_overrides(config, overrides)


def apply_overrides(config, overrides: dict):
    """Set dotted-key ``overrides`` (``{'data.max_txt_len': 8}``) on ``config``; returns it."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return config


def process_results(procs) -> list[dict]:
    """Wait for each ``subprocess.Popen`` (stdout piped, text); fail with its stderr when one failed;
    the JSON each printed after the marker ``RESULT``."""
    results = []
    for p in procs:
        out, err = p.communicate(timeout=SUBPROCESS_TIMEOUT)
        assert p.returncode == 0, err[-5000:]
        results.append(parse_result(out))
    return results


def override_flags(overrides: dict) -> list[str]:
    """``{'a.b': v}`` -> ``['--config.a.b=v']`` for the entry point."""
    return [f"--config.{k}={v}" for k, v in overrides.items()]


def synthetic_batch(config, batch_size: int, seed: int = 0, clips: int = 1) -> dict[str, np.ndarray]:
    """Random uint8 frames and token ids with the pipeline's keys and dtypes (``mlm_labels`` for stage 2)."""
    rng = np.random.default_rng(seed)
    h, w = config.model.crop_size
    length = config.data.max_txt_len
    ids = rng.integers(5, 100, (batch_size, length)).astype(np.int32)
    batch = dict(img_middle=rng.integers(0, 256, (batch_size, clips, h, w, 3), dtype=np.uint8),
                 img_other=rng.integers(0, 256, (batch_size, clips, 6, h // 4, w // 4, 3), dtype=np.uint8),
                 text_input_ids=ids, text_input_mask=np.ones((batch_size, length), np.int32),
                 video_index=np.arange(batch_size, dtype=np.int32))
    if config.stage == 2:
        labels = np.where(rng.random((batch_size, length)) < 0.3, ids, -100).astype(np.int32)
        labels[:, 1] = ids[:, 1]  # at least one target per example
        batch["mlm_labels"] = labels
    return batch


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a child python: CPU, repo on the path, a shared compilation cache."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    env.update(extra)
    return env


def main_command(config_file: str, workdir: str, overrides: dict, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hdvila_jax.main", f"--config={os.path.join(REPO, config_file)}",
            f"--workdir={workdir}", *override_flags(overrides), *extra]


def run_main(config_file: str, workdir: str, overrides: dict, env: dict, *extra: str) -> subprocess.CompletedProcess:
    """Run the entry point to completion; fail with its output when it fails."""
    proc = subprocess.run(main_command(config_file, workdir, overrides, *extra), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    if proc.returncode:
        raise AssertionError(f"main exited with {proc.returncode}:\n{proc.stderr[-6000:]}")
    return proc


def read_metrics(workdir: str, prefix: str = "train/") -> dict[int, dict[str, float]]:
    """Per-step metrics with ``prefix`` from ``metrics.jsonl`` (later lines win)."""
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            values = {k: v for k, v in row.items() if k.startswith(prefix)}
            if values:
                rows.setdefault(row["step"], {}).update(values)
    return rows


def checkpoint_params(workdir: str, step: int) -> dict:
    """The ``variables`` item of checkpoint ``step`` as numpy arrays."""
    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", str(step), "variables")
    return ocp.StandardCheckpointer().restore(path)


def steps_on_disk(workdir: str) -> list[int]:
    """Finished checkpoint steps in a run directory."""
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def synthetic_train_iterator(config, process_index: int, process_count: int):
    """A resumable grain iterator of this process's slice of deterministic global batches: global
    example ``n`` is ``synthetic_batch(seed=n)``, so any process count sees the same global batch."""
    import grain

    local = config.batch_size // process_count

    def example(i):
        n = (i // local) * config.batch_size + process_index * local + i % local
        return {k: v[0] for k, v in synthetic_batch(config, 1, seed=n).items()}

    return iter(grain.MapDataset.range(10 ** 9).map(example).to_iter_dataset().batch(local))
