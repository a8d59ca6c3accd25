"""glibc malloc on transparent huge pages (hdvila_jax/huge_page_malloc.py): the environment it
sets, the restart, and the page faults it saves on an XLA:CPU program's temporaries."""
import pytest

from hdvila_jax import huge_page_malloc as hpm
from tests.malloc_probe import TEMPORARY_BYTES, run_python, temporary_faults

ALONE = {"HDVILA_BLOCK_CACHE": "0"}  # huge pages without the block cache
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


@takes_effect
def test_process_restarts_itself_once_with_the_tunable():
    out = run_python("""
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
    opted_out = run_python("""
        from hdvila_jax.huge_page_malloc import reexec_with_huge_page_malloc
        reexec_with_huge_page_malloc()
        print("after")
    """, HDVILA_HUGE_PAGE_MALLOC="0", **ALONE)
    assert opted_out.split() == ["after"]


@takes_effect
def test_huge_pages_cut_the_page_faults_of_xla_temporaries():
    _, small_pages = temporary_faults(HDVILA_HUGE_PAGE_MALLOC="0", **ALONE)
    _, huge_pages = temporary_faults(**ALONE)
    assert small_pages > TEMPORARY_BYTES / 4096 * 0.9  # each 4 KiB page of the temporary faults in on every call
    assert huge_pages < 0.2 * small_pages, (huge_pages, small_pages)
