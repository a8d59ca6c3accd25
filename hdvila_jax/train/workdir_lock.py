"""One training run per workdir: ``<workdir>/run.lock``, held by process 0 while the run trains.

The lock file says who holds it (host, pid, start) and when it last said it was alive: a daemon thread
rewrites it every :data:`HEARTBEAT_S`. A second run on the same workdir finds a live lock and stops at
once with :class:`WorkdirLockedError` naming the running one (two runs would interleave their
``metrics.jsonl`` and overwrite each other's checkpoints). A lock is stale, and is taken over with a
warning, when its holder is a process of this host that no longer exists (a crash, ``kill -9``), or
when its heartbeat is older than :data:`STALE_S` (a holder on another host, e.g. a pod's previous
incarnation). Locally the lock is created with ``O_EXCL``, so of two runs starting together one wins;
on ``gs://`` it is read, then written, so two runs started within the same second could both pass.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from hdvila_jax import storage

LOCK = "run.lock"
HEARTBEAT_S = 30.0  # how often the holder says it is alive
STALE_S = 180.0  # a heartbeat older than this: the holder is gone


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir; the message names it."""


class WorkdirLock:
    """The lock of one run (see the module docstring); :meth:`release` when the run ends."""

    def __init__(self, workdir: str):
        self.path = storage.join(workdir, LOCK)
        self._owner = dict(host=socket.gethostname(), pid=os.getpid(), started=time.time())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        refusal = ""
        if jax.process_index() == 0:
            refusal = self._acquire()
        refused = multihost_utils.broadcast_one_to_all(np.asarray([bool(refusal)]))  # every process stops
        if bool(np.asarray(refused).reshape(-1)[0]):
            raise WorkdirLockedError(refusal or f"workdir {storage.absolute(workdir)} is in use by another run "
                                                "(process 0 was refused its lock)")
        if jax.process_index() == 0:
            self._thread = threading.Thread(target=self._beat, name="workdir_lock", daemon=True)
            self._thread.start()

    def _acquire(self) -> str:
        """Take the lock; "" on success, else why not."""
        holder = _read(self.path)
        if holder is not None:
            why_stale = _stale(holder)
            if not why_stale:
                seen = time.time() - float(holder.get("heartbeat", 0))
                return (f"workdir {storage.dirname(self.path)} is in use by the run of pid {holder.get('pid')} on "
                        f"{holder.get('host')} (started {_when(holder.get('started'))}, alive {seen:.0f} s ago; "
                        f"lock {self.path}): stop it first, or use another --workdir. If that run is gone, its "
                        f"lock goes stale {max(0.0, STALE_S - seen):.0f} s from now, or delete {self.path}")
            logging.warning("taking over the stale lock of %s (%s)", self.path, why_stale)
            self._write()
            return ""
        if storage.is_remote(self.path):
            self._write()
            return ""
        storage.makedirs(storage.dirname(self.path))
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another run created it just now
            return self._acquire()
        with os.fdopen(fd, "w") as f:
            f.write(self._contents())
        return ""

    def _contents(self) -> str:
        return json.dumps(dict(self._owner, heartbeat=time.time()))

    def _write(self) -> None:
        storage.write_text(self.path, self._contents())

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except Exception as e:  # noqa: BLE001 -- a missed heartbeat is logged; the run goes on
                logging.warning("could not refresh %s: %s", self.path, e)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (process 0; if it is still this run's)."""
        if jax.process_index() != 0:
            return
        self._stop.set()
        holder = _read(self.path)
        if holder is not None and (holder.get("host"), holder.get("pid")) == (self._owner["host"], self._owner["pid"]):
            storage.remove(self.path, missing_ok=True)


def _read(path: str) -> dict | None:
    """The lock's contents (``{}`` for a lock cut short), None when there is none."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _stale(holder: dict) -> str:
    """Why the lock of ``holder`` no longer holds, or "" while its run lives."""
    if not holder:
        return "an unreadable lock file"
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
        return f"pid {holder.get('pid')} of this host is gone"
    age = time.time() - float(holder.get("heartbeat", 0))
    if age > STALE_S:
        return f"no heartbeat for {age:.0f} s"
    return ""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _when(started) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(started)))
    except (TypeError, ValueError):
        return "?"
