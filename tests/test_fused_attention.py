"""The fused spatial attention (``hdvila_jax.kernels.fused_attention``, issue 32): the kernel gives XLA's
formulation's outputs and gradients, the model uses it (and the temporal kernel,
tests/test_temporal_attention.py) only where it is traced for a mesh, and the sharded train step with
them gives the step without them. On this CPU Pallas interprets the kernels; the TPU lowering is
compiled in tests/test_aot.py."""
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hdvila_jax.kernels import fused_attention as fa
from hdvila_jax.models import HDVILA
from hdvila_jax.models.layers import attention
from tests import train_helpers
from tests.kernel_helpers import assert_kernel_matches, random_qkv
from tests.model_helpers import init_small, random_batch, relative_error, small_config


def _xla_attention(q, k, v, heads):
    """XLA's formulation (``models.layers.attention``) on token-major ``[B, L, heads * head_dim]``."""
    split = lambda x: x.reshape(*x.shape[:2], heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
    out = attention(split(q), split(k), split(v), None, None, True)
    return out.transpose(0, 2, 1, 3).reshape(q.shape)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-3)])
@pytest.mark.parametrize("shape, heads", [((3, 24, 64), 4), ((2, 10, 16), 2), ((2, 12, 8), 1)])
def test_kernel_gives_xla_attentions_outputs_and_gradients(dtype, tolerance, shape, heads):
    assert_kernel_matches(lambda q, k, v: fa.fused_attention(q, k, v, heads, platform="cpu"),
                          lambda q, k, v: _xla_attention(q, k, v, heads), shape, dtype, tolerance)


def test_kernel_keeps_only_its_inputs_for_the_backward_pass():
    from jax._src.ad_checkpoint import saved_residuals
    q, k, v, _ = random_qkv((2, 24, 32), jnp.float32)
    shapes = {tuple(aval.shape) for aval, _ in saved_residuals(
        lambda q, k, v: fa.fused_attention(q, k, v, 2, platform="cpu").sum(), q, k, v)}
    assert shapes == {(2, 24, 32)}  # no 24 x 24 probabilities
    xla = {tuple(aval.shape) for aval, _ in saved_residuals(lambda q, k, v: _xla_attention(q, k, v, 2).sum(), q, k, v)}
    assert (2, 2, 24, 24) in xla


def test_bad_inputs_are_named():
    q, k, v, _ = random_qkv((2, 8, 8), jnp.float32)
    with pytest.raises(ValueError, match="fused_attention: q, k, v must be .batch, len, heads . head_dim. float32"):
        fa.fused_attention(q, k.astype(jnp.bfloat16), v, 2, platform="cpu")
    with pytest.raises(ValueError, match="with 3 heads"):
        fa.fused_attention(q, k, v, 3, platform="cpu")
    with pytest.raises(ValueError, match="fused_attention"):
        fa.fused_attention(q[0], k[0], v[0], 2, platform="cpu")


def test_a_batch_that_does_not_split_over_the_mesh_is_named():
    q, k, v, _ = random_qkv((3, 8, 8), jnp.float32)
    mesh = jax.sharding.AbstractMesh((2, 1), ("data", "fsdp"))
    with jax.sharding.use_abstract_mesh(mesh), pytest.raises(ValueError, match="batch of 3 does not split over"):
        fa.fused_attention(q, k, v, 2, platform="cpu", batch_axes=("data", "fsdp"))


def _model_loss_and_grads(cfg, variables, batch, mesh):
    model = HDVILA(cfg)

    def loss(params):
        out = model.apply({**variables, "params": params}, batch, stage=1)
        return jnp.sum(out["text_features"] @ out["video_features"].T)

    def run(params):
        if mesh is None:
            return jax.value_and_grad(loss)(params)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return jax.value_and_grad(loss)(params)

    return jax.jit(run)(variables["params"]), str(jax.make_jaxpr(run)(variables["params"]))


def test_model_with_fused_attention_gives_todays_loss_and_gradients():
    cfg = small_config(fused_attention=True)
    variables = init_small(cfg, stage=1)
    batch = random_batch(cfg, batch=2, clips=2)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))  # as the trainer's
    (value, grads), jaxpr = _model_loss_and_grads(cfg, variables, batch, mesh)
    # Each block's spatial and temporal attention: a forward and a backward kernel each.
    assert jaxpr.count("pallas_call") == 4 * cfg.timesformer_depth
    (old_value, old_grads), old_jaxpr = _model_loss_and_grads(small_config(), variables, batch, mesh)
    assert "pallas_call" not in old_jaxpr
    assert relative_error(value, old_value) < 1e-5
    flat, old_flat = (np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g)]) for g in (grads, old_grads))
    assert relative_error(flat, old_flat) < 1e-5
    # Traced without a mesh (evaluation, search), the model attends with XLA's formulation.
    assert "pallas_call" not in _model_loss_and_grads(cfg, variables, batch, None)[1]


_SHARDED_STEP = """
import jax, numpy as np
from hdvila_jax.train.step_builder import build_step
from tests.train_helpers import tiny_config
results = []
for fused in (False, True):
    config = tiny_config(1, "unused", **{"model.fused_attention": fused, "mesh.data": 2, "mesh.fsdp": 4,
                                         "batch_size": 8, "eval_batch_size": 8})
    built = build_step(config)
    text = built.lower().as_text()
    state, metrics = built.step(built.init_state(), built.random_batch(seed=1))
    results.append((text.count("sdy.manual_computation"), float(metrics["loss"]),
                    np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(jax.device_get(state["params"]))])))
(xla_marks, loss, params), (marks, fused_loss, fused_params) = results
assert xla_marks == 0, xla_marks
assert marks == 4 * config.model.timesformer_depth, marks  # each block's two attentions' kernels run per shard
print("loss", loss, fused_loss, "params", float(np.linalg.norm(fused_params - params) / np.linalg.norm(params)))
"""


@pytest.mark.slow
def test_sharded_train_step_with_fused_attention_gives_the_same_step():
    # 8 CPU devices, mesh data 2 x fsdp 4: the kernel runs per shard (shard_map) inside the trainer's own step.
    env = train_helpers.subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.run([sys.executable, "-c", _SHARDED_STEP], env=env, cwd=train_helpers.REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split()
    loss, fused_loss, params_error = float(words[1]), float(words[2]), float(words[4])
    assert loss != 0 and abs(fused_loss - loss) <= 1e-5 * abs(loss)
    assert params_error < 1e-6  # the updated parameters


@pytest.mark.parametrize("axis", [0, 1, 3])
def test_attention_over_an_axis_in_its_own_layout_is_todays_attention(axis):
    # The TimeSformer's XLA formulation attends over one leading axis of q, k, v [..., heads, head_dim]
    # in their own layout; models.layers.attention is the same over [batch..., heads, tokens, head_dim].
    from hdvila_jax.models.timesformer import attention_over_axis
    q, k, v, _ = random_qkv((3, 5, 2, 4, 2, 8), jnp.float32)
    ours = attention_over_axis(q, k, v, axis)
    heads_major = lambda x: jnp.moveaxis(jnp.moveaxis(x, -2, 0), axis + 1, -2)  # noqa: E731
    theirs = attention(heads_major(q), heads_major(k), heads_major(v), None, None, True)
    theirs = jnp.moveaxis(jnp.moveaxis(theirs, -2, axis + 1), 0, -2)
    assert ours.shape == q.shape
    assert relative_error(ours, theirs) < 1e-6
