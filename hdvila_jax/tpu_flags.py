"""libtpu's compiler flags a run asks for (``config.libtpu_flags``), put in ``LIBTPU_INIT_ARGS`` before
libtpu starts (as MaxText does): the trainer and the ahead-of-time compiler (``hdvila_jax.aot``) call
:func:`apply` before their first TPU use, so both compile the same program.

The default, :data:`DEFAULT`, turns off XLA's "windowed" reduce-scatter einsums: with FSDP, XLA computes
each weight gradient and its reduce-scatter in a loop it schedules at the end of the step, and the
activations and gradients those loops read stay in HBM until then. Without them, the paper stage-1 step
on v5e:2x4 at 12 examples per chip peaks at 14.82 GiB instead of 15.70 and moves 376 GB per chip-step
instead of 420 (docs/performance.md, "Fewer bytes"). Only the collective's schedule changes: the same
sums, in another order, so gradients agree to float round-off.

Flags already in ``LIBTPU_INIT_ARGS`` come after the config's and so win over them (absl takes the last
value of a flag). On CPUs and GPUs libtpu is not loaded and the flags do nothing.
"""
from __future__ import annotations

import os

from absl import logging

from hdvila_jax.tasks.base import TrainConfigError

ENV = "LIBTPU_INIT_ARGS"
DEFAULT = "--xla_tpu_enable_windowed_einsum_for_reduce_scatter=false"


class TpuFlagsError(TrainConfigError):
    """``config.libtpu_flags`` is not a list of ``--flag=value`` words."""


def check(flags: str) -> list[str]:
    """The words of ``flags``, each a ``--name[=value]`` flag, or a :class:`TpuFlagsError` naming the first that is not."""
    if not isinstance(flags, str):
        raise TpuFlagsError(f"config.libtpu_flags: must be a string of --name=value words, got {flags!r}")
    words = flags.split()
    for word in words:
        if not word.startswith("--") or len(word) == 2:
            raise TpuFlagsError(f"config.libtpu_flags: {word!r} is not a flag; give space-separated --name=value "
                                f"words, e.g. {DEFAULT!r}, or '' for none")
    return words


def apply(flags: str) -> str:
    """Put ``flags`` (``config.libtpu_flags``) in front of ``LIBTPU_INIT_ARGS`` unless they are there already;
    returns the variable's value. Warns when libtpu has already started (the flags then do nothing in this
    process)."""
    words = check(flags)
    current = os.environ.get(ENV, "")
    if not words or all(word in current.split() for word in words):
        return current
    if _libtpu_started():
        logging.warning("libtpu has already started in this process: config.libtpu_flags (%s) apply only to "
                        "processes that start after them", flags)
    os.environ[ENV] = " ".join(part for part in (" ".join(words), current) if part)
    return os.environ[ENV]


def _libtpu_started() -> bool:
    """Whether this process has initialised a TPU backend (jax's backends, read without starting one)."""
    from jax._src import xla_bridge
    return "tpu" in getattr(xla_bridge, "_backends", {})
