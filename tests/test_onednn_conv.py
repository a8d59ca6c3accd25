"""oneDNN convolutions (hdvila_jax/kernels): built here, equal to XLA's convolution in value and
gradient, chosen by models.conv where they apply, and a cached, checked build."""
import dataclasses
import platform
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdvila_jax.kernels import build, onednn_conv
from hdvila_jax.models import conv

LINUX_X86 = platform.system() == "Linux" and platform.machine() == "x86_64"


def reference_conv(x, kernel, stride):
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        preferred_element_type=jnp.float32)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def random_pair(shape, kernel_shape, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape), dtype)
    w = jnp.asarray(rng.standard_normal(kernel_shape) / np.sqrt(np.prod(kernel_shape[:3])), dtype)
    return x, w


@pytest.mark.skipif(not LINUX_X86, reason="the oneDNN wheels (setup.py) are for Linux x86-64")
def test_builds_and_loads_here():
    assert onednn_conv.onednn_root() is not None, "onednn-cpu-gomp / onednn-devel-cpu-gomp not installed"
    assert onednn_conv.unavailable_reason() is None


needs_onednn = pytest.mark.skipif(not onednn_conv.available(), reason=f"{onednn_conv.unavailable_reason()}")


@needs_onednn
@pytest.mark.parametrize("shape, k, cout, stride", [
    ((2, 16, 24, 8), 3, 16, 1), ((2, 17, 23, 8), 3, 16, 2), ((3, 9, 13, 5), 3, 7, 1), ((2, 32, 48, 3), 7, 8, 2),
    ((1, 8, 12, 16), 5, 4, 1)])
def test_matches_xla_values_and_gradients(shape, k, cout, stride):
    x, w = random_pair(shape, (k, k, shape[-1], cout))
    y = onednn_conv.conv2d(x, w, stride)
    y_ref = reference_conv(x, w, stride)
    assert y.shape == y_ref.shape
    assert rel(y, y_ref) < 1e-5
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), jnp.float32)
    grads = jax.vjp(lambda x, w: onednn_conv.conv2d(x, w, stride), x, w)[1](ct)
    grads_ref = jax.vjp(lambda x, w: reference_conv(x, w, stride), x, w)[1](ct)
    for g, g_ref in zip(grads, grads_ref):
        assert rel(g, g_ref) < 1e-5


@needs_onednn
@pytest.mark.skipif(np.dtype(jnp.bfloat16) not in onednn_conv.supported_dtypes(),
                    reason="this CPU has no bfloat16 instructions oneDNN convolutions use (AVX512-BF16, AMX, AVX-512)")
def test_bfloat16_close_to_float32():
    x, w = random_pair((2, 16, 24, 32), (3, 3, 32, 32), jnp.bfloat16)
    y = onednn_conv.conv2d(x, w, 1)
    assert y.dtype == jnp.bfloat16
    assert rel(y, reference_conv(x.astype(jnp.float32), w.astype(jnp.float32), 1)) < 1e-2
    dx, dw = jax.grad(lambda x, w: jnp.sum(onednn_conv.conv2d(x, w, 1).astype(jnp.float32) ** 2), (0, 1))(x, w)
    dx_ref, dw_ref = jax.grad(lambda x, w: jnp.sum(reference_conv(x, w, 1) ** 2), (0, 1))(
        x.astype(jnp.float32), w.astype(jnp.float32))
    assert rel(dx, dx_ref) < 2e-2 and rel(dw, dw_ref) < 2e-2


@needs_onednn
def test_under_jit_remat_and_vmap():
    x, w = random_pair((2, 2, 12, 16, 8), (3, 3, 8, 8))
    f = lambda x, w: jnp.sum(jnp.tanh(onednn_conv.conv2d(x, w, 1)))
    f_ref = lambda x, w: jnp.sum(jnp.tanh(reference_conv(x, w, 1)))
    g = jax.jit(jax.grad(jax.checkpoint(f), (0, 1)))(x[0], w)
    g_ref = jax.grad(f_ref, (0, 1))(x[0], w)
    assert all(rel(a, b) < 1e-5 for a, b in zip(g, g_ref))
    batched = jax.vmap(lambda x: onednn_conv.conv2d(x, w, 1))(x)
    assert rel(batched, jax.vmap(lambda x: reference_conv(x, w, 1))(x)) < 1e-5


@needs_onednn
def test_kernel_rejects_inconsistent_shapes():
    x, w = random_pair((1, 8, 8, 4), (3, 3, 4, 4))
    wrong = jax.ShapeDtypeStruct((1, 7, 8, 4), jnp.float32)  # the output of a 3x3, pad 1 conv is 8x8
    call = jax.ffi.ffi_call(onednn_conv.FORWARD, wrong)
    with pytest.raises(Exception, match="inconsistent shapes"):
        jax.block_until_ready(call(x, w, stride=np.int64(1), pad=np.int64(1)))


