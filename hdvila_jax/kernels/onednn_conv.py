"""oneDNN's 2-D convolution as a differentiable JAX op for XLA:CPU (FFI custom calls).

jaxlib 0.10's XLA:CPU runs convolutions in YNNPACK, which uses one core for most ResNet 3x3
shapes (docs/performance.md). oneDNN, the library PyTorch's CPU convolutions use, runs them on all
cores: on this project's 2-core CPU the 8x32x48x64 -> 64 3x3 convolution takes 3.9 ms forward
against YNNPACK's 8.9. ``onednn_conv.cc`` wraps oneDNN's forward, backward-data and
backward-weights primitives as XLA FFI handlers; :func:`conv2d` calls them with a custom VJP.
In a whole train step on that CPU the gain is much smaller: XLA already keeps both cores busy
with independent work (docs/performance.md).

The library is compiled on first use (``hdvila_jax.kernels.build``, about 3 s) against the
oneDNN of the ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` wheels (``pip install -e ".[onednn]"``,
Linux x86-64) and cached. :func:`available` says whether it could be built and loaded; where it cannot (no C++
compiler, no oneDNN), it logs why once and callers keep XLA's own convolution.

Opt-in: the model config's ``onednn_conv`` (``--config.model.onednn_conv=true``; the argument
``onednn`` of ``hdvila_jax.models.conv.conv2d``) makes ``hdvila_jax.models.conv`` import and take it. It
is not the default because, in float32, it changes rounding enough to move two of our
tolerance-bound tests past their bounds (a gradient norm of one reference fixture by 0.13% against
a 0.1% bound, and gradient accumulation against one big batch) and the step gain did not pay for
that here (docs/performance.md).
"""
from __future__ import annotations

import ctypes
import functools
import os
import site
import sys
from pathlib import Path

import jax
import numpy as np
from absl import logging

from hdvila_jax.kernels.build import BuildError, build_library

SOURCE = Path(__file__).with_name("onednn_conv.cc")
ROOT_ENV = "HDVILA_ONEDNN_ROOT"  # a oneDNN install (include/ and lib/) to use instead of the wheels'
FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS = ("HdvilaOnednnConvForward", "HdvilaOnednnConvBackwardData",
                                            "HdvilaOnednnConvBackwardWeights")
# oneDNN runs bfloat16 convolutions on CPUs with AVX512-BF16 / AMX, or emulated on AVX-512 (avx512_core);
# elsewhere (e.g. AMD Zen 2/3) it cannot create the primitive.
BF16_CPU_FLAGS = ({"avx512_bf16"}, {"amx_bf16"}, {"avx512f", "avx512bw", "avx512vl", "avx512dq"})


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=1)
def supported_dtypes() -> tuple[np.dtype, ...]:
    """The dtypes :func:`conv2d` runs here: float32, and bfloat16 where the CPU has the instructions."""
    flags = cpu_flags()
    bf16 = any(needed <= flags for needed in BF16_CPU_FLAGS)
    return (np.dtype(np.float32),) + ((np.dtype(jax.numpy.bfloat16),) if bf16 else ())


def onednn_root() -> Path | None:
    """The first install prefix with oneDNN's C++ header and library: ``$HDVILA_ONEDNN_ROOT``, else
    where pip puts the wheels' files (this environment's prefix, the base one, the user base)."""
    candidates = [os.environ.get(ROOT_ENV), sys.prefix, sys.base_prefix, site.getuserbase()]
    for root in filter(None, candidates):
        root = Path(root)
        if (root / "include/oneapi/dnnl/dnnl.hpp").is_file() and (root / "lib/libdnnl.so").exists():
            return root
    return None


@functools.cache
def unavailable_reason() -> str | None:
    """None once the kernels are built, loaded and registered with XLA:CPU; else why not (logged once)."""
    reason = _load()
    if reason:
        logging.warning("oneDNN convolutions unavailable, XLA's are used: %s", reason)
    return reason


def available() -> bool:
    """Whether :func:`conv2d` can run (see :func:`unavailable_reason`)."""
    return unavailable_reason() is None


def _load() -> str | None:
    root = onednn_root()
    if root is None:
        return (f"no oneDNN found (pip install onednn-cpu-gomp onednn-devel-cpu-gomp, or set {ROOT_ENV} "
                "to a prefix with include/oneapi/dnnl/dnnl.hpp and lib/libdnnl.so)")
    try:
        library = ctypes.CDLL(str(build_library(SOURCE, [root / "include"], [root / "lib"], ["dnnl"])))
    except (BuildError, OSError) as e:
        return str(e)
    for name in (FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    return None


def output_shape(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int) -> tuple[int, ...]:
    """``[N, H', W', Cout]`` of a convolution with padding ``k // 2`` on each side."""
    n, h, w, _ = x_shape
    kh, kw, _, out = kernel_shape
    return n, (h + 2 * (kh // 2) - kh) // stride + 1, (w + 2 * (kw // 2) - kw) // stride + 1, out


def _call(target: str, shape: tuple[int, ...], a: jax.Array, b: jax.Array, stride: int, pad: int) -> jax.Array:
    result = jax.ShapeDtypeStruct(shape, a.dtype)
    return jax.ffi.ffi_call(target, result, vmap_method="sequential")(a, b, stride=np.int64(stride),
                                                                      pad=np.int64(pad))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``x [N, H, W, Cin]`` * ``kernel [k, k, Cin, Cout]`` (odd ``k``), padding ``k // 2``, ``stride``,
    in oneDNN; the same result as ``lax.conv_general_dilated`` with NHWC/HWIO dimension numbers.
    CPU only; raises RuntimeError where the kernels are not :func:`available`."""
    if not available():
        raise RuntimeError(f"oneDNN convolutions unavailable: {unavailable_reason()}")
    return _call(FORWARD, output_shape(x.shape, kernel.shape, stride), x, kernel, stride, kernel.shape[0] // 2)


def _conv2d_forward(x, kernel, stride):
    return conv2d(x, kernel, stride), (x, kernel)


def _conv2d_backward(stride, residuals, dy):
    x, kernel = residuals
    pad = kernel.shape[0] // 2
    dx = _call(BACKWARD_DATA, x.shape, dy, kernel, stride, pad)
    dkernel = _call(BACKWARD_WEIGHTS, kernel.shape, x, dy, stride, pad)
    return dx, dkernel


conv2d.defvjp(_conv2d_forward, _conv2d_backward)
