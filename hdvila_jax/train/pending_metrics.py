"""Train metrics kept on the device between host syncs, and the stop on a non-finite step."""
from __future__ import annotations

import jax


class NonFiniteLossError(RuntimeError):
    """Training hit a non-finite loss or gradient; no checkpoint of that state was written."""


class PendingMetrics:
    """The train metrics of the steps since the last host sync, kept on the device: fetched only
    at log, eval and checkpoint steps (:meth:`fetch`), so the host dispatches step after step
    while the devices run them."""

    def __init__(self):
        self._steps: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        self._steps.append((step, metrics))

    def fetch(self, latest_good: int | None) -> dict[str, float]:
        """The host values of the newest step's metrics; raises :class:`NonFiniteLossError` naming the
        first pending step whose loss or gradient was not finite (that step left the state unchanged,
        and nothing after it is saved)."""
        fetched = jax.device_get(self._steps)
        self._steps = []
        for step, metrics in fetched:
            if not metrics["finite"]:
                raise NonFiniteLossError(
                    f"step {step}: loss {metrics['loss']} / gradient norm {metrics['grad_norm']} is not finite; "
                    f"stopping without saving (latest good checkpoint: step {latest_good})")
        return {k: float(v) for k, v in fetched[-1][1].items() if k != "finite"}
