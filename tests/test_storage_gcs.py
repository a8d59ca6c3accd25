"""``hdvila_jax.storage`` on local and ``gs://`` paths, and a trainer run whose workdir is a bucket, against
a real GCS JSON-API server on loopback (fake-gcs-server, ``tests/gcs_emulator.py``)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from hdvila_jax import storage
from tests import train_helpers
from tests.gcs_emulator import upload_tree


# ---- the path layer, local ------------------------------------------------------------------------------------

def test_local_paths_are_used_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not storage.is_remote("runs/a") and not storage.is_remote("/abs/a") and storage.is_remote("gs://b/a")
    assert str(storage.path("runs/a")) == "runs/a"  # relative stays relative
    assert storage.absolute("runs/a") == str(tmp_path / "runs" / "a")
    assert storage.join("runs", "a", "b.txt") == os.path.join("runs", "a", "b.txt")
    storage.makedirs("runs/a")
    storage.makedirs("runs/a")  # exists: fine
    storage.write_text("runs/a/x.txt", "one")
    storage.write_text("runs/a/x.txt", "two")  # replaced whole
    storage.write_bytes("runs/a/sub/y.bin", b"\x00\x01")  # folder made
    assert storage.read_text("runs/a/x.txt") == "two" and storage.read_bytes("runs/a/sub/y.bin") == b"\x00\x01"
    assert oct(os.stat("runs/a/x.txt").st_mode & 0o777) == oct(0o666 & ~_umask())  # as open() makes it
    assert storage.exists("runs/a") and storage.isdir("runs/a") and storage.isfile("runs/a/x.txt")
    assert not storage.exists("runs/nothing") and not storage.isfile("runs/a")
    assert storage.listdir("runs/a") == ["sub", "x.txt"]  # no temporary files left
    assert storage.glob("runs/a/*.txt") == ["runs/a/x.txt"]
    assert storage.glob("runs/**/*.bin") == ["runs/a/sub/y.bin"]
    storage.rename("runs/a/sub", "runs/a/moved")
    assert storage.listdir("runs/a") == ["moved", "x.txt"]
    storage.rmtree("runs/a/moved")
    storage.rmtree("runs/a/moved", missing_ok=True)
    assert storage.listdir("runs/a") == ["x.txt"] and storage.dirname("runs/a/x.txt") == "runs/a"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_absolute_keeps_gs_paths():
    assert storage.absolute("gs://bucket/run/") == "gs://bucket/run"
    assert storage.absolute("gs://bucket/run/checkpoints") == "gs://bucket/run/checkpoints"
    assert storage.join("gs://bucket/run", "checkpoints", "4") == "gs://bucket/run/checkpoints/4"
    assert storage.dirname("gs://bucket/run/config.json") == "gs://bucket/run"
    assert storage.dirname("gs://bucket/run") == storage.dirname("gs://bucket") == "gs://bucket"
    with pytest.raises(ValueError, match="only local paths and gs://"):
        storage.path("s3://bucket/x")
    # The one os.path.abspath outside storage's own remote branches (config_files' package root of a .py
    # config) never sees gs://: a python config in a bucket is refused before it.
    from hdvila_jax import config_files
    with pytest.raises(config_files.ConfigFileError, match="only .json configs are read from gs://"):
        config_files.load_config("gs://bucket/configs/stage1.py:tiny")  # was "config file 'gs' does not exist"
    assert config_files.split_spec("gs://bucket/configs/stage1.py:tiny") == ("gs://bucket/configs/stage1.py", "tiny")
    assert config_files.split_spec("configs/stage1.py:tiny") == ("configs/stage1.py", "tiny")
    assert config_files.split_spec("gs://bucket/run/config.json") == ("gs://bucket/run/config.json", "")


def test_gs_path_without_gcsfs_says_how_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    with pytest.raises(ImportError) as error:
        storage.read_text("gs://bucket/run/config.json")
    message = str(error.value)
    assert "\n" not in message and 'pip install -e ".[gs]"' in message and "gs://bucket/run/config.json" in message


def test_import_sets_the_environment_from_storage_emulator_host_alone():
    keep = {k: v for k, v in os.environ.items()
            if k not in ("EPATH_USE_TF", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "TENSORSTORE_GCS_HTTP_URL",
                         "GOOGLE_AUTH_TOKEN_FOR_TESTING", "STORAGE_EMULATOR_HOST")}
    code = ("import os, hdvila_jax.storage; print([os.environ.get(k) for k in ('EPATH_USE_TF', "
            "'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', 'TENSORSTORE_GCS_HTTP_URL', 'GOOGLE_AUTH_TOKEN_FOR_TESTING')])")
    run = lambda env: subprocess.run([sys.executable, "-c", code], env=env, cwd=train_helpers.REPO,  # noqa: E731
                                     capture_output=True, text=True, check=True, timeout=120).stdout.strip()
    assert run({**keep, "STORAGE_EMULATOR_HOST": "localhost:4443"}) == str(
        ["false", "false", "http://localhost:4443", "emulator"])
    assert run(keep) == str(["false", "false", None, None])  # no emulator: real GCS, usual credentials


# ---- the path layer, gs:// --------------------------------------------------------------------------------------

def test_gs_paths(gcs_bucket):
    root = f"gs://{gcs_bucket}/run"
    assert not storage.exists(root)
    storage.makedirs(root)  # no directories on an object store: nothing to make
    storage.write_text(storage.join(root, "config.json"), "{}")
    storage.write_text(storage.join(root, "config.json"), '{"a": 1}')
    storage.write_bytes(storage.join(root, "sub", "y.bin"), b"\x00\x01")
    assert json.loads(storage.read_text(f"{root}/config.json")) == {"a": 1}
    assert storage.read_bytes(f"{root}/sub/y.bin") == b"\x00\x01"
    assert storage.exists(root) and storage.isdir(root) and storage.isdir(f"{root}/sub")
    assert storage.isfile(f"{root}/config.json") and not storage.isfile(root) and not storage.exists(f"{root}/no")
    assert storage.listdir(root) == ["config.json", "sub"]
    assert storage.glob(f"{root}/*.json") == [f"{root}/config.json"]
    assert storage.glob(f"gs://{gcs_bucket}/**/*.bin") == [f"{root}/sub/y.bin"]
    storage.rename(f"{root}/sub", f"{root}/moved")
    assert storage.listdir(root) == ["config.json", "moved"]
    assert storage.read_bytes(f"{root}/moved/y.bin") == b"\x00\x01"
    storage.rmtree(f"{root}/moved")
    storage.rmtree(f"{root}/moved", missing_ok=True)
    assert storage.listdir(root) == ["config.json"]
    assert str(storage.path(root)) == root


def test_gs_access_in_a_forked_child(gcs_bucket):
    """etils keeps one gcsfs instance per process; storage drops it in a forked child (grain workers)."""
    target = f"gs://{gcs_bucket}/fork.txt"
    code = textwrap.dedent(f"""
        import os
        from hdvila_jax import storage
        storage.write_text({target!r}, "parent")
        pid = os.fork()
        if pid == 0:
            storage.write_text({target!r}, storage.read_text({target!r}) + "+child")
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        print(storage.read_text({target!r}))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), cwd=train_helpers.REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "parent+child"


