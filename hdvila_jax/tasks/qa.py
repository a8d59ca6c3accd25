"""Video QA on the stage-2 model (docs/fidelity.md §13): the whole stage-2 model plus a new
head (``heads/qa_classifier``) fine-tuned with softmax cross-entropy over answers (``qa.type =
"open"``: MSRVTT-QA, TGIF FrameQA) or over the options of each question (``"multiple_choice"``:
TGIF Action and Transition), logits aggregated over clips by ``qa.aggregation``. Losses:
``qa_loss``; evaluation: ``qa_eval``.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from hdvila_jax.data.answers import load_ans2label
from hdvila_jax.models import HDVILA, ModelConfig
from hdvila_jax.tasks.base import BatchShapes, Task, TrainConfigError, require
from hdvila_jax.tasks.gradients import StepContext, accumulate_grads
from hdvila_jax.tasks.qa_eval import TEXT_KEYS, QAEvaluator, make_predict_fn
from hdvila_jax.tasks.qa_loss import AGGREGATIONS, IMAGE_KEYS, qa_inputs, qa_loss

QA_TYPES = ("open", "multiple_choice")
QA_HEAD = "params/heads/qa_classifier/"  # the QA head: new when fine-tuning a pretrained checkpoint
MC_CHOICES = 5  # candidate answers of a multiple-choice QA question (TGIF Action / Transition)


class QATask(Task):
    """Open-ended or multiple-choice video QA fine-tuned from ``config.init.restore``."""

    name = "qa"
    stage = 2
    fine_tuning = True
    new_parts = (QA_HEAD,)

    def __init__(self, qa_type: str, aggregation: str):
        self.qa_type = qa_type
        self.aggregation = aggregation

    def check(self, config: ml_collections.ConfigDict) -> None:
        require(config.qa.get("aggregation") in AGGREGATIONS, "qa.aggregation",
                f"must be one of {AGGREGATIONS}, got {config.qa.get('aggregation')!r}")
        require(config.data.mlm_probability == 0, "data.mlm_probability",
                f"video QA never masks its questions, got {config.data.mlm_probability}")
        if self.qa_type == "open":
            require(bool(config.data.get("ans2label")), "data.ans2label",
                    "open-ended QA needs the answer vocabulary json (answer -> index)")

    def resolve(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """``config`` with the QA head's output count set: 1 for multiple choice; for open-ended QA
        the answer vocabulary's size when ``model.num_qa_outputs`` is 0 (the original uses
        ``max(len(ans2label), 1500)`` outputs for MSRVTT-QA, set explicitly in its config)."""
        resolved = config.copy_and_resolve_references()
        if self.qa_type == "multiple_choice":
            if config.model.num_qa_outputs not in (0, 1):
                raise ValueError(f"config.model.num_qa_outputs={config.model.num_qa_outputs}: multiple choice "
                                 "scores each option with one output (use 1)")
            resolved.model.num_qa_outputs = 1
            return resolved
        answers = len(load_ans2label(config.data.ans2label))
        if config.model.num_qa_outputs == 0:
            resolved.model.num_qa_outputs = answers
        elif config.model.num_qa_outputs < answers:
            raise ValueError(f"config.model.num_qa_outputs={config.model.num_qa_outputs} is smaller than the "
                             f"{answers} answers of config.data.ans2label={config.data.ans2label!r}")
        return resolved

    def batch_shapes(self, config: ml_collections.ConfigDict, model_cfg: ModelConfig, batch_size: int,
                     clips: int, train: bool) -> BatchShapes:
        """Frames and the question (open) or the candidate answers ``[B, C, L]`` (multiple choice), and
        the label: the answer's index, or the right option's."""
        shapes = super().batch_shapes(config, model_cfg, batch_size, clips, train)
        b, length = batch_size, config.data.max_txt_len
        if self.qa_type == "multiple_choice":
            shapes.update(mc_text_input_ids=((b, MC_CHOICES, length), jnp.int32),
                          mc_text_input_mask=((b, MC_CHOICES, length), jnp.int32), mc_answer=((b,), jnp.int32))
        else:
            shapes["qa_label"] = ((b,), jnp.int32)
        return shapes

    def loss_and_grads(self, ctx: StepContext, trainable: dict, batch: Mapping[str, jax.Array], rng: jax.Array):
        """The mean over micro-batches (of equal sizes): the gradient of the whole batch's mean loss
        (the original sums the micro-batches' losses, docs/fidelity.md Q22)."""
        def loss_fn(tr, b, r):
            inputs, labels = qa_inputs(b, self.qa_type)
            logits = ctx.apply(tr, r, inputs, method=HDVILA.qa_logits)
            loss, aux = qa_loss(logits, labels, self.aggregation)
            return loss, aux["correct"].mean()

        k = ctx.accum_steps
        loss, correct, grads = accumulate_grads(trainable, ctx.micro_batches(batch), jnp.full((k,), 1.0 / k), rng,
                                                loss_fn)
        return loss, {"qa_accuracy": 100.0 * correct}, grads

    def eval_step(self, model: HDVILA) -> tuple[Callable, Sequence[str]]:
        return make_predict_fn(model, self.qa_type, self.aggregation), (*IMAGE_KEYS, *TEXT_KEYS[self.qa_type])

    def evaluator(self, config: ml_collections.ConfigDict, model: HDVILA, workdir: str) -> QAEvaluator:
        return QAEvaluator(config, model, workdir, self.qa_type, self.aggregation)


def qa_task(config: ml_collections.ConfigDict) -> QATask:
    """The QA task of ``config.qa`` (``type``: open / multiple_choice; ``aggregation``: mean / max / lse)."""
    qa = config.get("qa")
    if qa is None or qa.get("type") not in QA_TYPES:
        raise TrainConfigError(f"config.qa.type must be one of {QA_TYPES} for task qa, got "
                               f"{None if qa is None else qa.get('type')!r}")
    return QATask(qa.type, qa.get("aggregation", "mean"))
