"""The tasks on the one trainer: each task module gives one :class:`~hdvila_jax.tasks.base.Task`
with its model stage, loss and gradient, batch shapes, evaluator and config checks.

    pretrain   stage 1 (InfoNCE, 0.5 x both directions) or stage 2 (MLM), by ``config.stage``
               (``pretrain.py``)
    retrieval  stage-1 dual encoder fine-tuned with the summed two-direction InfoNCE, evaluated by
               retrieval recall and MSRVTT multiple choice (``retrieval.py``)
    qa         the stage-2 model plus a new head fine-tuned on open-ended or multiple-choice video
               QA (``qa.py``)

A new task is a module with a Task subclass and a ``<name>_task(config)`` factory, registered in
:data:`TASKS`.
"""
from __future__ import annotations

from typing import Callable

import ml_collections

from hdvila_jax.tasks.base import Task, TrainConfigError
from hdvila_jax.tasks.pretrain import pretrain_task
from hdvila_jax.tasks.qa import qa_task
from hdvila_jax.tasks.retrieval import retrieval_task

TASKS: dict[str, Callable[[ml_collections.ConfigDict], Task]] = dict(
    pretrain=pretrain_task, retrieval=retrieval_task, qa=qa_task)


def get_task(config: ml_collections.ConfigDict) -> Task:
    """The :class:`Task` of a trainer config (``config.task``, default ``pretrain``)."""
    name = config.get("task", "pretrain")
    if name not in TASKS:
        raise TrainConfigError(f"config.task must be one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name](config)
