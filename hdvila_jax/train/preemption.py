"""Stopping a run cleanly when its host is preempted or the user presses Ctrl-C: save at the next step
boundary and exit."""
from __future__ import annotations

import signal

import jax
from absl import logging
from jax.experimental import multihost_utils

from hdvila_jax import interrupts


class Preemption:
    """Whether to save and stop now, asked after every step at no cost to the step loop. One process:
    a SIGTERM or Ctrl-C (SIGINT) flag (handlers installed while this object lives; a second Ctrl-C
    stops at once). Several: jax's preemption sync point, which the coordination service agrees on in
    the background (its own SIGTERM handler), so all processes stop after the same step without a
    collective per step."""

    def __init__(self):
        self.received = False
        self._previous = {}
        if jax.process_count() == 1:
            interrupts.watch_collections()
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received:
            interrupts.raise_interrupt()  # a second Ctrl-C: stop now, without the checkpoint
            return
        again = " (Ctrl-C again to stop at once, without it)" if signum == signal.SIGINT else ""
        logging.warning("%s received: saving a checkpoint at the next step boundary and stopping%s",
                        signal.Signals(signum).name, again)
        self.received = True

    def reached(self, step: int) -> bool:
        """Whether all processes agree to save ``step`` and stop."""
        if jax.process_count() == 1:
            return self.received
        return multihost_utils.reached_preemption_sync_point(step)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
