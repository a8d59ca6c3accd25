"""Softmax attention over short sequences as one Pallas TPU kernel per direction.

``fused_attention(q, k, v, heads)`` computes what ``models.layers.attention`` computes without a bias
or dropout, ``softmax(q k^T * scale) v`` per head, but the ``len x len`` scores and probabilities never
leave the chip's vector memory: the forward kernel writes only the output and keeps nothing for the
backward pass but ``q, k, v``; the backward kernel recomputes the probabilities from them (one more
``q k^T`` matmul per head) and writes ``dq, dk, dv``. It is meant for sequences whose whole score
matrix fits on chip (the TimeSformer's 160-token frames); it has no online softmax.

The arrays are token-major, ``[batch, len, heads * head_dim]`` (heads side by side in the last
dimension, as a projection writes them): no head dimension is padded to the chip's 128 lanes and no
transposed copy is made around the kernels (docs/performance.md: the attention sublayer moved 37%
fewer bytes than with ``[batch, heads, len, head_dim]`` kernels).

Every rounding of the XLA formulation is kept, so the two agree to float round-off: scores are
rounded to the inputs' dtype and then taken to float32, the softmax and its gradient are float32
(JAX's formula), and the probabilities and the probabilities' gradient are rounded to the inputs'
dtype before their matmuls, as the XLA formulation's einsums in the inputs' dtype do.

Lowered for TPU it is a Mosaic kernel; elsewhere Pallas interprets it (slow: for tests). XLA cannot
partition a Mosaic kernel: under a sharded ``jax.jit`` the caller declares the mesh
(``jax.sharding.use_abstract_mesh``) and the kernel runs per shard of its batch axes.

The custom VJP, the input check and the per-shard wrapper serve the temporal kernel too
(``kernels.temporal_attention``).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import PartitionSpec as P

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


def head_columns(heads: int, width: int) -> list[slice]:
    """The last-dimension slice of each head in a ``[..., heads * head_dim]`` row."""
    size = width // heads
    return [slice(h * size, (h + 1) * size) for h in range(heads)]


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, *, heads: int, scale: float) -> None:
    outs = []
    for cols in head_columns(heads, q_ref.shape[-1]):
        v = v_ref[0, :, cols]
        probs = _probabilities(q_ref[0, :, cols], k_ref[0, :, cols], scale).astype(v.dtype)
        outs.append(_dot(probs, v, _MATMUL, o_ref.dtype))
    o_ref[0] = jnp.concatenate(outs, axis=-1)


def _backward_kernel(q_ref, k_ref, v_ref, do_ref, dq_ref, dk_ref, dv_ref, *, heads: int, scale: float) -> None:
    dq, dk, dv = [], [], []
    for cols in head_columns(heads, q_ref.shape[-1]):
        q, k, v, do = q_ref[0, :, cols], k_ref[0, :, cols], v_ref[0, :, cols], do_ref[0, :, cols]
        probs = _probabilities(q, k, scale)
        dv.append(_dot(probs.astype(v.dtype), do, _CONTRACT_FIRST, dv_ref.dtype))
        dprobs = _dot(do, v, _CONTRACT_LAST, v.dtype).astype(jnp.float32)
        dlogits = probs * (dprobs - jnp.sum(probs * dprobs, axis=-1, keepdims=True))
        dscores = (dlogits * scale).astype(q.dtype)
        dq.append(_dot(dscores, k, _MATMUL, dq_ref.dtype))
        dk.append(_dot(dscores, q, _CONTRACT_FIRST, dk_ref.dtype))
    for ref, parts in ((dq_ref, dq), (dk_ref, dk), (dv_ref, dv)):
        ref[0] = jnp.concatenate(parts, axis=-1)


def _call(kernel, inputs: tuple[jax.Array, ...], outputs: int, matmuls: int, heads: int, interpret: bool):
    """``kernel`` over blocks of one batch row ``[1, len, heads * head_dim]``."""
    q = inputs[0]
    batch, length, width = q.shape
    spec = pl.BlockSpec((1, length, width), lambda b: (b, 0, 0))
    cost = pl.CostEstimate(flops=2 * matmuls * batch * length * length * width,
                           transcendentals=batch * heads * length * length,
                           bytes_accessed=(len(inputs) + outputs) * q.size * q.dtype.itemsize)
    return pl.pallas_call(
        functools.partial(kernel, heads=heads, scale=(width // heads) ** -0.5),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)] * outputs, grid=(batch,),
        in_specs=[spec] * len(inputs), out_specs=[spec] * outputs,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
        cost_estimate=cost, interpret=interpret, name=kernel.__name__.strip("_"))(*inputs)


def attention_from_kernels(call, forward_kernel, backward_kernel):
    """``f(q, k, v, heads, interpret)``, attention with a custom VJP that keeps only ``q, k, v``:
    ``call(kernel, inputs, outputs, products, heads, interpret)`` runs ``forward_kernel`` (q, k, v -> the
    output; 2 multiply-adds per score and lane) and ``backward_kernel`` (q, k, v, the output's gradient ->
    dq, dk, dv; 5 multiply-adds, the scores recomputed)."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
    def attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, interpret: bool) -> jax.Array:
        return call(forward_kernel, (q, k, v), 1, 2, heads, interpret)[0]

    def forward(q, k, v, heads, interpret):
        return attention(q, k, v, heads, interpret), (q, k, v)

    def backward(heads, interpret, residuals, d_out):
        return tuple(call(backward_kernel, (*residuals, d_out), 3, 5, heads, interpret))

    attention.defvjp(forward, backward)
    return attention


