"""The preloaded block cache (hdvila_jax/block_cache.py, block_cache.cc): large blocks are reused,
everything else is glibc's, and the entry points' restart preloads it."""
import json
import os

import pytest

from hdvila_jax import block_cache
from tests.malloc_probe import TEMPORARY_BYTES, run_python, temporary_faults

MIB = 2**20

pytestmark = pytest.mark.skipif(not block_cache.supported(), reason="needs Linux with glibc")


def test_large_blocks_are_reused_up_to_a_bound_and_everything_else_is_glibcs():
    out = run_python("""
        import ctypes, json
        libc = ctypes.CDLL(None)
        for name, res, args in [("malloc", ctypes.c_void_p, [ctypes.c_size_t]), ("free", None, [ctypes.c_void_p]),
                                ("realloc", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
                                ("malloc_usable_size", ctypes.c_size_t, [ctypes.c_void_p]),
                                ("posix_memalign", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t])]:
            getattr(libc, name).restype, getattr(libc, name).argtypes = res, args
        MIB = 2**20
        a = libc.malloc(100 * MIB)
        libc.free(a)
        b = libc.malloc(90 * MIB)  # fits the freed 100 MiB block
        usable = libc.malloc_usable_size(b)
        ctypes.memset(b, 7, 90 * MIB)
        c = libc.realloc(b, 300 * MIB)  # larger than the block: a new one, the bytes copied
        tail = ctypes.string_at(c + 90 * MIB - 4, 4)
        d = ctypes.c_void_p()
        rc = libc.posix_memalign(ctypes.byref(d), 4096, 80 * MIB)  # the 100 MiB block again
        bad = libc.posix_memalign(ctypes.byref(ctypes.c_void_p()), 3, 80 * MIB)
        small = libc.malloc(1000)
        libc.free(c); libc.free(d)

        def mapped(address):  # whether `address` lies in a mapping of this process
            spans = [line.split()[0].split("-") for line in open("/proc/self/maps")]
            return any(int(start, 16) <= address < int(end, 16) for start, end in spans)
        big = 5 * 2**30  # never touched: only address space
        e, f = libc.malloc(big), libc.malloc(big)
        libc.free(e)  # kept: 5 GiB free
        libc.free(f)  # would keep 10 GiB free, over the 8 GiB bound: unmapped
        print(json.dumps(dict(reused=a == b, usable=usable, moved=c != b, tail=list(tail), rc=rc, aligned=a == d.value,
                              bad=bad, small_usable=libc.malloc_usable_size(small), kept=[mapped(e), mapped(f)])))
    """, LD_PRELOAD=os.fspath(block_cache.library()))
    facts = json.loads(out)
    assert facts["reused"] and facts["usable"] == 100 * MIB  # whole 2 MiB pages
    assert facts["moved"] and facts["tail"] == [7] * 4
    assert facts["rc"] == 0 and facts["aligned"]
    assert facts["bad"] == 22  # EINVAL, as glibc's posix_memalign
    assert 1000 <= facts["small_usable"] < 4096  # glibc's
    assert facts["kept"] == [True, False]


def test_preload_environ_adds_the_library_once_and_honours_the_opt_out():
    env = block_cache.preload_environ({"LD_PRELOAD": "/opt/lib/other.so", "PATH": "/bin"})
    other, ours = env["LD_PRELOAD"].split(":")
    assert other == "/opt/lib/other.so" and ours == os.fspath(block_cache.library()) and env["PATH"] == "/bin"
    assert block_cache.preload_environ(env) is None
    assert block_cache.preload_environ({block_cache.OPT_OUT: "0"}) is None


def test_entry_point_restart_preloads_it_and_xla_temporaries_stop_faulting():
    off = dict(HDVILA_HUGE_PAGE_MALLOC="0", HDVILA_BLOCK_CACHE="0")
    preload_off, faults_off = temporary_faults(**off)
    preload_on, faults_on = temporary_faults(HDVILA_HUGE_PAGE_MALLOC="0")
    assert preload_off == "" and preload_on == os.fspath(block_cache.library())
    assert faults_off > TEMPORARY_BYTES / 4096 * 0.9  # each 4 KiB page of the temporary faults in on every call
    # What still faults is glibc's: the 2 MiB output, 512 pages, is below the cache's 64 MiB.
    assert faults_on < 0.03 * faults_off, (faults_on, faults_off)
