"""The CPU lowerings of convolution and max-pooling match XLA's own ops, values and gradients; the
max-pool of other platforms (``reduce_window``) matches too. The platform is an explicit argument
(``ModelConfig.lowering_platform`` passed down the module tree), never module state."""
import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from hdvila_jax.models import HDVILA, conv, layers, platform as platform_module
from hdvila_jax.models.conv import IM2COL_MAX_CELLS, conv2d, im2col_conv
from hdvila_jax.models.layers import max_pool
from hdvila_jax.models.variables import abstract_variables, example_batch
from tests.model_helpers import small_config


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
    ours = lambda x, w: conv2d(x, w, stride, platform="cpu")
    ref = lambda x, w: reference_conv(x, w, stride)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-5, atol=1e-5)
    ct = jnp.asarray(rng.standard_normal(ref(x, w).shape), jnp.float32)
    for g, g_ref in zip(jax.vjp(ours, x, w)[1](ct), jax.vjp(ref, x, w)[1](ct)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-4)


def test_small_maps_take_the_im2col_path():
    x, w = jnp.ones((1, 2, 3, 4)), jnp.ones((3, 3, 4, 4))
    assert 2 * 3 <= IM2COL_MAX_CELLS
    assert "conv_general_dilated" not in str(jax.make_jaxpr(lambda x, w: conv2d(x, w, platform="cpu"))(x, w))
    np.testing.assert_allclose(conv2d(x, w, platform="cpu"), im2col_conv(x, w, 1))


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
@pytest.mark.parametrize("window, stride, pad", [(3, 2, 1), (2, 2, 0)])
def test_max_pool_matches_flax(window, stride, pad, platform):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 12, 3)), jnp.float32)
    ref = nn.max_pool(x, (window, window), strides=(stride, stride), padding=((pad, pad), (pad, pad)))
    np.testing.assert_array_equal(max_pool(x, window, stride, pad, platform=platform), ref)


@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_max_pool_gradient_goes_to_the_first_maximum(platform):
    x = jnp.zeros((1, 2, 2, 1))  # one 2x2 window, four tied maxima
    grad = jax.grad(lambda x: max_pool(x, 2, 2, platform=platform).sum())(x)
    np.testing.assert_array_equal(grad[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])


def test_max_pool_gradients_agree_across_platforms():
    # ResNet's stem pool on a ReLU output: many tied zeros, overlapping 3x3 windows with stride 2.
    x = jnp.maximum(jnp.asarray(np.random.default_rng(1).standard_normal((2, 11, 14, 4)), jnp.float32), 0)
    ct = jnp.asarray(np.random.default_rng(2).standard_normal((2, 6, 7, 4)), jnp.float32)
    grads = {}
    for platform in ("cpu", "tpu"):
        out, vjp = jax.vjp(lambda x: max_pool(x, 3, 2, 1, platform=platform), x)
        grads[platform] = (out, vjp(ct)[0])
    for cpu, other in zip(grads["cpu"], grads["tpu"]):
        np.testing.assert_array_equal(other, cpu)


@pytest.mark.parametrize("relu", [jax.nn.relu, layers.relu])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("platform", ["cpu", "tpu"])
def test_relu_after_the_stem_pool_gives_the_same_values_and_gradients(platform, dtype, relu):
    # The ResNet stem pools before its ReLU (issue 32): max-pool(ReLU(z)) = ReLU(max-pool(z)), gradients bit
    # for bit. Coarse values make ties everywhere: all-negative windows, tied zeros, tied positive maxima.
    rng = np.random.default_rng(3)
    z = jnp.asarray(np.round(rng.standard_normal((2, 11, 14, 4)) * 2) / 2, dtype)
    z = z.at[0, :4, :4].set(-1.0)  # whole windows below zero
    ct = jnp.asarray(rng.standard_normal((2, 6, 7, 4)), dtype)
    before = jax.vjp(lambda z: max_pool(relu(z), 3, 2, 1, platform=platform), z)
    after = jax.vjp(lambda z: relu(max_pool(z, 3, 2, 1, platform=platform)), z)
    np.testing.assert_array_equal(np.asarray(after[0], np.float32), np.asarray(before[0], np.float32))
    grad_before, grad_after = (np.asarray(vjp(ct)[0], np.float32) for _, vjp in (before, after))
    np.testing.assert_array_equal(grad_after, grad_before)
    assert (grad_after != 0).sum() > 20 and (z <= 0).sum() > 100 and (grad_after[z <= 0] == 0).all()


