"""Softmax attention over the frames of token-major grids as one Pallas TPU kernel per direction.

``temporal_attention(q, k, v, heads)`` takes ``[batch, frames, cells, heads * head_dim]`` (a grid's own
layout, cells flattened) and attends over ``frames`` for every cell and head: what
``models.timesformer.attention_over_axis`` computes over the time axis. The TimeSformer's 7-frame
attention is 7 x 7 per cell and head: as XLA's einsums, its scores, probabilities and their gradients
are written to HBM with the two 7-long axes minor, each padded to a (8, 128) tile (18x their size), and
q, k, v are copied to and from a layout with the 64-wide head dimension minor (padded to 128 lanes).
Here everything but q, k, v, the output and their gradients stays on chip, and the backward kernel
recomputes the probabilities.

The arithmetic runs on the vector unit, a 7 x 7 product per cell being far too small for the matrix
unit: a score is a float32 sum of the float32 products of one head's 64 lanes (what a matmul
accumulating in float32 adds, in another order), rounded to the inputs' dtype as the einsum rounds
it; the softmax and its gradient are float32 (JAX's formula); the probabilities and their gradient are
rounded to the inputs' dtype before they multiply, and every output is a float32 sum rounded once. So
outputs and gradients agree with the XLA formulation to float round-off.

Lowered for TPU it is a Mosaic kernel (blocks of ``BLOCK_CELLS`` cells of one batch row, all frames);
elsewhere Pallas interprets it (slow: for tests). Under a sharded ``jax.jit`` the caller declares the
mesh and each shard of the batch runs its own (``fused_attention.per_shard``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from hdvila_jax.kernels.fused_attention import (attention_from_kernels, check_inputs, head_columns, interpreted,
                                                per_shard)

BLOCK_CELLS = 32  # cells per block where they divide the row (a multiple of bfloat16's 16-row tile), else all
LAYOUT = "[batch, frames, cells, heads * head_dim]"


def _probabilities(q_t: jax.Array, k: jax.Array, scale: float, dtype: jnp.dtype) -> jax.Array:
    """float32 softmax over frames of one head's scores for query frame ``q_t [cells, d]`` against
    ``k [frames, cells, d]`` (both float32) -> ``[frames, cells, 1]``, with the einsums' roundings (``dtype``)."""
    scores = jnp.sum(q_t[None] * k, axis=-1, keepdims=True)
    logits = scores.astype(dtype).astype(jnp.float32) * scale
    unnormalized = jnp.exp(logits - jnp.max(logits, axis=0, keepdims=True))
    return unnormalized / jnp.sum(unnormalized, axis=0, keepdims=True)


def _rounded(x: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """``x`` rounded to ``dtype`` and back to float32 (what an einsum in ``dtype`` hands on)."""
    return x.astype(dtype).astype(jnp.float32)


def _head(ref, cols: slice) -> jax.Array:
    """One head's ``[frames, cells, head_dim]`` block of ``ref``, float32."""
    return ref[0, :, :, cols].astype(jnp.float32)


def _write(ref, parts: list[list[jax.Array]]) -> None:
    """``parts[frame]``: the heads' ``[cells, head_dim]`` pieces of that frame, side by side."""
    for t, heads in enumerate(parts):
        ref[0, t] = jnp.concatenate([p.astype(ref.dtype) for p in heads], axis=-1)


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, *, heads: int, scale: float) -> None:
    frames, dtype = q_ref.shape[1], q_ref.dtype
    out = [[] for _ in range(frames)]
    for cols in head_columns(heads, q_ref.shape[-1]):
        q, k, v = _head(q_ref, cols), _head(k_ref, cols), _head(v_ref, cols)
        for t in range(frames):
            probs = _rounded(_probabilities(q[t], k, scale, dtype), v_ref.dtype)
            out[t].append(jnp.sum(probs * v, axis=0))
    _write(o_ref, out)


def _backward_kernel(q_ref, k_ref, v_ref, do_ref, dq_ref, dk_ref, dv_ref, *, heads: int, scale: float) -> None:
    frames, dtype = q_ref.shape[1], q_ref.dtype
    dq, dk, dv = ([[] for _ in range(frames)] for _ in range(3))
    for cols in head_columns(heads, q_ref.shape[-1]):
        q, k, v, do = (_head(ref, cols) for ref in (q_ref, k_ref, v_ref, do_ref))
        dk_head, dv_head = jnp.zeros_like(k), jnp.zeros_like(v)
        for t in range(frames):  # query frame t: its row of the probabilities, [frames, cells, 1]
            probs = _probabilities(q[t], k, scale, dtype)
            dv_head = dv_head + _rounded(probs, v_ref.dtype) * do[t][None]
            dprobs = _rounded(jnp.sum(do[t][None] * v, axis=-1, keepdims=True), v_ref.dtype)
            dlogits = probs * (dprobs - jnp.sum(probs * dprobs, axis=0, keepdims=True))
            dscores = _rounded(dlogits * scale, dtype)
            dq[t].append(jnp.sum(dscores * k, axis=0))
            dk_head = dk_head + dscores * q[t][None]
        for s in range(frames):
            dk[s].append(dk_head[s])
            dv[s].append(dv_head[s])
    for ref, parts in ((dq_ref, dq), (dk_ref, dk), (dv_ref, dv)):
        _write(ref, parts)


def _call(kernel, inputs: tuple[jax.Array, ...], outputs: int, products: int, heads: int, interpret: bool):
    """``kernel`` over blocks ``[1, frames, BLOCK_CELLS, heads * head_dim]``; ``products``: the multiply-adds
    per frame pair and lane (for XLA's cost estimate)."""
    q = inputs[0]
    batch, frames, cells, width = q.shape
    block = BLOCK_CELLS if cells % BLOCK_CELLS == 0 else cells
    spec = pl.BlockSpec((1, frames, block, width), lambda b, c: (b, 0, c, 0))
    cost = pl.CostEstimate(flops=2 * products * batch * frames * frames * cells * width,
                           transcendentals=batch * heads * frames * frames * cells,
                           bytes_accessed=(len(inputs) + outputs) * q.size * q.dtype.itemsize)
    return pl.pallas_call(
        functools.partial(kernel, heads=heads, scale=(width // heads) ** -0.5),
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype)] * outputs, grid=(batch, cells // block),
        in_specs=[spec] * len(inputs), out_specs=[spec] * outputs,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        cost_estimate=cost, interpret=interpret, name="temporal" + kernel.__name__)(*inputs)


_attention = attention_from_kernels(_call, _forward_kernel, _backward_kernel)


def temporal_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *, platform: str,
                       batch_axes: tuple[str, ...] = ()) -> jax.Array:
    """Softmax attention of ``heads`` heads over the frames of ``q, k, v [batch, frames, cells, heads *
    head_dim]`` (one shape and dtype, float32 or bfloat16), for each cell, in one kernel per direction;
    the output has their shape. Lowered for ``platform`` ("tpu": Mosaic; "" = the default backend;
    otherwise interpreted). Under an abstract mesh, each shard of its ``batch_axes`` runs its own."""
    check_inputs("temporal_attention", q, k, v, heads, LAYOUT)
    interpret = interpreted(platform)
    return per_shard("temporal_attention", lambda q, k, v: _attention(q, k, v, heads, interpret), q, k, v,
                     batch_axes)
