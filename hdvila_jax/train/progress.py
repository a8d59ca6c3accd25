"""The console progress line of training: step, loss, examples/s and ETA."""
from __future__ import annotations

import time
from typing import Mapping

from absl import logging


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
