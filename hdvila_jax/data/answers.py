"""The answer vocabulary of open-ended video QA: the original's ``ans2label`` json (answer string ->
label), the format of its ``train_ans2label.json`` / ``frameqa_trainval_ans2label.json``
(docs/fidelity.md §13.3). Read here by the input pipeline (labels) and the evaluation (answer
strings); built by ``data_pipelines.answer_vocab``."""
from __future__ import annotations

import json

from hdvila_jax import storage


class AnswerVocabError(ValueError):
    """An answer vocabulary file that cannot be used; the message names the file."""


def load_ans2label(path: str) -> dict[str, int]:
    """Reads and validates an ans2label file: string keys, labels a permutation of 0..n-1."""
    try:
        mapping = json.loads(storage.read_text(path))
    except OSError as e:
        raise AnswerVocabError(f"{path}: cannot read the answer vocabulary: {e.strerror or e}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnswerVocabError(f"{path}: not a JSON answer vocabulary: {e}") from e
    if not isinstance(mapping, dict) or not mapping:
        raise AnswerVocabError(f"{path}: expected a non-empty JSON object answer -> label")
    for answer, label in mapping.items():
        if isinstance(label, bool) or not isinstance(label, int):
            raise AnswerVocabError(f"{path}: label of answer {answer!r} is {label!r}, expected an integer")
    labels = sorted(mapping.values())
    if labels != list(range(len(mapping))):
        duplicate = next((a for a, b in zip(labels, labels[1:]) if a == b), None)
        detail = f"label {duplicate} used twice" if duplicate is not None else \
            f"labels span {labels[0]}..{labels[-1]} with gaps"
        raise AnswerVocabError(f"{path}: labels must be 0..{len(mapping) - 1}, each once ({detail})")
    return mapping