def test_metrics_writer_keeps_earlier_lines_and_uploads_events(gcs_bucket, tmp_path):
    import tensorflow as tf

    from hdvila_jax.metrics_writer import MetricsWriter
    workdir = f"gs://{gcs_bucket}/run"
    for steps in ((1, 2), (3,)):  # a run, then its resumption: objects cannot be appended to
        writer = MetricsWriter(workdir)
        for step in steps:
            writer.write(step, {"train/loss": step / 10})
        writer.close()
    rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    assert rows == [{"step": s, "train/loss": s / 10} for s in (1, 2, 3)]
    events = storage.glob(f"{workdir}/tensorboard/events.out.tfevents.*")
    assert len(events) == 2  # one events file per writer
    scalars = []
    for i, event_file in enumerate(events):  # readable by TensorFlow once downloaded
        local = tmp_path / f"events{i}"
        local.write_bytes(storage.read_bytes(event_file))
        for event in tf.compat.v1.train.summary_iterator(str(local)):
            scalars += [(event.step, v.tag, round(float(tf.make_ndarray(v.tensor)), 6)) for v in event.summary.value]
    assert sorted(scalars) == [(s, "train/loss", s / 10) for s in (1, 2, 3)]
    assert not list(tmp_path.glob("gs:*")) and not os.path.exists(os.path.join(os.getcwd(), "gs:"))


