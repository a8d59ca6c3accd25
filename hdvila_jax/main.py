"""Entry point of HD-VILA pretraining and the downstream tasks: one trainer, configured by ml_collections config files.

    python -m hdvila_jax.main --config=configs/stage1.py:demo --workdir=runs/demo_stage1
    python -m hdvila_jax.main --config=configs/stage1.py --workdir=DIR --config.batch_size=256
    python -m hdvila_jax.main --config=configs/stage1.py:demo --workdir=DIR --mode=eval

Several hosts: the same command on each. On a TPU VM slice and under SLURM or Open MPI jax
finds the processes itself; elsewhere pass --coordinator_address/--num_processes/--process_id
(or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every host.
"""
import os
import sys
import threading

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from hdvila_jax import compilation_cache, demo, eval_only, multihost, storage
from hdvila_jax.config_checks import check_config
from hdvila_jax.train import trainer
from hdvila_jax.train.shared_workdir import SharedWorkdirError
from hdvila_jax.variables_io import CheckpointError

# Failures a user acts on (a bucket or server that is not there, a workdir the hosts do not share, a
# checkpoint that cannot be written or restored): one "error:" line on every process, no traceback.
_STOPPING_ERRORS = (storage.StorageError, SharedWorkdirError, CheckpointError)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Trainer config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config, metrics and checkpoints.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from workdir) or eval-only.")
flags.mark_flags_as_required(["config", "workdir"])


def _stopping_error(err: BaseException) -> BaseException | None:
    """The first of ``_STOPPING_ERRORS`` in ``err``'s chain of causes (an input worker's read error
    arrives wrapped), or None."""
    while err is not None and not isinstance(err, _STOPPING_ERRORS):
        err = err.__cause__ or err.__context__
    return err


def main(argv):
    try:
        _run(argv)
    except Exception as err:  # noqa: BLE001 -- re-raised unless it is one of _STOPPING_ERRORS
        found = _stopping_error(err)
        if found is None:
            raise
        print(f"error: {found}", file=sys.stderr, flush=True)
        logging.flush()
        if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
            os._exit(1)  # a save left unfinished (its server gone) would keep the interpreter from exiting
        raise SystemExit(1) from None


def _run(argv):
    del argv
    config = _CONFIG.value
    # before anything compiles (jax sets its cache up at the first compile)
    compilation_cache.setup_compilation_cache(config.get("compilation_cache_dir", compilation_cache.DEFAULT),
                                              _WORKDIR.value)
    how = multihost.initialize_from_flags()
    logging.info("process %d/%d (%s), %d local / %d global devices", jax.process_index(), jax.process_count(), how,
                 jax.local_device_count(), jax.device_count())
    _, task = check_config(config)  # the one check: a bad config fails before any data is made or anything compiles
    demo.prepare_demo_data(config)
    if _MODE.value == "train":
        demo.prepare_demo_init(config, config_flags.get_config_filename(flags.FLAGS["config"]),
                               trainer.train_and_evaluate)
        trainer.train_and_evaluate(config, _WORKDIR.value, task)
    else:
        eval_only.evaluate_checkpoint(config, _WORKDIR.value, task)


if __name__ == "__main__":
    app.run(main)