def equations(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in it (jit, remat, custom VJPs)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from equations(sub)


def conv_kernel_sizes(fn, *args) -> list[tuple[int, int]]:
    """The kernel windows of the ``conv_general_dilated`` ops ``fn`` lowers to."""
    return [tuple(e.invars[1].aval.shape[:2]) for e in equations(jax.make_jaxpr(fn)(*args).jaxpr)
            if e.primitive.name == "conv_general_dilated"]


@pytest.mark.parametrize("platform", ["cpu", "tpu", "gpu", ""])
def test_conv_and_max_pool_lower_for_the_platform_argument(platform):
    x, w = jnp.ones((1, 4, 6, 4)), jnp.ones((3, 3, 4, 4))  # 24 output cells: im2col on CPU
    cpu = (platform or jax.default_backend()) == "cpu"
    assert conv_kernel_sizes(lambda x, w: conv2d(x, w, platform=platform), x, w) == ([] if cpu else [(3, 3)])
    assert conv_kernel_sizes(lambda x, w: conv2d(x, w[:1, :1], platform=platform), x, w) == ([] if cpu else [(1, 1)])
    pool_jaxpr = str(jax.make_jaxpr(lambda x: max_pool(x, 3, 2, 1, platform=platform))(x))
    assert ("reduce_window" in pool_jaxpr) == (not cpu)


@pytest.mark.parametrize("lowering_platform", ["cpu", "tpu"])
def test_model_config_platform_decides_the_lowering(lowering_platform):
    # Traced on this CPU host: the config's platform, not the default backend, picks the forms. For
    # TPU every convolution is a conv_general_dilated and the max-pools reduce_window; for CPU 1x1
    # convolutions are matmuls, those on small maps im2col matmuls, and the max-pools strided views.
    cfg = small_config(lowering_platform=lowering_platform)
    variables = abstract_variables(dataclasses.replace(cfg, lowering_platform=""), 1)
    forward = lambda v, b: HDVILA(cfg).apply(v, b, stage=1)
    kernels = conv_kernel_sizes(forward, variables, example_batch(cfg))
    pools = str(jax.make_jaxpr(forward)(variables, example_batch(cfg))).count("reduce_window")
    if lowering_platform == "tpu":
        n_convs = sum(leaf.ndim == 4 for leaf in jax.tree.leaves(variables["params"]["video"]))
        assert len(kernels) >= n_convs and (1, 1) in kernels and pools == 3  # 2 stems, the HR grid
    else:
        assert (1, 1) not in kernels and pools == 0


def test_the_lowering_choices_are_arguments_not_module_state():
    # No switch left in module globals or the environment: only arguments decide.
    for module in (conv, layers, platform_module):
        source = inspect.getsource(module)
        assert "global " not in source and "os.environ" not in source and "contextmanager" not in source
    for name in ("ONEDNN_OPT_IN", "onednn_used", "onednn_opted_in", "_onednn_override"):
        assert not hasattr(conv, name)
    for name in ("lowering_platform", "traced_for", "target_platform", "uses_cpu_lowering", "_target"):
        assert not hasattr(platform_module, name)
    assert inspect.signature(conv2d).parameters["platform"].default is inspect.Parameter.empty
    assert inspect.signature(max_pool).parameters["platform"].default is inspect.Parameter.empty
    assert {"lowering_platform", "onednn"} <= {f.name for f in dataclasses.fields(conv.Conv)}
