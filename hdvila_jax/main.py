"""Entry point of HD-VILA pretraining and the downstream tasks: one trainer, configured by ml_collections config files.

    python -m hdvila_jax.main --config=configs/stage1.py:demo --workdir=runs/demo_stage1
    python -m hdvila_jax.main --config=configs/stage1.py --workdir=DIR --config.batch_size=256
    python -m hdvila_jax.main --config=configs/stage1.py:demo --workdir=DIR --mode=eval

Several hosts: the same command on each. On a TPU VM slice and under SLURM or Open MPI jax
finds the processes itself; elsewhere pass --coordinator_address/--num_processes/--process_id
(or set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every host.
"""
import jax
from absl import app, flags, logging
from ml_collections import config_flags

from hdvila_jax import demo, eval_only, multihost
from hdvila_jax.config_checks import check_config
from hdvila_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Trainer config file[:variant].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config, metrics and checkpoints.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from workdir) or eval-only.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    how = multihost.initialize_from_flags()
    logging.info("process %d/%d (%s), %d local / %d global devices", jax.process_index(), jax.process_count(), how,
                 jax.local_device_count(), jax.device_count())
    config = _CONFIG.value
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
