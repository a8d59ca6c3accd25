"""Metrics to ``<workdir>/metrics.jsonl`` and TensorBoard (the trainer and eval-only mode).

TensorBoard scalars are written with TensorFlow's raw ``tf.summary.write`` and the
``scalars`` plugin metadata (what ``tf.summary.scalar`` writes), so the ``tensorboard``
package is only needed to view them.

A local workdir: ``metrics.jsonl`` is appended to and the events are written in place. A ``gs://``
workdir (objects cannot be appended to, and ``tf.io.gfile`` must not touch gs://: it cannot reach an
emulator): ``metrics.jsonl``'s earlier lines are read once at start and the whole object is rewritten,
with them and every line since, on each write; the TensorBoard events file is written to a local
temporary folder and uploaded whole through ``hdvila_jax.storage`` to ``<workdir>/tensorboard/`` after
each write and on close (each writer has its own events file, so a resumed run adds one).

A resumed run calls :meth:`MetricsWriter.drop_after` with the step it restored: the lines of steps
beyond it (written before an interruption, and about to be written again) are removed, so
``metrics.jsonl`` holds each step once.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Mapping

from absl import logging

from hdvila_jax import storage


class MetricsWriter:
    """Writes ``{"step": s, **metrics}`` JSON lines and TensorBoard scalars; only process 0 writes."""

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
        self._remote = storage.is_remote(workdir)
        self._jsonl_path = storage.join(workdir, "metrics.jsonl")
        self._events_dir = storage.join(workdir, "tensorboard")
        if self._remote:
            earlier = storage.read_text(self._jsonl_path) if storage.isfile(self._jsonl_path) else ""
            self._lines = [line + "\n" for line in earlier.splitlines() if line.strip()]
            self._local_events = tempfile.mkdtemp(prefix="hdvila_tensorboard_")
            self._summary = tf.summary.create_file_writer(self._local_events)
        else:
            self._jsonl = open(self._jsonl_path, "a")
            self._summary = tf.summary.create_file_writer(self._events_dir)

    def drop_after(self, step: int) -> int:
        """Remove the ``metrics.jsonl`` lines of steps after ``step`` (a resumed run's restored step;
        at step 0, where the run starts again with its step-0 evaluation, every line) and a torn line
        an interrupted write left; returns how many were removed."""
        if not self.enabled:
            return 0
        if not self._remote:
            self._jsonl.close()
            earlier = storage.read_text(self._jsonl_path)
            self._lines = [line + "\n" for line in earlier.splitlines() if line.strip()]
        kept = [line for line in self._lines if (n := _step_of(line)) is not None and (n < step or n == step > 0)]
        dropped = len(self._lines) - len(kept)
        if dropped:
            storage.write_text(self._jsonl_path, "".join(kept))
        self._lines = kept
        if not self._remote:
            self._jsonl = open(self._jsonl_path, "a")
        return dropped

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        line = json.dumps({"step": int(step), **values}) + "\n"
        if self._remote:
            self._lines.append(line)
            storage.write_text(self._jsonl_path, "".join(self._lines))
        else:
            self._jsonl.write(line)
            self._jsonl.flush()
        with self._summary.as_default(step=int(step)):
            for name, value in values.items():
                self._tf.summary.write(name, self._tf.constant(value, self._tf.float32), metadata=self._scalar)
        self._summary.flush()
        if self._remote:
            self._upload_events()

    def _upload_events(self) -> None:
        """Copy each local events file, whole, to ``<workdir>/tensorboard/`` (a gs:// workdir)."""
        for name in sorted(os.listdir(self._local_events)):
            local = os.path.join(self._local_events, name)
            if os.path.isfile(local):
                with open(local, "rb") as f:
                    storage.write_bytes(storage.join(self._events_dir, name), f.read())

    def close(self, failing: bool = False) -> None:
        """Flush and close; while another error ends the run (``failing``), a failed upload of the
        events is only logged, so that error is the one reported."""
        if not self.enabled:
            return
        self._summary.close()
        if self._remote:
            try:
                self._upload_events()
            except storage.StorageError as e:
                if not failing:
                    raise
                logging.warning("TensorBoard events not uploaded: %s", e)
            finally:
                shutil.rmtree(self._local_events, ignore_errors=True)
        else:
            self._jsonl.close()


def _step_of(line: str) -> int | None:
    """The step of a ``metrics.jsonl`` line, None for a line that is not a whole JSON object with one."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None
