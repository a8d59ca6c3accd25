"""One optimisation step of a contrastive task (stage-1 pretraining, retrieval fine-tuning), of
stage-2 MLM or of video QA, as a pure function for ``jax.jit``. The task (``hdvila_jax.tasks``) picks the model
stage and the objective; the InfoNCE is computed on the global batch (the negatives are every
example on every device).

The train state is a dict ``{'step', 'rng', 'params', 'batch_stats', 'opt_state'}``.
Only trainable parameters are differentiated; frozen ones pass through bit-identical.
``grad_accum_steps`` micro-batches give the same update as one step on the whole batch:
stage 1 computes all features first, takes the gradient of the global-batch InfoNCE
with respect to them, then back-propagates micro-batch by micro-batch (GradCache); stage 2
weights each micro-batch's mean MLM loss by its share of the batch's masked tokens; QA averages
the micro-batches' mean losses (the original sums them, SPEC_DOWNSTREAM quirk 22).
A step whose loss or gradient is not finite leaves the state unchanged and reports
``finite = False``; the trainer stops on it.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from hdvila_jax.models import HDVILA
from hdvila_jax.models import platform as lowering
from hdvila_jax.tasks import get_task
from hdvila_jax.tasks.qa import qa_inputs, qa_loss
from hdvila_jax.train.optimizer import FROZEN, Optimizer, global_norm
from hdvila_jax import sharding
from hdvila_jax.sharding import BATCH_AXES

State = dict[str, Any]
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
MODEL_KEYS = ("img_middle", "img_other", "text_input_ids", "text_input_mask", "mlm_labels")


def split_micro_batches(batch: Batch, k: int, mesh: Mesh) -> Batch:
    """``[B, ...] -> [k, B/k, ...]`` where micro-batch ``i`` holds examples ``i, i+k, ...``: every
    device keeps its own rows, so no data moves."""
    def split(x):
        x = x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, BATCH_AXES)))
    return {key: split(v) for key, v in batch.items()}


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


def make_train_step(config: ml_collections.ConfigDict, model: HDVILA, optimizer: Optimizer,
                    mesh: Mesh) -> Callable[[State, Batch], tuple[State, Metrics]]:
    """The step function ``(state, global batch) -> (new state, metrics)`` of ``config``'s task."""
    task = get_task(config)
    stage, k = task.stage, config.grad_accum_steps
    trainable_paths = [p for p, label in optimizer.labels.items() if label != FROZEN]

    def forward(trainable, frozen, batch_stats, batch, rng):
        params = traverse_util.unflatten_dict({**trainable, **frozen}, sep="/")
        inputs = {key: batch[key] for key in MODEL_KEYS if key in batch}
        return model.apply({"params": params, "batch_stats": batch_stats}, inputs, stage=stage,
                           deterministic=False, rngs={"dropout": rng})

    def stage1_grads(trainable, frozen, batch_stats, batch, rng):
        def features(tr, b, r):
            out = forward(tr, frozen, batch_stats, b, r)
            return out["text_features"], out["video_features"]

        def loss_of_features(text, video):
            return task.contrastive_loss(text.reshape(-1, text.shape[-1]), video.reshape(-1, video.shape[-1]))

        if k == 1:
            def loss_fn(tr):
                return loss_of_features(*features(tr, batch, rng))
            (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
            return loss, metrics, grads
        micro = split_micro_batches(batch, k, mesh)
        rngs = jax.random.split(rng, k)
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

    def micro_batches(batch):
        return split_micro_batches(batch, k, mesh) if k > 1 else jax.tree.map(lambda x: x[None], batch)

    def stage2_grads(trainable, frozen, batch_stats, batch, rng):
        micro = micro_batches(batch)
        counts = (micro["mlm_labels"] != -100).sum(axis=tuple(range(1, micro["mlm_labels"].ndim)))
        weights = counts.astype(jnp.float32) / jnp.maximum(counts.sum(), 1).astype(jnp.float32)

        def loss_fn(tr, b, r):
            out = forward(tr, frozen, batch_stats, b, r)
            return out["mlm_loss"], out["mlm_acc"]

        loss, mlm_acc, grads = accumulate_grads(trainable, micro, weights, rng, loss_fn)
        return loss, {"mlm_acc": mlm_acc, "mlm_tokens": counts.sum()}, grads

    def qa_grads(trainable, frozen, batch_stats, batch, rng):
        def loss_fn(tr, b, r):
            inputs, labels = qa_inputs(b, task.qa_type)
            params = traverse_util.unflatten_dict({**tr, **frozen}, sep="/")
            logits = model.apply({"params": params, "batch_stats": batch_stats}, inputs, deterministic=False,
                                 rngs={"dropout": r}, method=HDVILA.qa_logits)
            loss, aux = qa_loss(logits, labels, task.aggregation)
            return loss, aux["correct"].mean()

        # The mean over micro-batches (equal sizes): the gradient of the whole batch's mean loss.
        loss, correct, grads = accumulate_grads(trainable, micro_batches(batch), jnp.full((k,), 1.0 / k), rng,
                                                loss_fn)
        return loss, {"qa_accuracy": 100.0 * correct}, grads

    def train_step(state: State, batch: Batch) -> tuple[State, Metrics]:
        flat = traverse_util.flatten_dict(state["params"], sep="/")
        trainable = {p: flat[p] for p in trainable_paths}
        frozen = {p: v for p, v in flat.items() if p not in trainable}
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"], impl=config.rng_impl), state["step"])
        grads_fn = dict(contrastive=stage1_grads, mlm=stage2_grads, qa=qa_grads)[task.objective]
        loss, metrics, grads = grads_fn(trainable, frozen, state["batch_stats"], batch, rng)

        full_grads = traverse_util.unflatten_dict(
            {p: grads[p] if p in grads else jnp.zeros_like(v) for p, v in flat.items()}, sep="/")
        updates, opt_state = optimizer.tx.update(full_grads, state["opt_state"], state["params"])
        flat_updates = traverse_util.flatten_dict(updates, sep="/")
        new_flat = {p: (v + flat_updates[p]).astype(v.dtype) if p in trainable else v for p, v in flat.items()}
        grad_norm = global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = dict(step=state["step"] + 1, rng=state["rng"], batch_stats=state["batch_stats"],
                         params=traverse_util.unflatten_dict(new_flat, sep="/"), opt_state=opt_state)
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)

        metrics = dict(metrics, loss=loss, finite=finite, grad_norm=grad_norm,
                       param_norm=global_norm([new_flat[p] for p in trainable_paths]),
                       update_norm=global_norm([flat_updates[p] for p in trainable_paths]))
        for name, schedule in optimizer.schedules.items():
            metrics[f"lr_{name}"] = schedule(state["step"])
        return new_state, metrics

    return train_step


def jit_train_step(config: ml_collections.ConfigDict, model: HDVILA, optimizer: Optimizer, mesh: Mesh,
                   specs: State) -> Callable[[State, Batch], tuple[State, Metrics]]:
    """:func:`make_train_step` jitted with the train state's shardings (``specs``) in and out,
    the batch sharded over the batch axes, replicated metrics, and the state donated; traced
    for the platform of the mesh's devices."""
    state_shardings = sharding.named(mesh, specs)
    platform = mesh.devices.flat[0].platform
    return jax.jit(lowering.traced_for(platform, make_train_step(config, model, optimizer, mesh)),
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
