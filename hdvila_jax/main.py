"""Entry point of HD-VILA pretraining and the downstream tasks: one trainer, configured by ml_collections config files.

    python -m hdvila_jax.main --config=configs/stage1.py:demo --workdir=runs/demo_stage1
    python -m hdvila_jax.main --config=configs/stage1.py --workdir=DIR --config.batch_size=256
    python -m hdvila_jax.main --config=configs/stage1.py:demo --workdir=DIR --mode=eval

Several hosts: the same command on each. On a TPU VM slice and under SLURM or Open MPI jax
finds the processes itself; elsewhere pass --coordinator_address/--num_processes/--process_id
(or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every host.
"""
import difflib

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from hdvila_jax import (cli_errors, compilation_cache, config_files, demo, eval_only, interrupts, multihost,
                        quiet_logs, storage, tpu_flags)
from hdvila_jax.config_checks import check_config
from hdvila_jax.data.answers import AnswerVocabError
from hdvila_jax.models.config import ConfigError
from hdvila_jax.sharding import ShardingConfigError
from hdvila_jax.tasks.base import TrainConfigError
from hdvila_jax.train import trainer
from hdvila_jax.train.optimizer import OptimizerConfigError
from hdvila_jax.train.shared_workdir import SharedWorkdirError
from hdvila_jax.train.workdir_lock import WorkdirLockedError
from hdvila_jax.variables_io import CheckpointError

# Failures a user acts on (a config field out of range, a bucket or server that is not there, a
# workdir the hosts do not share, a checkpoint that cannot be written or restored): one "error:" line
# on every process, exit 1, no traceback (--debug: the traceback first).
_STOPPING_ERRORS = (TrainConfigError, ConfigError, ShardingConfigError, OptimizerConfigError, AnswerVocabError,
                    storage.StorageError, SharedWorkdirError, WorkdirLockedError, CheckpointError)

_CONFIG = config_flags.DEFINE_config_file("config", None, "Trainer config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config, metrics and checkpoints.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from workdir) or eval-only.")
flags.mark_flags_as_required(["config", "workdir"])
cli_errors.define_debug_flag()
_INTERRUPTED_MESSAGE = "interrupted (Ctrl-C): stopped without saving; the workdir's complete checkpoints are kept"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an override naming no config field (``--config.batch_sise=8``) as one
    ``error:`` line naming the flag and the closest known fields."""
    with cli_errors.user_errors(debug=cli_errors.debug_in_argv(argv)):
        try:
            return flags.FLAGS(argv)
        except (AttributeError, KeyError):
            specs = [arg.split("=", 1)[1] for arg in argv[1:] if arg.startswith("--config=")]
            config = config_files.load_config(specs[-1]) if specs else None
            for arg in argv[1:]:
                name = arg.split("=", 1)[0][len("--config."):] if arg.startswith("--config.") else ""
                if name and (problem := _unknown_field(config, name)):
                    raise cli_errors.UserError(f"--config.{name}: {problem}")
            raise


def _unknown_field(config, dotted: str) -> str:
    """Why ``dotted`` names no field of ``config`` (with the closest known names), or "" if it does."""
    node = config
    for depth, key in enumerate(dotted.split(".")):
        known = list(node.keys()) if hasattr(node, "keys") else []
        if key not in known:
            where = "config" if depth == 0 else "config." + ".".join(dotted.split(".")[:depth])
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; {where} has: {', '.join(sorted(known))}"
            return f"{where} has no field {key!r}{hint}"
        node = node[key]
    return ""


def main(argv: list[str]) -> None:
    """Train or evaluate (see the module docstring); a user's mistake is one ``error:`` line."""
    # a Ctrl-C before training starts, or a second one (the first one checkpoints), ends with one line
    interrupts.install()
    with cli_errors.user_errors(*_STOPPING_ERRORS, interrupted=_INTERRUPTED_MESSAGE):
        _run(argv)


def _run(argv):
    del argv
    quiet_logs.quiet_library_logs()
    config = _CONFIG.value
    if storage.isfile(_WORKDIR.value):
        raise TrainConfigError(f"--workdir={_WORKDIR.value} is a file; name a folder (new or a run's)")
    # before anything compiles (jax sets its cache up at the first compile)
    compilation_cache.setup_compilation_cache(config.get("compilation_cache_dir", compilation_cache.DEFAULT),
                                              _WORKDIR.value)
    tpu_flags.apply(config.get("libtpu_flags", ""))  # before libtpu starts (multi-host setup may start it)
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
    app.run(main, flags_parser=_parse_flags)
