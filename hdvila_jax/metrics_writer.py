"""Metrics to ``<workdir>/metrics.jsonl`` and TensorBoard (the trainer and eval-only mode).

TensorBoard scalars are written with TensorFlow's raw ``tf.summary.write`` and the
``scalars`` plugin metadata (what ``tf.summary.scalar`` writes), so the ``tensorboard``
package is only needed to view them.
"""
from __future__ import annotations

import json
import os
from typing import Mapping


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
