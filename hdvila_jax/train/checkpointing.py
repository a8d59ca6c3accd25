"""Orbax checkpoints of the train state and the input pipeline.

A checkpoint step directory holds three items: ``variables`` (``params`` and
``batch_stats``, what a later stage or eval-only mode restores), ``train`` (``opt_state``,
``step``, ``rng``) and ``data`` (each process's grain iterator state). Saves are
asynchronous; the last ``keep`` steps are kept. A restart restores the newest step that
restores completely: a damaged one (a missing or corrupt file) is logged, renamed to
``<step>.damaged-<n>`` so later saves of that step number can proceed, and the next older one
is tried. Directories of interrupted saves (orbax's ``*.orbax-checkpoint-tmp-*``) are never
steps and are removed on start.
"""
from __future__ import annotations

import threading
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from hdvila_jax import storage
from hdvila_jax.variables_io import CheckpointError

State = dict[str, Any]
VARIABLE_KEYS = ("params", "batch_stats")
TRAIN_KEYS = ("opt_state", "step", "rng")
# While another error ends the run: how long a pending save may still take before it is left unfinished
ABANDON_WAIT_S = 30.0


class Checkpointer:
    """The checkpoints of one run directory (``<workdir>/checkpoints``, local or ``gs://``)."""

    def __init__(self, directory: str, keep: int, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=not read_only,
                                               create=not read_only, read_only=read_only,
                                               cleanup_tmp_directories=not read_only)
        self.directory = storage.absolute(directory)
        self.manager = ocp.CheckpointManager(storage.path(self.directory), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: State, data_iterator: grain.DatasetIterator) -> None:
        """Start an asynchronous save of ``state`` and the iterator's position at ``step`` (a failure
        of the previous save surfaces here or in :meth:`wait` as a CheckpointError)."""
        try:
            self.manager.save(step, args=ocp.args.Composite(
                variables=ocp.args.StandardSave({k: state[k] for k in VARIABLE_KEYS}),
                train=ocp.args.StandardSave({k: state[k] for k in TRAIN_KEYS}),
                data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)
        except Exception as e:  # noqa: BLE001 -- reported with where the last good checkpoint is
            raise self._save_failed(e) from e

    def _save_failed(self, error: Exception) -> CheckpointError:
        message = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
        cause = "disk full: " if "No space left on device" in str(error) else ""
        self.manager.reload()
        latest = self.manager.latest_step()
        newest = "there is no complete checkpoint yet" if latest is None else (
            f"the newest complete checkpoint is step {latest}, intact")
        return CheckpointError(f"saving a checkpoint in {self.directory} failed ({cause}{message}); {newest}")

    def restore(self, step: int, target: State, data_iterator: grain.DatasetIterator | None) -> State:
        """The full state at ``step`` in the shardings of ``target`` (``ShapeDtypeStruct``s); also
        moves ``data_iterator`` (when given) to where that step left it."""
        items = dict(variables=ocp.args.StandardRestore({k: target[k] for k in VARIABLE_KEYS}),
                     train=ocp.args.StandardRestore({k: target[k] for k in TRAIN_KEYS}))
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        return {**restored["variables"], **restored["train"]}

    def restore_newest_intact(self, target: State, data_iterator: grain.DatasetIterator | None
                              ) -> tuple[State, int, list[str]] | None:
        """The newest step that restores completely, its number and what was skipped (None without
        any step). Newer damaged steps are logged with the reason and set aside as
        ``<step>.damaged-<n>``; if every step fails, CheckpointError lists why and nothing is
        moved (e.g. a model config that does not match the checkpoints)."""
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state = self.restore(step, target, data_iterator)
            except Exception as e:  # noqa: BLE001 -- any unreadable step: fall back to an older one
                failures.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
                logging.warning("checkpoint %s step %d cannot be restored: %s", self.directory, step, failures[-1][1])
                continue
            skipped = [f"step {bad} ({reason}) moved to {self._set_aside(bad)}" for bad, reason in failures]
            return state, step, skipped
        if failures:
            raise CheckpointError(f"no checkpoint in {self.directory} could be restored:\n  "
                                  + "\n  ".join(f"step {step}: {reason}" for step, reason in failures))
        return None

    def _set_aside(self, step: int) -> str:
        """Rename a damaged step directory out of the way (by process 0); returns the new path (on
        gs:// the rename copies every object, then deletes the originals)."""
        source = storage.join(self.directory, str(step))
        n = 0
        while storage.exists(f"{source}.damaged-{n}"):
            n += 1
        target = f"{source}.damaged-{n}"
        if jax.process_index() == 0:
            storage.rename(source, target)
        multihost_utils.sync_global_devices(f"set aside checkpoint step {step}")
        self.manager.reload()
        return target

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk (CheckpointError if one failed)."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 -- reported with where the last good checkpoint is
            raise self._save_failed(e) from e

    def close(self) -> None:
        self.manager.close()

    def finish(self, failing: bool) -> None:
        """Wait for pending saves, then close. While another error ends the run (``failing``: e.g.
        the storage server went away), wait at most :data:`ABANDON_WAIT_S` and only log a save that
        failed or did not finish: that error is the one to report, and a restart resumes from the
        newest complete step (an unfinished save is never one)."""
        if not failing:
            self.wait()
            self.close()
            return
        done = threading.Event()

        def wait_quietly() -> None:
            try:
                self.manager.wait_until_finished()
            except Exception as e:  # noqa: BLE001 -- the run's own error is the one reported
                logging.warning("checkpoint save in %s failed too: %s", self.directory, str(e).splitlines()[0][:300])
            finally:
                done.set()

        threading.Thread(target=wait_quietly, name="checkpoint_wait", daemon=True).start()
        if done.wait(ABANDON_WAIT_S):
            self.close()
        else:
            logging.warning("a checkpoint save in %s did not finish within %.0f s; left unfinished (a restart "
                            "resumes from the newest complete checkpoint)", self.directory, ABANDON_WAIT_S)
