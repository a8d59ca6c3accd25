"""Softmax attention over short sequences as one Pallas TPU kernel per direction.

``fused_attention(q, k, v)`` computes what ``models.layers.attention`` computes without a bias or
dropout, ``softmax(q k^T * scale) v`` over ``[batch, heads, len, head_dim]``, but the
``len x len`` scores and probabilities never leave the chip's vector memory: the forward kernel
writes only the output and keeps nothing for the backward pass but ``q, k, v``; the backward
kernel recomputes the probabilities from them (one more ``q k^T`` matmul) and writes ``dq, dk, dv``.
It is meant for sequences whose whole score matrix fits on chip (the TimeSformer's 160-token
frames); it has no online softmax.

Every rounding of the XLA formulation is kept, so the two agree to float round-off: scores are
rounded to the inputs' dtype and then taken to float32, the softmax and its gradient are float32
(JAX's formula), and the probabilities and the probabilities' gradient are rounded to the inputs'
dtype before their matmuls, as the XLA formulation's einsums in the inputs' dtype do.

Lowered for TPU it is a Mosaic kernel; elsewhere Pallas interprets it (slow: for tests). XLA cannot
partition a Mosaic kernel: under a sharded ``jax.jit`` the caller declares the mesh
(``jax.sharding.use_abstract_mesh``) and the kernel runs per shard of its batch axes.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

# The most bytes one input block may take in vector memory (its rows padded to 128 lanes); each
# input and output is double-buffered, so the backward kernel's seven blocks take 14 of these.
_BLOCK_BYTES = 512 * 1024
_LANES = 128

_CONTRACT_LAST = (((1,), (1,)), ((), ()))  # a @ b^T
_CONTRACT_FIRST = (((0,), (0,)), ((), ()))  # a^T @ b
_MATMUL = (((1,), (0,)), ((), ()))  # a @ b


def _dot(a: jax.Array, b: jax.Array, dims, out_dtype) -> jax.Array:
    """``dot_general`` accumulated in float32, rounded to ``out_dtype`` (as an einsum in that dtype)."""
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32).astype(out_dtype)


def _probabilities(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """float32 ``softmax(q k^T * scale)`` of one head, with the XLA formulation's roundings."""
    logits = _dot(q, k, _CONTRACT_LAST, q.dtype).astype(jnp.float32) * scale
    unnormalized = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


def _for_each_head(block_ref: jax.Array, body) -> None:
    """Run ``body(b, h)`` for every (batch, head) pair of a ``[bb, hb, len, head_dim]`` block."""
    heads = block_ref.shape[1]

    def step(i, carry):
        body(jax.lax.div(i, heads), jax.lax.rem(i, heads))  # non-negative: no floor-division fix-up
        return carry

    jax.lax.fori_loop(0, block_ref.shape[0] * heads, step, None)


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, *, scale: float) -> None:
    def head(b, h):
        v = v_ref[b, h]
        probs = _probabilities(q_ref[b, h], k_ref[b, h], scale).astype(v.dtype)
        o_ref[b, h] = _dot(probs, v, _MATMUL, o_ref.dtype)

    _for_each_head(q_ref, head)


def _backward_kernel(q_ref, k_ref, v_ref, do_ref, dq_ref, dk_ref, dv_ref, *, scale: float) -> None:
    def head(b, h):
        q, k, v, do = q_ref[b, h], k_ref[b, h], v_ref[b, h], do_ref[b, h]
        probs = _probabilities(q, k, scale)
        dv_ref[b, h] = _dot(probs.astype(v.dtype), do, _CONTRACT_FIRST, dv_ref.dtype)
        dprobs = _dot(do, v, _CONTRACT_LAST, v.dtype).astype(jnp.float32)
        dlogits = probs * (dprobs - jnp.sum(probs * dprobs, axis=-1, keepdims=True))
        dscores = (dlogits * scale).astype(q.dtype)
        dq_ref[b, h] = _dot(dscores, k, _MATMUL, dq_ref.dtype)
        dk_ref[b, h] = _dot(dscores, q, _CONTRACT_FIRST, dk_ref.dtype)

    _for_each_head(q_ref, head)


def _heads_per_block(shape: tuple[int, ...], itemsize: int) -> int:
    """The most heads (a divisor of the head count) whose ``[len, head_dim]`` tiles fit one block."""
    _, heads, length, head_dim = shape
    tile = length * -(-head_dim // _LANES) * _LANES * itemsize
    return max([h for h in range(1, heads + 1) if heads % h == 0 and h * tile <= _BLOCK_BYTES] or [1])


def _call(kernel, inputs: tuple[jax.Array, ...], outputs: int, matmuls: int, interpret: bool):
    """``kernel`` over ``[batch, heads, len, head_dim]`` blocks of one batch row and some heads."""
    q = inputs[0]
    batch, heads, length, head_dim = q.shape
    per_block = _heads_per_block(q.shape, q.dtype.itemsize)
    spec = pl.BlockSpec((1, per_block, length, head_dim), lambda b, h: (b, h, 0, 0))
    pairs = batch * heads
    cost = pl.CostEstimate(flops=2 * matmuls * pairs * length * length * head_dim,
                           transcendentals=pairs * length * length,
                           bytes_accessed=(len(inputs) + outputs) * q.size * q.dtype.itemsize)
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)] * outputs
    return pl.pallas_call(
        functools.partial(kernel, scale=head_dim ** -0.5), out_shape=out_shape,
        grid=(batch, heads // per_block), in_specs=[spec] * len(inputs), out_specs=[spec] * outputs,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        cost_estimate=cost, interpret=interpret, name=kernel.__name__.strip("_"))(*inputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, interpret: bool) -> jax.Array:
    (out,) = _call(_forward_kernel, (q, k, v), 1, 2, interpret)
    return out


def _attention_forward(q, k, v, interpret):
    return _attention(q, k, v, interpret), (q, k, v)


def _attention_backward(interpret, residuals, d_out):
    q, k, v = residuals
    return tuple(_call(_backward_kernel, (q, k, v, d_out), 3, 5, interpret))


_attention.defvjp(_attention_forward, _attention_backward)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, platform: str,
                    batch_axes: tuple[str, ...] = ()) -> jax.Array:
    """Softmax attention of ``q, k, v [batch, heads, len, head_dim]`` (same dtype, float32 or
    bfloat16) in one kernel per direction, lowered for ``platform`` ("tpu": Mosaic; "" = the default
    backend; otherwise interpreted). Under an abstract mesh, each shard of its ``batch_axes`` runs its own."""
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (jnp.float32, jnp.bfloat16) or q.ndim != 4:
        raise ValueError(f"fused_attention: q, k, v must be 4-d float32 or bfloat16 arrays of one dtype, "
                         f"got {q.dtype}{q.shape}, {k.dtype}{k.shape}, {v.dtype}{v.shape}")
    interpret = (platform or jax.default_backend()) != "tpu"
    run = lambda q, k, v: _attention(q, k, v, interpret)  # noqa: E731
    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in batch_axes if not mesh.empty and a in mesh.axis_names and mesh.shape[a] > 1)
    shards = math.prod(mesh.shape[a] for a in axes)
    if shards == 1:
        return run(q, k, v)
    if q.shape[0] % shards:
        raise ValueError(f"fused_attention: a batch of {q.shape[0]} does not split over the mesh's {shards} "
                         f"shards of {axes}")
    spec = P(axes)
    return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
