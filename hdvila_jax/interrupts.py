"""Ctrl-C that is never lost. Python drops an exception raised inside a garbage-collection callback or
a finaliser ("Exception ignored in ..."), and jax runs one at every collection (``_xla_gc_callback``):
a Ctrl-C landing there printed a KeyboardInterrupt traceback and the run went on training. Here the
SIGINT handler, while a collection runs, defers the KeyboardInterrupt to the moment it is over, and
raises it in the interrupted code instead.

``install()`` makes it the SIGINT handler (``hdvila_jax.main`` does, first thing); a handler of its own
(``train.preemption``) calls :func:`raise_interrupt` instead of raising KeyboardInterrupt itself.
"""
from __future__ import annotations

import gc
import os
import signal
import threading
import time

_collecting = False
_deferred = False


def _collection_starts(phase: str, info: dict) -> None:
    global _collecting
    if phase == "start":
        _collecting = True


def _collection_ends(phase: str, info: dict) -> None:
    global _collecting, _deferred
    if phase == "stop":
        _collecting = False
        if _deferred:
            _deferred = False
            # SIGINT again in a moment, from outside: its handler then runs in the code the collection
            # interrupted (a handler called from here would run inside this callback, and be dropped)
            threading.Thread(target=_send_sigint_again, daemon=True).start()


def _send_sigint_again() -> None:
    time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)


def watch_collections() -> None:
    """Track when a garbage collection runs (first and last of ``gc.callbacks``; once per process)."""
    if _collection_starts not in gc.callbacks:
        gc.callbacks.insert(0, _collection_starts)
    if _collection_ends in gc.callbacks:
        gc.callbacks.remove(_collection_ends)
    gc.callbacks.append(_collection_ends)


def raise_interrupt() -> None:
    """Raise KeyboardInterrupt, or, inside a garbage collection (where it would be dropped), once it ends."""
    global _deferred
    if _collecting:
        _deferred = True
        return
    raise KeyboardInterrupt


def _on_sigint(signum, frame) -> None:
    raise_interrupt()


def install() -> None:
    """Make Ctrl-C raise KeyboardInterrupt in the interrupted code, never inside a collection."""
    watch_collections()
    signal.signal(signal.SIGINT, _on_sigint)
