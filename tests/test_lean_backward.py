"""The "elementwise" remat policy (issue 32: ReLUs whose gradient reads their output, the stems' inputs
recomputed from the pixels, transformer blocks keeping only their projections' outputs) gives today's
numbers and keeps fewer bytes for the backward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from hdvila_jax.models import HDVILA
from hdvila_jax.models.layers import relu
from hdvila_jax.models.resnet import RECOMPUTED_OUTPUT_STAGES, ResNet
from tests.model_helpers import init_small, random_batch, relative_error, small_config


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_relu_has_jax_relus_values_and_gradient_bit_for_bit(dtype):
    x = jnp.asarray(np.random.default_rng(0).standard_normal(4096), dtype)
    x = x.at[:4].set(jnp.asarray([0.0, -0.0, 1e-30, -1e-30], dtype))  # the kink, both zeros, tiny values
    g = jnp.asarray(np.random.default_rng(1).standard_normal(4096), dtype)
    ours, vjp = jax.vjp(relu, x)
    theirs, their_vjp = jax.vjp(jax.nn.relu, x)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))
    np.testing.assert_array_equal(np.asarray(vjp(g)[0], np.float32), np.asarray(their_vjp(g)[0], np.float32))
    assert float(vjp(g)[0][0]) == 0.0  # the gradient at 0 is 0, as jax.nn.relu's


def test_relu_keeps_no_mask_for_the_backward_pass():
    w1, w2 = jnp.ones((8, 8)) / 8, jnp.ones((8, 3)) / 8
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8)), jnp.float32)
    for act, kinds in ((jax.nn.relu, {"bool", "float32"}), (relu, {"float32"})):
        saved = saved_residuals(lambda a, b: (act(x @ a) @ b).sum(), w1, w2)
        assert {str(aval.dtype) for aval, _ in saved} == kinds  # jax.nn.relu's mask of x > 0 is gone


def _loss_and_grads(cfg, variables, batch, stage):
    model = HDVILA(cfg)

    def loss(params):
        out = model.apply({**variables, "params": params}, batch, stage=stage)
        value = out["mlm_loss"] if stage == 2 else jnp.sum(out["text_features"] @ out["video_features"].T)
        return value, out

    (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return value, out, grads


@pytest.mark.parametrize("stage, platform", [(1, ""), (2, ""), (1, "tpu")])
def test_new_backward_gives_todays_outputs_and_gradients(stage, platform):
    # The tiny model's ResNet-50 bottlenecks (this test's point) at a small crop, float32; "tpu": traced for
    # TPU (its convolutions and max-pool) and run on the CPU.
    new_cfg = small_config(resnet_depth=50, remat=True, remat_policy="elementwise", lowering_platform=platform)
    variables = init_small(new_cfg, stage=stage)
    batch = random_batch(new_cfg, batch=2, clips=2)
    new = _loss_and_grads(new_cfg, variables, batch, stage)
    # Today's formulation: no remat policy (jax's ReLU, the stem's input kept).
    old = _loss_and_grads(small_config(resnet_depth=50, lowering_platform=platform), variables, batch, stage)
    assert relative_error(new[0], old[0]) < 1e-6
    for name in old[1]:
        if name == "mlm_acc":  # a count of right guesses: equal, not relatively close
            assert float(new[1][name]) == float(old[1][name])
        else:
            assert relative_error(new[1][name], old[1][name]) < 1e-6, name
    flat_old, flat_new = (np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)]) for g in (old[2], new[2]))
    assert relative_error(flat_new, flat_old) < 1e-6
    leaves = jax.tree_util.tree_leaves_with_path(old[2])
    assert len(leaves) > 200
    # Per parameter, but for gradients that are zero up to round-off (e.g. attention's key bias, which
    # the softmax cancels: 1e-12 either way, so their relative error means nothing).
    meaningful = 1e-6 * np.linalg.norm(flat_old)
    checked = 0
    for (path, theirs), ours in zip(leaves, jax.tree_util.tree_leaves(new[2])):
        if np.linalg.norm(theirs) > meaningful:
            assert relative_error(ours, theirs) < 1e-5, jax.tree_util.keystr(path)
            checked += 1
    assert checked > 200  # stage 1 leaves the cross-modal layers and heads without gradient


def _saved_per_example(cfg):
    """Bytes of feature maps the video tower keeps for its backward pass per example (2 examples' less 1 example's: the
    parameters' bf16 copies stay out), by dtype."""
    variables = init_small(cfg, stage=1)
    model = HDVILA(cfg)
    kinds = {}
    for examples, sign in ((2, 1), (1, -1)):
        batch = random_batch(cfg, batch=examples, clips=2, with_labels=False)

        def loss(params):
            _, features = model.apply({**variables, "params": params}, batch["img_middle"], batch["img_other"],
                                      method=HDVILA.encode_video)
            return jnp.sum(features)

        for aval, source in saved_residuals(loss, variables["params"]):
            # Feature maps (rank >= 3; not the final feature vectors). Broadcast constants (jax.nn.relu's
            # zeros) are residuals to JAX but never buffers in XLA, and an optimization barrier's output is
            # its operand's buffer (the ReLU's output, kept anyway).
            if aval.ndim >= 3 and "output of" in source and not any(
                    op in source for op in ("broadcast_in_dim", "optimization_barrier")):
                kinds[str(aval.dtype)] = kinds.get(str(aval.dtype), 0) + sign * aval.size * aval.dtype.itemsize
    return {kind: n for kind, n in kinds.items() if n}


def test_elementwise_policy_keeps_no_masks_or_float32_activations():
    # Traced for TPU (nothing is compiled): on CPU the max-pool is a chain of selects that keeps masks.
    base = dict(resnet_depth=50, dtype="bfloat16", lowering_platform="tpu")
    after = _saved_per_example(small_config(**base, remat=True, remat_policy="elementwise"))
    before = _saved_per_example(small_config(**base))  # today's formulation: no remat policy
    # Today: ReLU masks (bool) and float32 LayerNorm / softmax intermediates are kept.
    assert before["bool"] > 0 and before["float32"] > 0
    assert "bool" not in after and "float32" not in after
    # 15.1 -> 5.7 MB per example here (10.8 while the stem's output and stage 1's block outputs were kept)
    assert sum(after.values()) < 0.45 * sum(before.values())


def _convolutions_in_gradient(remat_policy: str) -> int:
    model = ResNet(50, 4, jnp.float32, jnp.float32, remat_policy, "tpu")
    pixels = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3)), jnp.uint8)
    variables = model.init(jax.random.PRNGKey(0), pixels)

    def loss(params):
        return sum(jnp.sum(out) for out in model.apply({**variables, "params": params}, pixels))

    return str(jax.make_jaxpr(jax.grad(loss))(variables["params"])).count("conv_general_dilated")


def test_elementwise_policy_recomputes_only_the_stem_and_stage_1_block_outputs():
    # Traced for TPU, nothing compiled. Without remat: each convolution once forward, twice backward (the
    # stem's input gradient aside). "elementwise" adds the stem and, in stage 1 (RECOMPUTED_OUTPUT_STAGES),
    # each block's last 1x1 convolution and the first block's downsample: 1 + 3 + 1. Every BatchNorm of this
    # crop's stage 1 is folded into its convolution (at smaller maps a BatchNorm's scale gradient would also
    # need its convolution's output).
    assert RECOMPUTED_OUTPUT_STAGES == (0,)
    assert _convolutions_in_gradient("elementwise") - _convolutions_in_gradient("") == 5
