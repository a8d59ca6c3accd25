"""The fused temporal attention (``hdvila_jax.kernels.temporal_attention``, issue 32): over the frames of
token-major grids ``[batch, frames, cells, heads * head_dim]``, the kernel gives the XLA formulation's
(``attention_over_axis``) outputs and gradients and keeps only q, k, v for the backward pass. On this CPU
Pallas interprets it; tests/test_aot.py compiles its TPU lowering inside the step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.ad_checkpoint import saved_residuals

from hdvila_jax.kernels import temporal_attention as ta
from hdvila_jax.models.timesformer import attention_over_axis
from tests.kernel_helpers import assert_kernel_matches, random_qkv


def _xla_attention(q, k, v, heads):
    """The TimeSformer's XLA formulation over axis 1 of ``[B, T, cells, heads * head_dim]``."""
    split = lambda x: x.reshape(*x.shape[:3], heads, -1)  # noqa: E731
    return attention_over_axis(split(q), split(k), split(v), 1).reshape(q.shape)


@pytest.mark.parametrize("dtype, tolerance", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-3)])
@pytest.mark.parametrize("shape, heads", [((2, 7, 6, 32), 2), ((1, 3, 64, 16), 4), ((2, 2, 5, 8), 1)])
def test_kernel_gives_xla_attentions_outputs_and_gradients(dtype, tolerance, shape, heads):
    # (1, 3, 64, 16): 64 cells run as two blocks of ta.BLOCK_CELLS; the others as one block of all cells.
    assert_kernel_matches(lambda q, k, v: ta.temporal_attention(q, k, v, heads, platform="cpu"),
                          lambda q, k, v: _xla_attention(q, k, v, heads), shape, dtype, tolerance)


def test_attention_is_over_frames_for_each_cell_and_head():
    # Changing one cell's keys in one head changes only that cell's and that head's outputs.
    q, k, v, _ = random_qkv((1, 4, 6, 16), jnp.float32)
    out = ta.temporal_attention(q, k, v, 2, platform="cpu")
    changed = ta.temporal_attention(q, k.at[0, :, 2, 8:].multiply(3.0), v, 2, platform="cpu")
    moved = np.abs(np.asarray(changed - out)) > 1e-6
    assert moved[0, :, 2, 8:].all() and moved.sum() == 4 * 8


def test_kernel_keeps_only_its_inputs_for_the_backward_pass():
    q, k, v, _ = random_qkv((2, 7, 8, 32), jnp.float32)
    shapes = {tuple(aval.shape) for aval, _ in saved_residuals(
        lambda q, k, v: ta.temporal_attention(q, k, v, 2, platform="cpu").sum(), q, k, v)}
    assert shapes == {(2, 7, 8, 32)}  # no 7 x 7 probabilities
    xla = {tuple(aval.shape) for aval, _ in saved_residuals(lambda q, k, v: _xla_attention(q, k, v, 2).sum(), q, k, v)}
    assert any(shape[-2:] == (7, 7) for shape in xla)


def test_bad_inputs_are_named():
    q, k, v, _ = random_qkv((2, 3, 4, 8), jnp.float32)
    with pytest.raises(ValueError, match=r"temporal_attention: q, k, v must be \[batch, frames, cells, heads"):
        ta.temporal_attention(q, k, v[..., :4], 2, platform="cpu")
    with pytest.raises(ValueError, match="with 3 heads"):
        ta.temporal_attention(q, k, v, 3, platform="cpu")
    with pytest.raises(ValueError, match="temporal_attention"):
        ta.temporal_attention(q[0], k[0], v[0], 2, platform="cpu")
    mesh = jax.sharding.AbstractMesh((4, 1), ("data", "fsdp"))
    with jax.sharding.use_abstract_mesh(mesh), pytest.raises(ValueError, match="batch of 2 does not split over"):
        ta.temporal_attention(q, k, v, 2, platform="cpu", batch_axes=("data", "fsdp"))
