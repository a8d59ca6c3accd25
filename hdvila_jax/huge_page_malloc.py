"""glibc malloc on transparent huge pages, for the entry points (trainer and CPU benchmarks).

XLA:CPU allocates a step's temporaries as one buffer per execution (600 MiB for the README's
stage-1 CPU setting) and frees it at the end; glibc hands a block that large straight back to the
kernel, so the next step faults all of it in again, 4 KiB at a time: 157k page faults and about
15% of the step's CPU time in the kernel. glibc's ``glibc.malloc.hugetlb=1`` tunable makes malloc
advise transparent huge pages for such blocks (2 MiB pages: 125 times fewer faults in that step,
numbers in the README's Performance section). glibc reads ``GLIBC_TUNABLES`` only when a process starts, so an entry point
calls :func:`reexec_with_huge_page_malloc` before its heavy imports and the process replaces
itself once with the tunable set. ``HDVILA_HUGE_PAGE_MALLOC=0`` turns this off; a
``glibc.malloc.hugetlb`` setting already in ``GLIBC_TUNABLES`` is left as the user set it.
The same restart preloads :mod:`hdvila_jax.block_cache`, which keeps such blocks mapped from one
step to the next, so that the kernel need not zero their pages again.
"""
from __future__ import annotations

import os
import platform
import sys
from typing import Mapping

from hdvila_jax import block_cache

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "HDVILA_HUGE_PAGE_MALLOC"
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"
MIN_GLIBC = (2, 35)  # first glibc with the hugetlb tunable
NEEDS = "glibc >= 2.35 and transparent huge pages in madvise mode"


def huge_page_environ(environ: Mapping[str, str]) -> dict[str, str] | None:
    """``environ`` with ``glibc.malloc.hugetlb=1`` added to ``GLIBC_TUNABLES``, or None where nothing
    is to change: the user opted out or already chose a ``glibc.malloc.hugetlb`` value."""
    if environ.get(OPT_OUT, "1") == "0":
        return None
    tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
    if any(t.split("=", 1)[0] == TUNABLE for t in tunables):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join([*tunables, f"{TUNABLE}=1"])}


def kernel_thp_mode(mode_file: str = THP_MODE_FILE) -> str:
    """The kernel's transparent-huge-page modes, the chosen one in brackets (``always [madvise] never``);
    empty where the file cannot be read."""
    try:
        with open(mode_file) as f:
            return f.read().strip()
    except OSError:
        return ""


def kernel_advises_huge_pages(mode_file: str = THP_MODE_FILE) -> bool:
    """Whether the kernel gives transparent huge pages only where a program asks (mode ``madvise``),
    the one mode in which the tunable changes anything."""
    return "[madvise]" in kernel_thp_mode(mode_file)


def glibc_has_tunable() -> bool:
    """Whether this process runs on a glibc that knows ``glibc.malloc.hugetlb``."""
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return False
    return tuple(int(v) for v in version.split(".")[:2]) >= MIN_GLIBC


def takes_effect() -> bool:
    """Whether the tunable changes anything here: a glibc that knows it, a kernel in madvise mode."""
    return glibc_has_tunable() and kernel_advises_huge_pages()


def reexec_with_huge_page_malloc() -> None:
    """Replace this process with the same command under ``glibc.malloc.hugetlb=1`` and with
    :mod:`hdvila_jax.block_cache` preloaded, where either takes effect and is not set yet (see the
    module docstring); otherwise return at once."""
    huge_pages = huge_page_environ(os.environ) if takes_effect() else None
    preloaded = block_cache.preload_environ(huge_pages or os.environ)
    environ = preloaded or huge_pages
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