@pytest.mark.parametrize("where", ["local", "gs"])
def test_metrics_writer_drops_the_lines_a_resumed_run_writes_again(where, request, tmp_path):
    from hdvila_jax.metrics_writer import MetricsWriter
    workdir = str(tmp_path / "run") if where == "local" else f"gs://{request.getfixturevalue('gcs_bucket')}/run"
    storage.makedirs(workdir)
    writer = MetricsWriter(workdir)
    writer.write(0, {"eval/r1": 0.5})
    for step in (1, 2, 3, 4, 5):  # checkpoints at 2 and 4, interrupted after step 5's line
        writer.write(step, {"train/loss": step / 10})
    writer.close()
    path = storage.join(workdir, "metrics.jsonl")
    storage.write_text(path, storage.read_text(path) + '{"step": 6, "train/lo')  # a write cut short

    resumed = MetricsWriter(workdir)
    assert resumed.drop_after(4) == 2  # step 5 and the torn line
    resumed.write(5, {"train/loss": 0.55})
    resumed.close()
    rows = [json.loads(line) for line in storage.read_text(path).splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3, 4, 5] and rows[-1]["train/loss"] == 0.55

    again = MetricsWriter(workdir)  # no checkpoint survived: the run starts over, step-0 evaluation included
    assert again.drop_after(0) == 6 and again.drop_after(0) == 0
    again.close()
    assert storage.read_text(path) == ""


def test_checkpointer_in_a_bucket_sets_a_damaged_step_aside(gcs_bucket):
    import grain
    import jax
    import jax.numpy as jnp

    from hdvila_jax.train.checkpointing import Checkpointer

    def state(step):
        return {"params": {"w": jnp.full((3,), step, jnp.float32)}, "batch_stats": {"m": jnp.zeros((2,))},
                "opt_state": {"mu": jnp.ones((3,)) * step}, "step": jnp.asarray(step, jnp.int32),
                "rng": jnp.asarray([0, step], jnp.uint32)}

    dataset = grain.MapDataset.range(100).batch(2).to_iter_dataset()
    directory = f"gs://{gcs_bucket}/run/checkpoints"
    checkpointer = Checkpointer(directory, keep=3)
    assert checkpointer.directory == directory
    iterator = iter(dataset)
    for step in (1, 2):
        next(iterator)
        checkpointer.save(step, state(step), iterator)
    checkpointer.wait()
    checkpointer.close()
    # step 2's optimizer state data lost (tiny arrays live inside ocdbt's b-tree nodes: remove them all)
    lost = storage.glob(f"{directory}/2/train/**/*ocdbt") + storage.glob(f"{directory}/2/train/**/d/*")
    assert len(lost) >= 3, lost
    for path in lost:
        storage.path(path).unlink()

    checkpointer = Checkpointer(directory, keep=3)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(
        jax.devices()[0])), state(0))
    iterator = iter(dataset)
    restored, step, skipped = checkpointer.restore_newest_intact(target, iterator)
    checkpointer.close()
    assert step == 1 and int(restored["step"]) == 1 and np.array_equal(restored["params"]["w"], [1, 1, 1])
    assert len(skipped) == 1 and skipped[0].startswith("step 2 (") and skipped[0].endswith(f"{directory}/2.damaged-0")
    assert storage.listdir(directory) == ["1", "2.damaged-0"]
    assert next(iterator).tolist() == [2, 3]  # the input pipeline where step 1 left it


# ---- the trainer with its workdir in a bucket -------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return train_helpers.make_demo_data(str(tmp_path_factory.getbasetemp() / "demo_data"))


def _train_2_then_4(data_root, workdir):
    """2 steps, then the same config with 4 steps, resuming from the checkpoint of step 2."""
    from hdvila_jax.train import trainer
    for total in (2, 4):
        config = train_helpers.tiny_config(1, data_root, total_steps=total, ckpt_every_steps=2, log_every_steps=1,
                                           eval_every_steps=1000, best_metric="t2v_R1")
        trainer.train_and_evaluate(config, workdir)


