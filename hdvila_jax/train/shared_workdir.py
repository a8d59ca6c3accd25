"""Before a multi-process run touches its workdir: do all processes see the same one?

Each process writes a token ``<workdir>/.hosts/<nonce>/<process index>`` (the nonce is process 0's
random value, broadcast to all, so tokens of earlier runs never count), all wait for each other,
then each lists the folder. Every process must see all N tokens; otherwise the workdir is on each
host's own disk (or a mount some hosts lack) and every process stops at once with
:class:`SharedWorkdirError` — on a pod such a run would write each host's checkpoint shards to its
own disk, and no step would ever be restorable. The processes agree on the outcome (an allgather
of what each saw), so none goes on to wait for the others in the first training step. The tokens
are removed afterwards. A single process checks nothing.
"""
from __future__ import annotations

import os
import secrets
import socket

import jax
import numpy as np
from jax.experimental import multihost_utils

from hdvila_jax import storage

TOKENS = ".hosts"  # the folder under the workdir that holds the tokens


class SharedWorkdirError(RuntimeError):
    """The processes of a run do not all see the same workdir; the message names it."""


def check_shared_workdir(workdir: str) -> None:
    """Raise :class:`SharedWorkdirError` on every process unless all ``jax.process_count()``
    processes see one another's token in ``workdir`` (a no-op for a single process)."""
    count = jax.process_count()
    if count == 1:
        return
    nonce = _agreed_nonce()
    folder = storage.join(workdir, TOKENS, nonce)
    token = storage.join(folder, str(jax.process_index()))
    storage.write_text(token, f"{socket.gethostname()} pid {os.getpid()}\n")
    multihost_utils.sync_global_devices(f"shared workdir tokens {nonce} written")
    names = storage.listdir(folder) if storage.isdir(folder) else []
    seen = sum(name in names for name in map(str, range(count)))
    seen_by = multihost_utils.process_allgather(np.asarray([seen], np.int32)).reshape(-1)
    _remove_token(token, folder)
    if (seen_by < count).any():
        views = ", ".join(f"process {i} sees {n}" for i, n in enumerate(seen_by.tolist()))
        raise SharedWorkdirError(
            f"workdir {storage.absolute(workdir)} is not shared by the {count} processes of this run (each wrote a "
            f"token to {TOKENS}/{nonce}/: {views} of {count}); it is probably a folder on each host's own disk. "
            "Use a gs:// bucket (--workdir=gs://BUCKET/run) or a shared mount that every host sees (NFS, gcsfuse)")


def _agreed_nonce() -> str:
    """A random hex string, the same on every process (process 0's, broadcast)."""
    mine = np.frombuffer(secrets.token_bytes(8), np.uint32)
    agreed = multihost_utils.broadcast_one_to_all(mine)
    return "".join(f"{int(word):08x}" for word in np.asarray(agreed).reshape(-1))


def _remove_token(token: str, folder: str) -> None:
    """Delete this process's token; locally also the folders it leaves empty (the last process to
    get there removes them; an object store has no folders)."""
    storage.path(token).unlink(missing_ok=True)
    if storage.is_remote(folder):
        return
    for empty in (folder, os.path.dirname(folder)):
        try:
            os.rmdir(empty)
        except OSError:  # another process's token is still there, or another process removed it
            return
