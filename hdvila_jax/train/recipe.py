"""Turning a task's recipe into numbers for the records at hand: epochs (the original's
``num_train_epochs`` and step-decay epochs) into optimizer steps, the number of evaluations
(``num_valid``) into an evaluation interval, and an open-ended QA head's size from its answer
vocabulary."""
from __future__ import annotations

import math

import ml_collections
from absl import logging

from hdvila_jax.data.answers import load_ans2label
from hdvila_jax.data.pipeline import list_files
from hdvila_jax.data.tfrecord_source import TFRecordDataSource
from hdvila_jax.tasks import get_task


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


def resolve_qa_outputs(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` with the QA head's output count set: 1 for multiple choice; for open-ended QA
    the answer vocabulary's size when ``model.num_qa_outputs`` is 0 (the original uses
    ``max(len(ans2label), 1500)`` outputs for MSRVTT-QA, set explicitly in its config). Other
    tasks are returned unchanged."""
    task = get_task(config)
    if task.objective != "qa":
        return config
    resolved = config.copy_and_resolve_references()
    if task.qa_type == "multiple_choice":
        if config.model.num_qa_outputs not in (0, 1):
            raise ValueError(f"config.model.num_qa_outputs={config.model.num_qa_outputs}: multiple choice scores "
                             "each option with one output (use 1)")
        resolved.model.num_qa_outputs = 1
        return resolved
    answers = len(load_ans2label(config.data.ans2label))
    if config.model.num_qa_outputs == 0:
        resolved.model.num_qa_outputs = answers
    elif config.model.num_qa_outputs < answers:
        raise ValueError(f"config.model.num_qa_outputs={config.model.num_qa_outputs} is smaller than the "
                         f"{answers} answers of config.data.ans2label={config.data.ans2label!r}")
    return resolved
