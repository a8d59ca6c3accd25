"""The persistent XLA compilation cache of a run (``config.compilation_cache_dir``): a restarted or
resumed job loads its compiled train and eval steps instead of compiling them again.

``config.compilation_cache_dir`` is a local folder or a ``gs://`` path; ``{workdir}`` in it stands
for the run's workdir. The default, :data:`DEFAULT` (``{workdir}/xla_cache``), puts the cache next
to the checkpoints: a job restarted after preemption with the same ``--workdir`` (the case this is
for) finds it with no flag, on every host of a pod when the workdir is a bucket, and it goes away
with the run. Point several runs at one folder (``gs://BUCKET/xla_cache``) to share it between runs
of the same config; ``""`` turns the cache off.

With the default left in place, a cache folder the environment already names
(``JAX_COMPILATION_CACHE_DIR`` or ``--jax_compilation_cache_dir``, e.g. the test session's) is kept; any
other value of the field wins over the environment.

jax reads and writes the entries through ``etils.epath`` (``gs://`` through gcsfs, as set up by
``hdvila_jax.storage``); in a multi-process run only process 0 writes, every process reads. Every
compiled program is cached (jax's defaults skip those under 1 s of compile time, which on a CPU
are most of them). The cache is trusted code: never point it at a folder others can write to.
"""
from __future__ import annotations

import jax
from absl import logging

from hdvila_jax import storage

DEFAULT = "{workdir}/xla_cache"


def cache_dir(configured: str, workdir: str) -> str:
    """The cache folder ``configured`` (``config.compilation_cache_dir``) names for ``workdir``
    (``""``: no cache)."""
    if not configured:
        return ""
    return storage.absolute(configured.replace("{workdir}", storage.absolute(workdir)))


def setup_compilation_cache(configured: str, workdir: str) -> str:
    """Point jax's persistent compilation cache at ``configured`` (see the module docstring) before
    anything compiles; returns the folder in use (``""``: none)."""
    environment = jax.config.jax_compilation_cache_dir
    if configured == DEFAULT and environment:
        folder, source = environment, "the environment (JAX_COMPILATION_CACHE_DIR)"
    else:
        folder, source = cache_dir(configured, workdir), "config.compilation_cache_dir"
    if not folder:
        jax.config.update("jax_enable_compilation_cache", False)
        logging.info("persistent compilation cache: off (%s is empty)", source)
        return ""
    if storage.is_remote(folder):
        storage.path(folder)  # sets up gs:// access (gcsfs, the emulator) before jax's epath reaches it
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    logging.info("persistent compilation cache: %s (from %s)", folder, source)
    return folder
