"""The bad-input report of a build: every skipped input and every warning, with reasons."""
from __future__ import annotations

import collections
import json

from data_pipelines.annotations import BadInput
from hdvila_jax import storage


def _category(reason: str) -> str:
    return reason.split(":")[0].split(" (")[0]


def write_report(path: str, split: str, num_annotated: int, num_records: int, total_bytes: int,
                 annotation_errors: list[BadInput], skipped: list[dict], warnings: list[dict],
                 details: dict | None = None) -> dict:
    """Writes the JSON report (atomically; `path` local or gs://) and returns it. `skipped`/`warnings`
    are {item, reason} dicts; `details` adds build-specific entries (a QA split's `answer_vocabulary`)."""
    skipped_all = [{"item": b.item, "reason": b.reason} for b in annotation_errors] + skipped
    report = {
        "split": split,
        "annotated_clips": num_annotated,
        "records": num_records,
        "bytes": total_bytes,
        "bytes_per_record": total_bytes // max(1, num_records),
        "skipped_counts": dict(collections.Counter(_category(s["reason"]) for s in skipped_all)),
        "warning_counts": dict(collections.Counter(_category(w["reason"]) for w in warnings)),
        "skipped": skipped_all,
        "warnings": warnings,
        **(details or {}),
    }
    storage.write_text(path, json.dumps(report, indent=1))
    return report


def summary(report: dict, path: str) -> str:
    """A few lines for the console."""
    lines = [f"[{report['split']}] {report['records']} records written from "
             f"{report['annotated_clips']} annotated clips, {report['bytes_per_record'] / 1e3:.1f} kB "
             f"per record; report: {path}"]
    for title, key in (("skipped", "skipped_counts"), ("warnings", "warning_counts")):
        total = sum(report[key].values())
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(report[key].items()))
        lines.append(f"  {title}: {total}" + (f" ({detail})" if detail else ""))
    if "answer_vocabulary" in report:
        vocab = report["answer_vocabulary"]
        lines.append(f"  answer vocabulary: {vocab['answers']} answers ({vocab['path']})")
    return "\n".join(lines)
