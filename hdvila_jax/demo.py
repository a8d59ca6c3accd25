"""Bootstrapping the bundled demos: their records, and the pretraining runs the downstream demos
start from. Called by the entry point before the trainer; the trainer knows nothing of demos."""
from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from typing import Callable, Iterator

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

from hdvila_jax import config_files, storage
from hdvila_jax.variables_io import has_checkpoint

MAKE_DEMO = "data_pipelines.make_demo"  # the command (python -m) that writes the demo records


def prepare_demo_data(config: ml_collections.ConfigDict) -> None:
    """Write the demo records (``python -m data_pipelines.make_demo``) when ``config.demo_data_dir``
    is set and ``config.data.train_files`` matches nothing; process 0 writes, all wait for it."""
    if not config.demo_data_dir or storage.glob(config.data.train_files):
        return
    if jax.process_index() == 0:
        with _generation_lock(config.demo_data_dir):  # two runs started together: one generates, one waits
            if not storage.glob(config.data.train_files):
                logging.info("demo data missing: generating it in %s", config.demo_data_dir)
                command = [sys.executable, "-m", MAKE_DEMO, "--output", config.demo_data_dir,
                           "--workers", str(os.cpu_count() or 1)]
                subprocess.run(command, check=True)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("demo data ready")


@contextlib.contextmanager
def _generation_lock(folder: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<folder>/.make_demo.lock`` while held (a local folder; on gs:// none:
    the builder's objects land whole, so racing builders write the same files)."""
    if storage.is_remote(folder):
        yield
        return
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".make_demo.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def prepare_demo_init(config: ml_collections.ConfigDict, config_file: str,
                      train: Callable[[ml_collections.ConfigDict, str], object]) -> None:
    """Train ``config.init.demo_config`` ("module:variant", a config file beside ``config_file``)
    with ``train(config, workdir)`` into the run directory of ``config.init.restore`` (or
    ``init.stage1_checkpoint``) when that holds no checkpoint yet: the downstream demos and the
    stage-2 demo start from the demo pretraining runs, made on the fly."""
    source = config.init.restore or config.init.stage1_checkpoint
    if not config.init.demo_config or not source or has_checkpoint(source):
        return
    spec = config_files.sibling_spec(config_file, config.init.demo_config)
    demo = config_files.load_config(spec)
    workdir = storage.dirname(storage.absolute(source))
    logging.info("%s has no checkpoint: training %s into %s first", source, spec, workdir)
    prepare_demo_data(demo)
    prepare_demo_init(demo, config_files.split_spec(spec)[0], train)
    train(demo, workdir)
