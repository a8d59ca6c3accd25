"""Stopping a run cleanly when its host is preempted: save at the next step boundary and exit."""
from __future__ import annotations

import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class Preemption:
    """Whether to save and stop now, asked after every step at no cost to the step loop. One process:
    a SIGTERM flag (installed while this object lives). Several: jax's preemption sync point, which
    the coordination service agrees on in the background (its own SIGTERM handler), so all
    processes stop after the same step without a collective per step."""

    def __init__(self):
        self.received = False
        self._previous = None
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping")
        self.received = True

    def reached(self, step: int) -> bool:
        """Whether all processes agree to save ``step`` and stop."""
        if jax.process_count() == 1:
            return self.received
        return multihost_utils.reached_preemption_sync_point(step)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
