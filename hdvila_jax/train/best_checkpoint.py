"""Keeping the variables of the best evaluation so far, named by its step.

``<workdir>/best/step_<N>/`` is a variables checkpoint (the format ``python -m
hdvila_jax.convert`` writes, accepted by ``init.restore``, eval mode and search) and
``<workdir>/best/best.json`` says which step it is, the metric and all eval metrics of
that step. A better evaluation replaces both; a resumed run keeps comparing against the
stored best.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Mapping

import jax
from jax.experimental import multihost_utils

from hdvila_jax import variables_io


class BestCheckpoint:
    """Tracks ``metric`` (higher is better) and saves the variables whenever it improves."""

    def __init__(self, workdir: str, metric: str):
        self.metric = metric
        self.directory = os.path.join(os.path.abspath(workdir), "best")
        self.record_path = os.path.join(self.directory, "best.json")
        self.record = None
        if os.path.isfile(self.record_path):
            with open(self.record_path) as f:
                self.record = json.load(f)

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
        path = os.path.join(self.directory, f"step_{step}")
        if jax.process_index() == 0 and os.path.exists(path):  # a crash after saving, before the record
            shutil.rmtree(path)
        multihost_utils.sync_global_devices("best checkpoint: path free")
        variables_io.save_variables(path, variables)
        previous = self.record
        self.record = {"step": int(step), "metric": self.metric, "value": value, "path": path,
                       "metrics": {k: float(v) for k, v in metrics.items()}}
        if jax.process_index() == 0:
            with open(self.record_path + ".tmp", "w") as f:
                json.dump(self.record, f, indent=1)
            os.replace(self.record_path + ".tmp", self.record_path)
            if previous is not None and previous["path"] != path:
                shutil.rmtree(previous["path"], ignore_errors=True)
        return True
