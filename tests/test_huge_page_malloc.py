"""glibc malloc on transparent huge pages (hdvila_jax/huge_page_malloc.py): the environment it
sets, the restart, and the page faults it saves on an XLA:CPU program's temporaries."""
import os
import subprocess
import sys
import textwrap

import pytest

from hdvila_jax import huge_page_malloc as hpm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
takes_effect = pytest.mark.skipif(not hpm.takes_effect(), reason=hpm.NEEDS)


def test_environ_adds_the_tunable_and_keeps_the_users_others():
    assert hpm.huge_page_environ({"PATH": "/bin"}) == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    env = hpm.huge_page_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ", [{"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                                     {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"},
                                     {"HDVILA_HUGE_PAGE_MALLOC": "0"}])
def test_environ_leaves_a_users_choice_alone(environ):
    assert hpm.huge_page_environ(environ) is None


@pytest.mark.parametrize("mode,expected", [("always [madvise] never\n", True), ("[always] madvise never\n", False),
                                           ("always madvise [never]\n", False)])
def test_kernel_mode_is_read_from_the_sysfs_file(tmp_path, mode, expected):
    path = tmp_path / "enabled"
    path.write_text(mode)
    assert hpm.kernel_advises_huge_pages(str(path)) is expected
    assert hpm.kernel_advises_huge_pages(str(tmp_path / "missing")) is False


def _python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hpm.OPT_OUT)}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env={**environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu",
                                 "HDVILA_BLOCK_CACHE": "0", **env}, timeout=300)  # huge pages alone
    assert result.returncode == 0, result.stderr
    return result.stdout


@takes_effect
def test_process_restarts_itself_once_with_the_tunable():
    out = _python("""
        import os, sys
        print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
        from hdvila_jax.huge_page_malloc import reexec_with_huge_page_malloc
        reexec_with_huge_page_malloc()
        print("after", os.getpid(), os.environ["GLIBC_TUNABLES"])
    """)
    lines = [line.split() for line in out.splitlines()]
    assert [line[0] for line in lines] == ["start", "start", "after"]
    assert lines[0][2] == "None" and lines[1][2] == lines[2][2] == "glibc.malloc.hugetlb=1"
    assert lines[0][1] == lines[1][1] == lines[2][1]  # the same process, replaced in place
    opted_out = _python("""
        from hdvila_jax.huge_page_malloc import reexec_with_huge_page_malloc
        reexec_with_huge_page_malloc()
        print("after")
    """, HDVILA_HUGE_PAGE_MALLOC="0")
    assert opted_out.split() == ["after"]


@takes_effect
def test_huge_pages_cut_the_page_faults_of_xla_temporaries():
    probe = """
        import resource, jax, jax.numpy as jnp
        from hdvila_jax.huge_page_malloc import reexec_with_huge_page_malloc
        reexec_with_huge_page_malloc()
        x = jnp.ones((8192, 4096), jnp.float32)
        f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x[:4096, :64]))  # keeps sin(x), 128 MiB, as a temporary
        jax.block_until_ready(f(x))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            jax.block_until_ready(f(x))
        print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
    """
    small_pages = float(_python(probe, HDVILA_HUGE_PAGE_MALLOC="0"))
    huge_pages = float(_python(probe))
    assert small_pages > 128 * 2**20 / 4096 * 0.9  # each 4 KiB page of the temporary faults in on every call
    assert huge_pages < 0.2 * small_pages, (huge_pages, small_pages)
