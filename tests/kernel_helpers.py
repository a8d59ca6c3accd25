"""Shared checks of the attention kernels (tests/test_fused_attention.py, tests/test_temporal_attention.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from tests.model_helpers import relative_error


def random_qkv(shape, dtype, seed=0):
    """q, k, v and an output gradient of ``shape`` (q and k spread wider, for peaked softmaxes)."""
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape) * scale, dtype) for scale in (1.5, 1.5, 1.0, 1.0))


def assert_kernel_matches(kernel, xla, shape, dtype, tolerance) -> None:
    """``kernel(q, k, v)`` gives ``xla(q, k, v)``'s output and gradients (dtypes equal, relative error
    below ``tolerance``) on random inputs of ``shape`` and ``dtype``."""
    q, k, v, d_out = random_qkv(shape, dtype)
    out, vjp = jax.vjp(xla, q, k, v)
    fused_out, fused_vjp = jax.vjp(kernel, q, k, v)
    assert fused_out.dtype == out.dtype and fused_out.shape == out.shape
    assert relative_error(fused_out, out) < tolerance
    for ours, theirs in zip(fused_vjp(d_out), vjp(d_out)):
        assert ours.dtype == theirs.dtype
        assert relative_error(ours, theirs) < tolerance
