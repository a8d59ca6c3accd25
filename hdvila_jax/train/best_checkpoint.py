"""Keeping the variables of the best evaluation so far, named by its step.

``<workdir>/best/step_<N>/`` is a variables checkpoint (the format ``python -m
hdvila_jax.convert`` writes, accepted by ``init.restore``, eval mode and search) and
``<workdir>/best/best.json`` says which step it is, the metric and all eval metrics of
that step. A better evaluation replaces both; a resumed run keeps comparing against the
stored best.
"""
from __future__ import annotations

import json
from typing import Mapping

import jax
from jax.experimental import multihost_utils

from hdvila_jax import storage, variables_io


class BestCheckpoint:
    """Tracks ``metric`` (higher is better) and saves the variables whenever it improves."""

    def __init__(self, workdir: str, metric: str):
        self.metric = metric
        self.directory = storage.join(storage.absolute(workdir), "best")
        self.record_path = storage.join(self.directory, "best.json")
        self.record = None
        if storage.isfile(self.record_path):
            self.record = json.loads(storage.read_text(self.record_path))

    @property
    def best_value(self) -> float | None:
        return None if self.record is None else self.record["value"]

    def update(self, step: int, metrics: Mapping[str, float], variables: dict) -> bool:
        """Save ``variables`` as the new best if ``metrics[metric]`` beats the stored best."""
        if self.metric not in metrics:
            raise KeyError(f"config.best_metric={self.metric!r} is not an eval metric; have {sorted(metrics)}")
        value = float(metrics[self.metric])
        if self.best_value is not None and value <= self.best_value:
            return False
        path = storage.join(self.directory, f"step_{step}")
        if jax.process_index() == 0 and storage.exists(path):  # a crash after saving, before the record
            storage.rmtree(path)
        multihost_utils.sync_global_devices("best checkpoint: path free")
        variables_io.save_variables(path, variables)
        previous = self.record
        self.record = {"step": int(step), "metric": self.metric, "value": value, "path": path,
                       "metrics": {k: float(v) for k, v in metrics.items()}}
        if jax.process_index() == 0:
            storage.write_text(self.record_path, json.dumps(self.record, indent=1))  # atomic
            if previous is not None and previous["path"] != path:
                try:
                    storage.rmtree(previous["path"], missing_ok=True)
                except OSError:  # as before: a previous best that cannot be removed is left behind
                    pass
        return True