@needs_onednn
def test_models_conv_takes_onednn_where_it_applies():
    x, w = random_pair((2, 16, 24, 8), (3, 3, 8, 8))
    jaxpr = lambda *a, **kw: str(jax.make_jaxpr(lambda x, w: conv.conv2d(x, w, platform="cpu", **kw))(*a))
    assert onednn_conv.FORWARD not in jaxpr(x, w)  # opt-in: XLA's by default
    assert onednn_conv.FORWARD not in jaxpr(x, w, onednn=False)
    with mock.patch.dict("os.environ", {"HDVILA_ONEDNN_CONV": "1"}):  # no longer a switch
        assert onednn_conv.FORWARD not in jaxpr(x, w)
    assert onednn_conv.FORWARD in jaxpr(x, w, onednn=True)
    assert onednn_conv.FORWARD not in jaxpr(x[:, :4, :6], w, onednn=True)  # 24 output cells: im2col
    assert onednn_conv.FORWARD not in jaxpr(x, w[:1, :1], onednn=True)  # 1x1: a matmul
    assert onednn_conv.FORWARD not in jaxpr(x.astype(jnp.float16), w.astype(jnp.float16), onednn=True)
    with mock.patch.object(jax, "device_count", lambda: 2):  # a sharded batch: XLA's convolution
        assert onednn_conv.FORWARD not in jaxpr(x, w, onednn=True)
    tpu = str(jax.make_jaxpr(lambda x, w: conv.conv2d(x, w, platform="tpu", onednn=True))(x, w))
    assert onednn_conv.FORWARD not in tpu  # CPU only


@needs_onednn
def test_model_config_onednn_conv_reaches_the_resnet():
    from hdvila_jax.models import HDVILA
    from hdvila_jax.models.variables import abstract_variables, example_batch
    from tests.model_helpers import small_config
    cfg = small_config(crop_size=(128, 192), lowering_platform="cpu")
    variables = abstract_variables(cfg, 1)
    batch = example_batch(cfg)
    for opted_in in (False, True):
        model = HDVILA(dataclasses.replace(cfg, onednn_conv=opted_in))
        jaxpr = str(jax.make_jaxpr(lambda v, b: model.apply(v, b, stage=1))(variables, batch))
        assert (onednn_conv.FORWARD in jaxpr) == opted_in


def test_unavailable_without_onednn(monkeypatch):
    monkeypatch.setattr(onednn_conv, "onednn_root", lambda: None)
    assert "no oneDNN found" in onednn_conv._load()


SOURCE = '''#include "xla/ffi/api/ffi.h"
namespace ffi = xla::ffi;
static ffi::Error Twice(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y) {
  for (size_t i = 0; i < x.element_count(); ++i) y->typed_data()[i] = 2 * x.typed_data()[i];
  return ffi::Error::Success();
}
XLA_FFI_DEFINE_HANDLER_SYMBOL(TestTwice, Twice, ffi::Ffi::Bind().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
'''


def test_build_is_cached_and_keyed_by_source(tmp_path, monkeypatch):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
    source = tmp_path / "twice.cc"
    source.write_text(SOURCE)
    first = build.build_library(source, [], [], [])
    mtime = first.stat().st_mtime_ns
    assert build.build_library(source, [], [], []) == first and first.stat().st_mtime_ns == mtime
    source.write_text(SOURCE + "// edited\n")
    second = build.build_library(source, [], [], [])
    assert second != first and second.parent == first.parent
    import ctypes
    jax.ffi.register_ffi_target("TestTwice", jax.ffi.pycapsule(ctypes.CDLL(str(second)).TestTwice), platform="cpu")
    x = jnp.arange(5, dtype=jnp.float32) - 1.5
    np.testing.assert_array_equal(jax.ffi.ffi_call("TestTwice", jax.ShapeDtypeStruct(x.shape, x.dtype))(x), 2 * x)


def test_build_error_names_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    source = tmp_path / "broken.cc"
    source.write_text("int f() { return undefined_name; }\n")
    with pytest.raises(build.BuildError, match="building broken.cc failed"):
        build.build_library(source, [], [], [])
    assert not list(tmp_path.glob("*.so"))
    monkeypatch.setenv(build.COMPILER_ENV, str(tmp_path / "no-such-compiler"))
    with pytest.raises(build.BuildError, match="cannot run the C\\+\\+ compiler"):
        build.build_library(source, [], [], [])


@pytest.mark.parametrize("broken", ["unwritable cache", "no compiler"])
def test_opted_in_but_unbuildable_is_a_warning_and_xla_convolutions(broken, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    if broken == "unwritable cache":  # the cache directory cannot be created under a file
        monkeypatch.setenv(build.CACHE_ENV, str(blocker / "cache"))
    else:
        monkeypatch.setenv(build.CACHE_ENV, str(tmp_path / "cache"))
        monkeypatch.setenv(build.COMPILER_ENV, str(tmp_path / "no-such-compiler"))
    onednn_conv.unavailable_reason.cache_clear()
    try:
        x, w = random_pair((2, 16, 24, 8), (3, 3, 8, 8))
        opted_in = lambda x, w: conv.conv2d(x, w, platform="cpu", onednn=True)
        assert onednn_conv.FORWARD not in str(jax.make_jaxpr(opted_in)(x, w))
        assert onednn_conv.unavailable_reason()
    finally:
        onednn_conv.unavailable_reason.cache_clear()


@pytest.mark.parametrize("flags, bf16", [(set(), False), ({"avx2", "fma"}, False), ({"avx512_bf16"}, True),
                                         ({"amx_bf16"}, True), ({"avx512f", "avx512bw", "avx512vl", "avx512dq"}, True),
                                         ({"avx512f", "avx512bw"}, False)])
def test_bfloat16_only_where_the_cpu_has_the_instructions(monkeypatch, flags, bf16):
    """A CPU without bf16 instructions (AMD Zen 2/3) keeps XLA's bfloat16 convolutions: oneDNN could not
    create the primitive there."""
    monkeypatch.setattr(onednn_conv, "cpu_flags", lambda: flags)
    onednn_conv.supported_dtypes.cache_clear()
    try:
        assert (np.dtype(jnp.bfloat16) in onednn_conv.supported_dtypes()) == bf16
        assert np.dtype(np.float32) in onednn_conv.supported_dtypes()
    finally:
        onednn_conv.supported_dtypes.cache_clear()
