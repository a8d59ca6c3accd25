"""Turning a task's recipe into numbers for the records at hand: epochs (the original's
``num_train_epochs`` and step-decay epochs) into optimizer steps, and the number of evaluations
(``num_valid``) into an evaluation interval."""
from __future__ import annotations

import math

import ml_collections
from absl import logging

from hdvila_jax.data.pipeline import list_files
from hdvila_jax.data.tfrecord_source import TFRecordDataSource


def resolve_epochs(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with ``total_steps = ceil(epochs * N / batch_size)`` and ``optimizer.decay_milestones``
    = each of ``optimizer.decay_milestone_epochs`` x N / batch_size (N = training records),
    as the original computes them; with ``config.num_evals`` > 0 also ``eval_every_steps =
    ceil(total_steps / num_evals)`` (the original's ``valid_steps``). Unchanged when ``config.epochs`` is 0."""
    if not config.get("epochs"):
        return config
    num_train = len(TFRecordDataSource(list_files(config.data.train_files, "train_files")))
    steps_per_epoch = num_train / config.batch_size
    resolved = config.copy_and_resolve_references()
    resolved.total_steps = max(1, math.ceil(config.epochs * steps_per_epoch))
    resolved.optimizer.decay_milestones = tuple(float(m) * steps_per_epoch
                                                for m in config.optimizer.decay_milestone_epochs)
    if config.get("num_evals"):
        resolved.eval_every_steps = math.ceil(resolved.total_steps / config.num_evals)
    logging.info("%s epochs of %d training records at batch %d: %d steps, lr milestones at steps %s",
                 config.epochs, num_train, config.batch_size, resolved.total_steps,
                 [round(m, 1) for m in resolved.optimizer.decay_milestones])
    return resolved
