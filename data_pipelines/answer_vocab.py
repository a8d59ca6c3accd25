"""Building the open-ended QA answer vocabulary (docs/fidelity.md §13.3) from a split's answers; the
format and its reader are in `hdvila_jax.data.answers`."""
from __future__ import annotations

import collections
import json
from typing import Iterable

from hdvila_jax import storage


def build_ans2label(answers: Iterable[str], min_count: int) -> dict[str, int]:
    """Labels for the answers seen at least `min_count` times: the most frequent answer gets 0,
    ties are ordered alphabetically."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = collections.Counter(answers)
    kept = sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))
    return {answer: label for label, answer in enumerate(kept)}


def write_ans2label(path: str, mapping: dict[str, int]) -> None:
    """Writes an ans2label file (atomically; local or gs://), answers in label order."""
    storage.write_text(path, json.dumps(dict(sorted(mapping.items(), key=lambda item: item[1])), indent=0,
                                        ensure_ascii=False))
