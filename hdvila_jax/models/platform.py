"""The platform the model is traced for: the devices a step will run on, not the default backend.

A few layers take a lowering that is fast on one platform only (XLA:CPU's convolution and
max-pool forms, ``conv.py`` and ``layers.max_pool``). Whoever traces the model for a mesh says
which platform (:func:`lowering_platform` / :func:`traced_for`), so that a TPU step compiled ahead
of time on a CPU host gets the TPU forms.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import jax

_target: str | None = None  # set inside lowering_platform()


@contextlib.contextmanager
def lowering_platform(platform: str) -> Iterator[None]:
    """Inside, the model lowers for ``platform`` ("cpu", "tpu", "gpu"; a ``Device.platform``):
    wrap the tracing of a step that will run on devices of that platform."""
    global _target
    previous, _target = _target, platform
    try:
        yield
    finally:
        _target = previous


def traced_for(platform: str, fn: Callable) -> Callable:
    """``fn`` whose tracing (under ``jax.jit``) lowers for ``platform``."""
    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with lowering_platform(platform):
            return fn(*args, **kwargs)
    return traced


def target_platform() -> str:
    """The platform the model is lowered for: the innermost :func:`lowering_platform`, else the
    default backend."""
    return _target or jax.default_backend()


def uses_cpu_lowering() -> bool:
    """Whether the XLA:CPU forms are taken: the step is compiled for CPU devices."""
    return target_platform() == "cpu"
