"""Shared by the malloc tests: run Python in a fresh process, and a probe that restarts like an
entry point and counts the page faults of an XLA:CPU program's 128 MiB temporary."""
import json
import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPORARY_BYTES = 128 * 2**20
# Settings the tests choose themselves, never inherited from the shell that runs them.
CONTROLLED = ("LD_PRELOAD", "GLIBC_TUNABLES", "HDVILA_HUGE_PAGE_MALLOC", "HDVILA_BLOCK_CACHE")

TEMPORARY_FAULTS = """
    import json, os, resource, jax, jax.numpy as jnp
    from hdvila_jax.huge_page_malloc import reexec_with_huge_page_malloc
    reexec_with_huge_page_malloc()
    x = jnp.ones((8192, 4096), jnp.float32)
    f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x[:4096, :64]))  # keeps sin(x), 128 MiB, as a temporary
    jax.block_until_ready(f(x))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        jax.block_until_ready(f(x))
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
    print(json.dumps([os.environ.get("LD_PRELOAD", ""), faults]))
"""


def run_python(code: str, **env: str) -> str:
    """The stdout of ``python -c code`` with this repository importable and ``env`` set."""
    environ = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu", **env}, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def temporary_faults(**env: str) -> tuple[str, float]:
    """``(LD_PRELOAD after the restart, minor page faults per call)`` of the probe under ``env``."""
    preload, faults = json.loads(run_python(TEMPORARY_FAULTS, **env))
    return preload, faults
