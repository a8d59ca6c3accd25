"""The gradient machinery the tasks' losses share: the model applied to trainable + frozen
parameters, micro-batches that stay on their devices, and gradient accumulation.

``accum_steps`` micro-batches give the same update as one step on the whole batch: a contrastive
loss computes all features first, takes the gradient of the global-batch loss with respect to
them, then back-propagates micro-batch by micro-batch (GradCache, :func:`contrastive_grads`);
other losses weight each micro-batch's loss (:func:`accumulate_grads`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hdvila_jax.models import HDVILA
from hdvila_jax.sharding import BATCH_AXES

Batch = dict[str, jax.Array]


def split_micro_batches(batch: Batch, k: int, mesh: Mesh) -> Batch:
    """``[B, ...] -> [k, B/k, ...]`` where micro-batch ``i`` holds examples ``i, i+k, ...``: every
    device keeps its own rows, so no data moves."""
    def split(x):
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, BATCH_AXES)))
    return {key: split(v) for key, v in batch.items()}


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a task's loss needs inside the train step: the model, the mesh, the number of
    micro-batches, the frozen parameters (flat ``path -> array``) and the batch statistics."""

    model: HDVILA
    mesh: Mesh
    accum_steps: int
    frozen: dict
    batch_stats: Any

    def apply(self, trainable: dict, rng: jax.Array, *args, **kwargs) -> Any:
        """``model.apply`` on the parameters ``trainable`` + frozen, with dropout from ``rng``."""
        params = traverse_util.unflatten_dict({**trainable, **self.frozen}, sep="/")
        return self.model.apply({"params": params, "batch_stats": self.batch_stats}, *args, deterministic=False,
                                rngs={"dropout": rng}, **kwargs)

    def micro_batches(self, batch: Batch) -> Batch:
        """The batch as ``[accum_steps, B / accum_steps, ...]`` leaves (see :func:`split_micro_batches`)."""
        if self.accum_steps > 1:
            return split_micro_batches(batch, self.accum_steps, self.mesh)
        return jax.tree.map(lambda x: x[None], batch)


def accumulate_grads(trainable: dict, micro: Batch, weights: jax.Array, rng: jax.Array,
                     loss_fn: Callable) -> tuple[jax.Array, jax.Array, dict]:
    """``(sum_i w_i loss_i, sum_i w_i metric_i, its gradient)`` over the micro-batches ``micro``
    (``[k, ...]`` leaves), one micro-batch at a time; ``loss_fn(trainable, batch, rng) -> (loss, metric)``.
    One micro-batch runs without a loop (XLA:CPU runs a model's backward pass inside a while loop
    several times slower)."""
    def weighted_grads(b, r, w):
        def weighted(tr):
            loss, metric = loss_fn(tr, b, r)
            return loss * w, metric * w
        return jax.value_and_grad(weighted, has_aux=True)(trainable)

    if len(weights) == 1:
        (loss, metric), grads = weighted_grads(jax.tree.map(lambda x: x[0], micro), jax.random.split(rng, 1)[0],
                                               weights[0])
        return loss, metric, grads

    def accumulate(acc, xs):
        (loss, metric), grads = weighted_grads(*xs)
        g_acc, l_acc, m_acc = acc
        return (jax.tree.map(jnp.add, g_acc, grads), l_acc + loss, m_acc + metric), None

    xs = (micro, jax.random.split(rng, len(weights)), weights)
    # Zero sums of the dtypes one micro-batch gives (the loss is float64 where the model is).
    (loss_shape, metric_shape), grad_shapes = jax.eval_shape(weighted_grads, *jax.tree.map(lambda x: x[0], xs))
    init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grad_shapes, loss_shape, metric_shape))
    (grads, loss, metric), _ = jax.lax.scan(accumulate, init, xs)
    return loss, metric, grads


def contrastive_grads(ctx: StepContext, trainable: dict, batch: Batch, rng: jax.Array, features: Callable,
                      loss_of_features: Callable) -> tuple[jax.Array, dict, dict]:
    """Loss, metrics and gradient of ``loss_of_features(text [..., D], video [..., D]) -> (loss,
    metrics)`` over the global batch, where ``features(trainable, batch, rng) -> (text, video)``.
    With several micro-batches: every micro-batch's features first, the loss's gradient with
    respect to all of them, then one backward pass per micro-batch (GradCache)."""
    if ctx.accum_steps == 1:
        def loss_fn(tr):
            return loss_of_features(*features(tr, batch, rng))
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
        return loss, metrics, grads
    micro = ctx.micro_batches(batch)
    rngs = jax.random.split(rng, ctx.accum_steps)
    text, video = jax.lax.map(lambda xs: features(trainable, *xs), (micro, rngs))
    (loss, metrics), (d_text, d_video) = jax.value_and_grad(loss_of_features, argnums=(0, 1),
                                                            has_aux=True)(text, video)

    def backward(acc, xs):
        b, r, dt, dv = xs
        _, vjp = jax.vjp(lambda tr: features(tr, b, r), trainable)
        return jax.tree.map(jnp.add, acc, vjp((dt, dv))[0]), None

    zeros = jax.tree.map(jnp.zeros_like, trainable)
    grads, _ = jax.lax.scan(backward, zeros, (micro, rngs, d_text, d_video))
    return loss, metrics, grads
