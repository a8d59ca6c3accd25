"""Metrics to ``<workdir>/metrics.jsonl`` and TensorBoard, and the console progress line.

TensorBoard scalars are written with TensorFlow's raw ``tf.summary.write`` and the
``scalars`` plugin metadata (what ``tf.summary.scalar`` writes), so the ``tensorboard``
package is only needed to view them.
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

from absl import logging


class MetricsWriter:
    """Appends ``{"step": s, **metrics}`` JSON lines and TensorBoard scalars; only process 0 writes."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        import tensorflow as tf  # imported here: only the writing process needs it
        from tensorflow.core.framework import summary_pb2
        tf.config.set_visible_devices([], "GPU")
        self._tf = tf
        self._scalar = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._summary = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()
        with self._summary.as_default(step=int(step)):
            for name, value in values.items():
                self._tf.summary.write(name, self._tf.constant(value, self._tf.float32), metadata=self._scalar)
        self._summary.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._summary.close()


class Progress:
    """Examples/s and ETA since the first measured step (compilation excluded)."""

    def __init__(self, total_steps: int, batch_size: int):
        self.total_steps, self.batch_size = total_steps, batch_size
        self._start_step, self._start_time = None, None

    def update(self, step: int) -> dict[str, float]:
        """Throughput metrics at ``step`` (empty until two steps were seen)."""
        now = time.time()
        if self._start_step is None:
            self._start_step, self._start_time = step, now
            return {}
        steps = step - self._start_step
        elapsed = max(now - self._start_time, 1e-9)
        return {"steps_per_sec": steps / elapsed, "examples_per_sec": steps * self.batch_size / elapsed,
                "eta_sec": (self.total_steps - step) * elapsed / max(steps, 1)}

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """One console line: step, loss, examples/s, ETA."""
        eta = metrics.get("eta_sec")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta is not None else "--:--:--"
        logging.info("step %d/%d  loss %.4f  %.1f ex/s  ETA %s", step, self.total_steps, metrics["loss"],
                     metrics.get("examples_per_sec", 0.0), eta_text)
