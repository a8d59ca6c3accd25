"""Large freed blocks kept mapped for the next allocation: a small malloc front (``block_cache.cc``)
that the entry points preload (``LD_PRELOAD``) when they restart under their malloc settings
(:func:`hdvila_jax.huge_page_malloc.reexec_with_huge_page_malloc`).

XLA:CPU allocates each execution's temporaries as one block (600 MiB for the README's stage-1 CPU
setting) and frees it when the execution ends. glibc hands a block that large back to the kernel,
which must zero fresh pages for it on the next step: 9-11% of our stage-1 step's CPU samples were
the kernel's ``clear_page_erms`` (``benchmarks.cpu_samples``). The preloaded library keeps every
freed block of at least 64 MiB mapped (up to 16 blocks and 8 GiB of free ones) and serves the
next large request from the smallest that fits, so a training loop maps its temporaries once.
Everything smaller goes to glibc unchanged. The cost: up to 8 GiB of freed memory stays mapped.

The library is compiled on first use (about 1 s, cached beside the oneDNN kernels, see
``hdvila_jax.kernels.build``). Without a C++ compiler, or off glibc on Linux, nothing is preloaded
and a warning says why. ``HDVILA_BLOCK_CACHE=0`` turns it off.
"""
from __future__ import annotations

import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Mapping

from hdvila_jax.kernels.build import BuildError, build_library

SOURCE = Path(__file__).with_name("block_cache.cc")
OPT_OUT = "HDVILA_BLOCK_CACHE"
PRELOAD = "LD_PRELOAD"


def supported() -> bool:
    """Whether the library can work here: Linux with glibc (it calls glibc's ``__libc_malloc`` family)."""
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def library() -> Path:
    """The built library (compiled unless cached); raises ``BuildError`` when it does not build."""
    return build_library(SOURCE, [], [], ["dl"], xla_ffi=False)


def preload_environ(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with the library added to ``LD_PRELOAD``, or None where nothing is to change:
    opted out, unsupported here, already preloaded, or not buildable (then with a warning)."""
    if environ.get(OPT_OUT, "1") == "0" or not supported():
        return None
    preloaded = [p for p in environ.get(PRELOAD, "").split(":") if p]
    if any(Path(p).name.startswith(SOURCE.stem + "-") for p in preloaded):
        return None
    try:
        path = library()
    except BuildError as e:
        warnings.warn(f"hdvila_jax.block_cache not preloaded ({e}); set {OPT_OUT}=0 to silence this. XLA:CPU's "
                      "temporaries are then mapped afresh every step.")
        return None
    return {**environ, PRELOAD: ":".join([*preloaded, os.fspath(path)])}
