"""Downstream tasks on the one trainer: each task names its model stage, its training
objective and its evaluation; ``get_task(config)`` is what the trainer dispatches on.

    pretrain   stage 1 (InfoNCE, 0.5 x both directions) or stage 2 (MLM), by ``config.stage``
    retrieval  stage-1 dual encoder fine-tuned with the summed two-direction InfoNCE
               (SPEC_DOWNSTREAM 3), evaluated by retrieval recall and MSRVTT multiple choice
    qa         the whole stage-2 model plus a new head (``heads/qa_classifier``) fine-tuned with
               softmax cross-entropy over answers (``qa.type = "open"``: MSRVTT-QA, TGIF FrameQA)
               or over the options of each question (``"multiple_choice"``: TGIF Action and
               Transition), logits aggregated over clips by ``qa.aggregation`` (SPEC_DOWNSTREAM 4)
"""
from __future__ import annotations

import dataclasses

import jax

from hdvila_jax.losses import contrastive_loss

TASKS = ("pretrain", "retrieval", "qa")
QA_TYPES = ("open", "multiple_choice")
# Weight of each InfoNCE direction: pretraining stage 1 averages CE(S) and CE(S^T), the original's
# retrieval NCEContrastiveLoss sums them.
PRETRAIN_DIRECTION_WEIGHT = 0.5
RETRIEVAL_DIRECTION_WEIGHT = 1.0
QA_HEAD = "params/heads/qa_classifier/"  # the QA head: new when fine-tuning a pretrained checkpoint


@dataclasses.dataclass(frozen=True)
class Task:
    """What the train step and the evaluation need to know about a task."""

    name: str
    stage: int  # model parts: 1 = dual encoder, 2 = + cross-modal encoder and heads
    objective: str  # "contrastive", "mlm" or "qa"
    direction_weight: float = 0.5  # weight of each InfoNCE direction (contrastive objective)
    temperature: float = 0.0
    fine_tuning: bool = False  # init.restore = pretrained variables (a subset is taken), fresh optimizer
    new_parts: tuple[str, ...] = ()  # variable path prefixes a pretrained checkpoint may lack: kept at init
    qa_type: str = ""  # "open" or "multiple_choice" (objective "qa")
    aggregation: str = ""  # clip aggregation of the QA logits: "mean", "max" or "lse"

    def contrastive_loss(self, text_features: jax.Array, video_features: jax.Array):
        """InfoNCE of the (global) batch with this task's temperature and direction weight."""
        return contrastive_loss(text_features, video_features, self.temperature, self.direction_weight)


def get_task(config) -> Task:
    """The :class:`Task` of a trainer config (``config.task``, default ``pretrain``)."""
    name = config.get("task", "pretrain")
    temperature = float(config.get("temperature", 0.0))
    if name == "pretrain":
        if config.stage == 1:
            return Task("pretrain", 1, "contrastive", PRETRAIN_DIRECTION_WEIGHT, temperature)
        return Task("pretrain", 2, "mlm")
    if name == "retrieval":
        return Task("retrieval", 1, "contrastive", RETRIEVAL_DIRECTION_WEIGHT, temperature, fine_tuning=True)
    if name == "qa":
        qa = config.get("qa")
        if qa is None or qa.get("type") not in QA_TYPES:
            raise ValueError(f"config.qa.type must be one of {QA_TYPES} for task qa, got "
                             f"{None if qa is None else qa.get('type')!r}")
        return Task("qa", 2, "qa", fine_tuning=True, new_parts=(QA_HEAD,), qa_type=qa.type,
                    aggregation=qa.get("aggregation", "mean"))
    raise ValueError(f"config.task must be one of {TASKS}, got {name!r}")
