"""The CPU lowerings of convolution and max-pooling match XLA's own ops, values and gradients; the
max-pool of other platforms (``reduce_window``) matches too."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from hdvila_jax.models.conv import IM2COL_MAX_CELLS, conv2d, im2col_conv
from hdvila_jax.models.layers import max_pool
from hdvila_jax.models.platform import lowering_platform


def reference_conv(x, kernel, stride):
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("hw, kernel, stride", [
    ((2, 3), 3, 1), ((4, 6), 3, 2), ((5, 7), 3, 2), ((8, 12), 1, 1), ((8, 12), 1, 2), ((16, 24), 3, 1),
    ((4, 6), 7, 2)])
def test_conv2d_matches_xla_convolution(hw, kernel, stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, *hw, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, 8, 5)), jnp.float32)
    ours = lambda x, w: conv2d(x, w, stride)
    ref = lambda x, w: reference_conv(x, w, stride)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    ct = jnp.asarray(rng.standard_normal(ref(x, w).shape), jnp.float32)
    for g, g_ref in zip(jax.vjp(ours, x, w)[1](ct), jax.vjp(ref, x, w)[1](ct)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4)


def test_small_maps_take_the_im2col_path():
    x, w = jnp.ones((1, 2, 3, 4)), jnp.ones((3, 3, 4, 4))
    assert 2 * 3 <= IM2COL_MAX_CELLS
    assert "conv_general_dilated" not in str(jax.make_jaxpr(conv2d)(x, w))
    np.testing.assert_allclose(conv2d(x, w), im2col_conv(x, w, 1))


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
@pytest.mark.parametrize("window, stride, pad", [(3, 2, 1), (2, 2, 0)])
def test_max_pool_matches_flax(window, stride, pad, platform):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 12, 3)), jnp.float32)
    ref = nn.max_pool(x, (window, window), strides=(stride, stride), padding=((pad, pad), (pad, pad)))
    with lowering_platform(platform):
        np.testing.assert_array_equal(max_pool(x, window, stride, pad), ref)


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_max_pool_gradient_goes_to_the_first_maximum(platform):
    x = jnp.zeros((1, 2, 2, 1))  # one 2x2 window, four tied maxima
    with lowering_platform(platform):
        grad = jax.grad(lambda x: max_pool(x, 2, 2).sum())(x)
    np.testing.assert_array_equal(grad[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])


def test_max_pool_gradients_agree_across_platforms():
    # ResNet's stem pool on a ReLU output: many tied zeros, overlapping 3x3 windows with stride 2.
    x = jnp.maximum(jnp.asarray(np.random.default_rng(1).standard_normal((2, 11, 14, 4)), jnp.float32), 0)
    ct = jnp.asarray(np.random.default_rng(2).standard_normal((2, 6, 7, 4)), jnp.float32)
    grads = {}
    for platform in ("cpu", "tpu"):
        with lowering_platform(platform):
            out, vjp = jax.vjp(lambda x: max_pool(x, 3, 2, 1), x)
        grads[platform] = (out, vjp(ct)[0])
    for cpu, other in zip(grads["cpu"], grads["tpu"]):
        np.testing.assert_array_equal(other, cpu)
