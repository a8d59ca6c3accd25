"""The entry point is plain Python and JAX: a run starts one interpreter per process, and the project
sets no LD_PRELOAD or GLIBC_TUNABLES (no re-exec, no preloaded allocator)."""
import json
import os

import pytest

from tests import train_helpers

# Every interpreter that starts with this folder on PYTHONPATH appends its pid and its malloc settings.
SITECUSTOMIZE = """import json, os
with open(os.environ["HDVILA_TEST_STARTS"], "a") as f:
    f.write(json.dumps(dict(pid=os.getpid(), ld_preload=os.environ.get("LD_PRELOAD", ""),
                            glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""))) + "\\n")
"""


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def test_a_one_step_run_is_one_interpreter_without_malloc_tricks(demo_root, tmp_path):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    starts = tmp_path / "starts.jsonl"
    env = train_helpers.subprocess_env(PYTHONPATH=f"{hooks}{os.pathsep}{train_helpers.REPO}",
                                       HDVILA_TEST_STARTS=str(starts))
    for name in ("LD_PRELOAD", "GLIBC_TUNABLES"):
        env.pop(name, None)
    overrides = {"data.train_files": os.path.join(demo_root, "records", "train-*.tfrecord"),
                 "data.val_files": os.path.join(demo_root, "records", "val-*.tfrecord"),
                 "data.vocab_file": os.path.join(demo_root, "vocab.txt"), "demo_data_dir": "''",
                 "total_steps": 1, "eval_every_steps": 1000}
    workdir = str(tmp_path / "run")
    train_helpers.run_main("configs/stage1.py:tiny", workdir, overrides, env)
    lines = [json.loads(line) for line in starts.read_text().splitlines()]
    assert len(lines) == 1, lines  # no re-exec, no helper interpreter
    assert lines[0]["ld_preload"] == "" and lines[0]["glibc_tunables"] == "", lines
    assert sorted(train_helpers.read_metrics(workdir)) == [1]
