"""Video QA evaluation (docs/fidelity.md §13.5): multi-clip predictions, accuracy overall and per
answer type, and one prediction row per question for error analysis.

Questions are identified by their record's ``video_index`` (the 0-based line of the annotation
file, the original's question id). Answer strings and types are read from the evaluation
records themselves (:func:`read_questions`), so every process scores the same table.
"""
from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hdvila_jax import storage
from hdvila_jax.data.answers import load_ans2label
from hdvila_jax.data.pipeline import list_files
from hdvila_jax.data.records import parse_clip_record
from hdvila_jax.data.tfrecord_source import TFRecordDataSource
from hdvila_jax.models import HDVILA
from hdvila_jax.inference import encode_batches
from hdvila_jax.tasks.base import TrainConfigError, eval_batches
from hdvila_jax.tasks.qa_loss import IMAGE_KEYS, aggregate_logits, qa_accuracy, qa_model_inputs

LABEL_KEYS = {"open": "qa_label", "multiple_choice": "mc_answer"}
TEXT_KEYS = {"open": ("text_input_ids", "text_input_mask"),
             "multiple_choice": ("mc_text_input_ids", "mc_text_input_mask")}


@dataclasses.dataclass(frozen=True)
class Question:
    """What a prediction row reports about one question."""

    texts: tuple[str, ...]  # open-ended: (question,); multiple choice: the "question option" texts
    answer: str  # the answer string (open-ended) or the correct option's text
    answer_type: str  # "" when the dataset has none (multiple choice)


def read_questions(pattern: str, field: str = "data.val_files") -> dict[int, Question]:
    """``{question id: Question}`` of every record matching ``pattern``."""
    questions = {}
    for data in TFRecordDataSource(list_files(pattern, field.removeprefix("data."))):
        record = parse_clip_record(data)
        if record.answer_text is not None:
            answer = record.answer_text
        elif record.answer is not None:
            answer = record.texts[record.answer]
        else:
            raise ValueError(f"config.{field}: record {record.clip_id} is not a QA record (no answer)")
        questions[record.video_index] = Question(tuple(record.texts), answer, record.answer_type or "")
    return questions


def make_predict_fn(model: HDVILA, qa_type: str, aggregation: str) -> Callable[[Any, Mapping[str, jax.Array]],
                                                                             dict[str, jax.Array]]:
    """Jitted ``(variables, batch) -> {"pred": [B]}``: argmax of the clip-aggregated logits, no dropout."""
    def predict(variables, batch):
        logits = model.apply(variables, qa_model_inputs(batch, qa_type), True, method=HDVILA.qa_logits)
        return {"pred": jnp.argmax(aggregate_logits(logits, aggregation), axis=-1).astype(jnp.int32)}
    return jax.jit(predict)


def qa_metrics(pred: np.ndarray, labels: np.ndarray, types: list[str]) -> dict[str, float]:
    """``qa_accuracy`` (percent), ``qa_accuracy_<type>`` per non-empty answer type, the number of
    questions and of answers outside the vocabulary (``labels`` -1, always wrong)."""
    metrics = {"qa_accuracy": qa_accuracy(pred, labels), "qa_questions": float(len(labels)),
               "qa_unknown_answers": float(np.sum(labels < 0))}
    by_type = defaultdict(list)
    for i, answer_type in enumerate(types):
        if answer_type:
            by_type[answer_type].append(i)
    for answer_type, rows in sorted(by_type.items()):
        metrics[f"qa_accuracy_{answer_type}"] = qa_accuracy(pred[rows], labels[rows])
    return metrics


def prediction_rows(question_ids: np.ndarray, pred: np.ndarray, labels: np.ndarray,
                    questions: Mapping[int, Question], label2ans: Mapping[int, str] | None) -> list[dict]:
    """One dict per question: id, question text(s), predicted and correct answer, type, correctness.
    ``label2ans`` maps open-ended class indices to answers; None for multiple choice (option index)."""
    rows = []
    for qid, p, label in zip(question_ids.tolist(), pred.tolist(), labels.tolist()):
        question = questions[qid]
        if label2ans is None:
            predicted = question.texts[p]
        else:
            predicted = label2ans.get(p, f"<unused output {p}>")
        text = question.texts[0] if label2ans is not None else list(question.texts)
        rows.append({"question_id": qid, "question": text, "prediction": predicted, "answer": question.answer,
                     "answer_type": question.answer_type, "correct": bool(p == label and label >= 0)})
    return rows


def evaluate_qa(predict: Callable, variables: Any, batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh,
                qa_type: str, questions: Mapping[int, Question],
                label2ans: Mapping[int, str] | None) -> tuple[dict[str, float], list[dict]]:
    """Predict every (per-process) batch, gather all processes' predictions, drop padding; return the
    metrics and the prediction rows (ordered by question id)."""
    out = encode_batches(predict, variables, batches, mesh, (*IMAGE_KEYS, *TEXT_KEYS[qa_type]),
                         carry=(LABEL_KEYS[qa_type], "video_index"))
    order = np.argsort(out["video_index"], kind="stable")
    pred, label, qid = out["pred"][order], out[LABEL_KEYS[qa_type]][order], out["video_index"][order]
    metrics = qa_metrics(pred, label, [questions[q].answer_type for q in qid.tolist()])
    return metrics, prediction_rows(qid, pred, label, questions, label2ans)


class QAEvaluator:
    """Accuracy (overall, per answer type) of a QA task on ``data.val_files``, with every question's
    prediction written to ``workdir/predictions/step_N.jsonl`` (by process 0; local or gs://)."""

    def __init__(self, config: ml_collections.ConfigDict, model: HDVILA, workdir: str, qa_type: str,
                 aggregation: str):
        if not config.data.val_files:
            raise TrainConfigError("config.data.val_files is empty: task qa evaluates on its records")
        self.config, self.workdir, self.qa_type = config, workdir, qa_type
        self.predict = make_predict_fn(model, qa_type, aggregation)
        self.questions = read_questions(config.data.val_files)
        self.label2ans = None
        if qa_type == "open":
            self.label2ans = {index: answer for answer, index in load_ans2label(config.data.ans2label).items()}

    def __call__(self, variables: Any, mesh: Mesh, step: int) -> dict[str, float]:
        batches = eval_batches(self.config, self.config.data.val_files)
        metrics, rows = evaluate_qa(self.predict, variables, batches, mesh, self.qa_type, self.questions,
                                    self.label2ans)
        if jax.process_index() == 0:
            write_predictions(storage.join(self.workdir, "predictions", f"step_{step}.jsonl"), rows)
        return metrics


def write_predictions(path: str, rows: list[dict]) -> None:
    """The prediction rows as jsonl (one question per line), written whole to ``path`` (local or gs://;
    its folder is created)."""
    storage.write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
