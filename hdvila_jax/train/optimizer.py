"""AdamW with parameter groups chosen by name (docs/fidelity.md §7).

``config.optimizer.groups`` maps a group name to ``match`` (regex searched in parameter
paths such as ``text/encoder/layer_0/query/kernel``), ``lr``, ``weight_decay`` and
``schedule`` (``warmup_linear``, ``multi_step`` or ``constant``). Parameters matching
``config.optimizer.frozen`` never train: they get no gradient and no optimizer state.
Every parameter must be covered by exactly one group or by ``frozen``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

FROZEN = "frozen"
SCHEDULES = ("warmup_linear", "multi_step", "constant")


class OptimizerConfigError(ValueError):
    """The optimizer config or its parameter rules are wrong; the message names the field or parameter."""


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optax transformation plus what the train step needs to know about the groups."""

    tx: optax.GradientTransformation
    labels: dict[str, str]  # flat parameter path -> group name (or FROZEN)
    schedules: dict[str, optax.Schedule]  # group name -> lr as a function of the update count


def flat_paths(params: Mapping[str, Any]) -> list[str]:
    """'/'-joined paths of the leaves of a nested parameter dict, in flatten order."""
    return list(traverse_util.flatten_dict(params, sep="/"))


def _compile(pattern: str, field: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise OptimizerConfigError(f"config.{field}={pattern!r} is not a valid regex: {e}") from e


def assign_groups(paths: list[str], groups: Mapping[str, str], frozen: str) -> dict[str, str]:
    """Label each path with the single group (``name -> regex``) or FROZEN whose regex it matches.

    Raises OptimizerConfigError naming every parameter matched by no rule or by several.
    """
    rules = {name: _compile(match, f"optimizer.groups.{name}.match") for name, match in groups.items()}
    if frozen:
        rules[FROZEN] = _compile(frozen, "optimizer.frozen")
    labels, uncovered, twice = {}, [], []
    for path in paths:
        hits = [name for name, rule in rules.items() if rule.search(path)]
        if not hits:
            uncovered.append(path)
        elif len(hits) > 1:
            twice.append(f"{path} (matched by {', '.join(hits)})")
        else:
            labels[path] = hits[0]
    problems = []
    if uncovered:
        problems.append("parameters matched by no optimizer group nor optimizer.frozen:\n  " + "\n  ".join(uncovered))
    if twice:
        problems.append("parameters matched by more than one rule:\n  " + "\n  ".join(twice))
    if problems:
        raise OptimizerConfigError("\n".join(problems))
    return labels


def make_schedule(kind: str, lr: float, total_steps: int, warmup_steps: int,
                  milestones: tuple[float, ...] = (), gamma: float = 0.5,
                  skip_last_halving: bool = False) -> optax.Schedule:
    """Learning rate of update ``count`` (0-based), as in the reference's ``get_lr_sched``:
    linear warmup over ``warmup_steps`` then linear decay to 0 at ``total_steps``
    (``warmup_linear``), warmup then x``gamma`` from each milestone step on (``multi_step``),
    or constant. The reference counts updates from 1, so update 0 already has lr/warmup.

    ``multi_step`` follows the downstream code (docs/fidelity.md §11.3): no decay while
    ``step <= warmup``; afterwards ``gamma ** i`` with ``i`` the number of milestones with
    ``step >= m`` (milestones may be fractional steps, from epochs x steps per epoch). With
    ``skip_last_halving`` the factor past the last milestone is ``gamma ** (n + 1)``, the
    original's quirk (docs/fidelity.md Q10)."""
    if kind not in SCHEDULES:
        raise OptimizerConfigError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    warmup = max(int(warmup_steps), 0)

    def schedule(count):
        step = jnp.asarray(count, jnp.float32) + 1.0
        ramp = jnp.minimum(step / warmup, 1.0) if warmup else 1.0
        if kind == "warmup_linear":
            decay = jnp.clip((total_steps - step) / max(total_steps - warmup, 1), 0.0, 1.0)
            return lr * jnp.where(step < warmup, ramp, decay)
        if kind == "multi_step":
            if not milestones:
                return lr * ramp
            passed = sum((step >= m).astype(jnp.float32) for m in milestones)
            if skip_last_halving:
                passed = jnp.where(passed == len(milestones), passed + 1, passed)
            return lr * jnp.where(step <= warmup, ramp, gamma ** passed)
        return lr * ramp if warmup else jnp.full((), lr, jnp.float32)

    return schedule


def make_optimizer(cfg: ml_collections.ConfigDict, params: Mapping[str, Any], total_steps: int) -> Optimizer:
    """Build the optimizer for ``params`` (arrays or shapes) from ``config.optimizer``."""
    paths = flat_paths(params)
    groups = {name: group.match for name, group in cfg.groups.items()}
    labels = assign_groups(paths, groups, cfg.frozen)
    no_decay = _compile(cfg.no_decay, "optimizer.no_decay")
    decay_mask = traverse_util.unflatten_dict({p: not no_decay.search(p) for p in paths}, sep="/")
    warmup_steps = int(cfg.warmup_ratio * total_steps)
    schedules, transforms = {}, {FROZEN: optax.set_to_zero()}
    for name, group in cfg.groups.items():
        if group.schedule not in SCHEDULES:
            raise OptimizerConfigError(f"config.optimizer.groups.{name}.schedule must be one of {SCHEDULES}, "
                                       f"got {group.schedule!r}")
        schedules[name] = make_schedule(group.schedule, group.lr, total_steps, warmup_steps,
                                        tuple(cfg.decay_milestones), cfg.decay_gamma,
                                        cfg.get("skip_last_halving", False))
        transforms[name] = optax.adamw(schedules[name], b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                       weight_decay=group.weight_decay, mask=decay_mask)
    label_tree = traverse_util.unflatten_dict(labels, sep="/")
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), optax.multi_transform(transforms, label_tree))
    return Optimizer(tx=tx, labels=labels, schedules=schedules)


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over all leaves, accumulated in float32."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))
