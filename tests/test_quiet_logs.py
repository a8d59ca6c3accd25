"""Orbax's INFO lines stay out of the trainer's log unless absl's verbosity asks for them."""
import logging as std_logging
import os

from absl import logging

from hdvila_jax import quiet_logs


def _record(path: str, level: int) -> std_logging.LogRecord:
    return std_logging.LogRecord("absl", level, path, 1, "message", None, None)


def test_orbax_info_lines_are_dropped_unless_asked_for():
    quiet_logs.quiet_library_logs()
    quiet_logs.quiet_library_logs()  # once is enough
    handler = logging.get_absl_handler()
    assert sum(isinstance(f, quiet_logs._QuietPackages) for f in handler.filters) == 1
    orbax_file = os.path.join("site-packages", "orbax", "checkpoint", "checkpoint_manager.py")
    ours = os.path.join("hdvila_jax", "train", "trainer.py")
    absl_logger = std_logging.getLogger("absl")
    before = absl_logger.level  # restored as it was (get/set_verbosity would leave an explicit level behind)
    try:
        logging.set_verbosity(logging.INFO)
        assert not handler.filter(_record(orbax_file, std_logging.INFO))
        assert handler.filter(_record(orbax_file, std_logging.WARNING))  # warnings and errors always pass
        assert handler.filter(_record(ours, std_logging.INFO))
        logging.set_verbosity(1)  # --verbosity=1: everything again
        assert handler.filter(_record(orbax_file, std_logging.INFO))
    finally:
        absl_logger.setLevel(before)
