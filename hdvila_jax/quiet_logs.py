"""Keep the trainer's own progress lines readable: orbax logs hundreds of INFO lines per run (each
save's threads, timings and metadata), all through absl's one logger. Below WARNING they are dropped
unless absl's verbosity asks for more (``--verbosity=1`` or ``-v 1`` shows them again)."""
from __future__ import annotations

import logging as std_logging
import os

from absl import logging

QUIET_PACKAGES = ("orbax",)  # whose INFO lines are dropped


class _QuietPackages(std_logging.Filter):
    """Drops records below WARNING that come from a file of one of ``QUIET_PACKAGES``."""

    def __init__(self):
        super().__init__()
        self._parts = tuple(f"{os.sep}{name}{os.sep}" for name in QUIET_PACKAGES)

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.levelno >= std_logging.WARNING or logging.get_verbosity() >= 1:
            return True
        return not any(part in record.pathname for part in self._parts)


def quiet_library_logs() -> None:
    """Install the filter on absl's handler (idempotent)."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietPackages) for f in handler.filters):
        handler.addFilter(_QuietPackages())