def _gs_folders(*roots) -> list[str]:
    found = []
    for root in roots:
        found += [os.path.join(folder, name) for folder, dirs, _ in os.walk(root) for name in dirs if name == "gs:"]
    return found


def test_stage1_run_in_a_bucket_resumes_exactly_and_the_encoder_reads_it(gcs_bucket, demo_root, tmp_path,
                                                                         tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where os.path.abspath("gs://...") would put a "gs:" folder
    local = str(tmp_path / "local")
    _train_2_then_4(demo_root, local)
    workdir, data_root = f"gs://{gcs_bucket}/run", f"gs://{gcs_bucket}/demo"  # records and vocab in the bucket too
    upload_tree(os.path.join(demo_root, "records"), f"{data_root}/records")
    storage.copy(os.path.join(demo_root, "vocab.txt"), f"{data_root}/vocab.txt")
    _train_2_then_4(data_root, workdir)

    names = storage.listdir(workdir)
    assert {"checkpoints", "config.json", "metrics.jsonl", "tensorboard", "best"} <= set(names), names
    assert sorted(n for n in storage.listdir(f"{workdir}/checkpoints") if n.isdigit()) == ["2", "4"]
    assert json.loads(storage.read_text(f"{workdir}/config.json"))["total_steps"] == 4
    rows = [json.loads(line) for line in storage.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    train_steps = [row["step"] for row in rows if any(k.startswith("train/") for k in row)]
    assert train_steps == [1, 2, 3, 4]  # each once: the first run's lines kept across the resumption
    local_rows = train_helpers.read_metrics(local)
    assert {r["step"]: r["train/loss"] for r in rows if "train/loss" in r} == {
        s: r["train/loss"] for s, r in local_rows.items()}
    best = json.loads(storage.read_text(f"{workdir}/best/best.json"))
    assert best["path"].startswith(f"{workdir}/best/step_") and storage.isdir(best["path"])

    # the same parameters, bit for bit, as the same 2 + 2 steps with a local workdir
    a = traverse_util.flatten_dict(train_helpers.checkpoint_params(local, 4), sep="/")
    stored = ocp.StandardCheckpointer().restore(storage.path(f"{workdir}/checkpoints/4/variables"))
    b = traverse_util.flatten_dict(stored, sep="/")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key

    from hdvila_jax.encoder import Encoder
    encoder = Encoder.from_checkpoint(f"{workdir}/checkpoints")
    assert encoder.origin == f"{workdir}/checkpoints/4/variables"
    texts = encoder.encode_texts(["a red circle moves left", "a blue square"])
    assert texts.shape == (2, encoder.dim) and np.all(np.isfinite(texts))
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-3)

    # a search index of local records built with the bucket's checkpoint records where it came from
    from hdvila_jax.search import build_index
    config = train_helpers.tiny_config(1, demo_root, total_steps=4)
    manifest = build_index(config, f"{workdir}/checkpoints", config.data.val_files, str(tmp_path / "index"),
                           progress=False)
    assert manifest["checkpoint"] == f"{workdir}/checkpoints"
    assert manifest["restored_from"] == f"{workdir}/checkpoints/4/variables"

    import tempfile
    assert not _gs_folders(tmp_path, tmp_path_factory.getbasetemp(), train_helpers.REPO + "/hdvila_jax",
                           train_helpers.REPO + "/tests")
    assert not [p for p in (train_helpers.REPO, tempfile.gettempdir()) if os.path.exists(os.path.join(p, "gs:"))]


def test_demo_bootstrap_trains_into_the_run_folder_in_the_bucket(gcs_bucket, tmp_path, monkeypatch):
    """A downstream demo whose init.restore is in a bucket with no checkpoint trains its pretraining run
    into that bucket folder (not into a local "gs:" folder)."""
    from configs import retrieval
    from hdvila_jax import demo
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "prepare_demo_data", lambda config: None)
    config = retrieval.get_config("demo")
    config.init.restore = f"gs://{gcs_bucket}/demo_stage1/checkpoints"
    trained = []
    demo.prepare_demo_init(config, os.path.join(train_helpers.REPO, "configs", "retrieval.py"),
                           lambda cfg, workdir: trained.append(workdir))
    assert trained == [f"gs://{gcs_bucket}/demo_stage1"]
    assert not _gs_folders(tmp_path)
