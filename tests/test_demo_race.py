"""Two runs that both find the demo data missing (the README's first command, started twice): one
generates it, the other waits for it and generates nothing."""
import os
import threading
import time

import ml_collections

from hdvila_jax import demo


def test_two_runs_generate_the_demo_data_once(tmp_path, monkeypatch):
    folder = str(tmp_path / "demo_data")
    config = ml_collections.ConfigDict(dict(demo_data_dir=folder, data=dict(
        train_files=os.path.join(folder, "records", "train-*.tfrecord"))))
    calls = []

    def make_demo(command, check):  # the generator: slow, and its output appears at the end
        calls.append(command)
        time.sleep(0.5)
        os.makedirs(os.path.join(folder, "records"), exist_ok=True)
        with open(os.path.join(folder, "records", "train-00000-of-00001.tfrecord"), "wb") as f:
            f.write(b"records")

    monkeypatch.setattr(demo.subprocess, "run", make_demo)
    runs = [threading.Thread(target=demo.prepare_demo_data, args=(config,)) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert len(calls) == 1 and calls[0][2:4] == [demo.MAKE_DEMO, "--output"]
    assert os.listdir(os.path.join(folder, "records")) == ["train-00000-of-00001.tfrecord"]
