"""One optimisation step of any task as a pure function for ``jax.jit``: the task
(``hdvila_jax.tasks``) gives the loss and its gradient over the global batch and its
micro-batches (``grad_accum_steps``); this module applies the optimizer.

The train state is a dict ``{'step', 'rng', 'params', 'batch_stats', 'opt_state'}``.
Only trainable parameters are differentiated; frozen ones pass through bit-identical.
A step whose loss or gradient is not finite leaves the state unchanged and reports
``finite = False``; the trainer stops on it.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util
from jax.sharding import Mesh

from hdvila_jax import sharding
from hdvila_jax.models import HDVILA
from hdvila_jax.tasks.base import Task
from hdvila_jax.tasks.gradients import StepContext
from hdvila_jax.train.optimizer import FROZEN, Optimizer, global_norm

State = dict[str, Any]
Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def make_train_step(config: ml_collections.ConfigDict, model: HDVILA, optimizer: Optimizer, mesh: Mesh,
                    task: Task) -> Callable[[State, Batch], tuple[State, Metrics]]:
    """The step function ``(state, global batch) -> (new state, metrics)`` of ``task``."""
    trainable_paths = [p for p, label in optimizer.labels.items() if label != FROZEN]

    def train_step(state: State, batch: Batch) -> tuple[State, Metrics]:
        flat = traverse_util.flatten_dict(state["params"], sep="/")
        trainable = {p: flat[p] for p in trainable_paths}
        frozen = {p: v for p, v in flat.items() if p not in trainable}
        rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"], impl=config.rng_impl), state["step"])
        ctx = StepContext(model, mesh, config.grad_accum_steps, frozen, state["batch_stats"])
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # per-shard kernels (fused attention)
            loss, metrics, grads = task.loss_and_grads(ctx, trainable, batch, rng)

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
                   specs: State, task: Task) -> Callable[[State, Batch], tuple[State, Metrics]]:
    """:func:`make_train_step` jitted with the train state's shardings (``specs``) in and out,
    the batch sharded over the batch axes, replicated metrics, and the state donated; lowered for
    ``model.config.lowering_platform`` (``step_builder.build_step`` sets it to the mesh's platform)."""
    state_shardings = sharding.named(mesh, specs)
    return jax.jit(make_train_step(config, model, optimizer, mesh, task),
                   in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=(0,))