_attention = attention_from_kernels(_call, _forward_kernel, _backward_kernel)


def check_inputs(name: str, q: jax.Array, k: jax.Array, v: jax.Array, heads: int, layout: str) -> None:
    """ValueError unless ``q, k, v`` are float32 or bfloat16 arrays of one shape and dtype, laid out as
    ``layout`` (its rank: one more than its commas), whose last dimension splits into ``heads`` heads."""
    if not (q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype) or q.ndim != layout.count(",") + 1 \
            or q.dtype not in (jnp.float32, jnp.bfloat16) or q.shape[-1] % heads:
        raise ValueError(f"{name}: q, k, v must be {layout} float32 or bfloat16 arrays of one shape and dtype "
                         f"with {heads} heads, got {q.dtype}{q.shape}, {k.dtype}{k.shape}, {v.dtype}{v.shape}")


def per_shard(name: str, run, q: jax.Array, k: jax.Array, v: jax.Array, batch_axes: tuple[str, ...]) -> jax.Array:
    """``run(q, k, v)`` (a kernel XLA cannot partition) on each shard of the first dimension over those of
    ``batch_axes`` the abstract mesh has (``jax.sharding.use_abstract_mesh``); directly without one."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = tuple(a for a in batch_axes if not mesh.empty and a in mesh.axis_names and mesh.shape[a] > 1)
    shards = math.prod(mesh.shape[a] for a in axes)
    if shards == 1:
        return run(q, k, v)
    if q.shape[0] % shards:
        raise ValueError(f"{name}: a batch of {q.shape[0]} does not split over the mesh's {shards} shards of {axes}")
    spec = P(axes)
    return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)


def interpreted(platform: str) -> bool:
    """Whether a kernel lowered for ``platform`` ("" = the default backend) is interpreted (not a TPU)."""
    return (platform or jax.default_backend()) != "tpu"


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *, platform: str,
                    batch_axes: tuple[str, ...] = ()) -> jax.Array:
    """Softmax attention of ``heads`` heads over ``q, k, v [batch, len, heads * head_dim]`` (one
    shape and dtype, float32 or bfloat16) in one kernel per direction; the output has their shape.
    Lowered for ``platform`` ("tpu": Mosaic; "" = the default backend; otherwise interpreted). Under
    an abstract mesh, each shard of its ``batch_axes`` runs its own."""
    check_inputs("fused_attention", q, k, v, heads, "[batch, len, heads * head_dim]")
    interpret = interpreted(platform)
    return per_shard("fused_attention", lambda q, k, v: _attention(q, k, v, heads, interpret), q, k, v, batch_axes)
