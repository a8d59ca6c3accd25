"""Device mesh, parameter shardings from name rules plus a size-based FSDP rule, global batches and
gathering sharded results back to the host.

Shared by the trainer (``hdvila_jax.train``), the tasks' evaluators (``hdvila_jax.tasks``) and search,
so none of them imports another for it."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


class ShardingConfigError(ValueError):
    """The mesh or the sharding rules do not fit the devices or the parameters."""


def mesh_shape(axes: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolve one ``-1`` axis size to fill ``num_devices``; check the product."""
    sizes = dict(axes)
    if set(sizes) != set(BATCH_AXES):
        raise ShardingConfigError(f"config.mesh must have exactly the axes {BATCH_AXES}, got {tuple(sizes)}")
    fill = [name for name, size in sizes.items() if size == -1]
    if len(fill) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise ShardingConfigError(f"config.mesh sizes must be positive with at most one -1, got {sizes}")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if fill:
        if num_devices % fixed:
            raise ShardingConfigError(f"config.mesh {sizes}: {num_devices} devices are not divisible by {fixed}")
        sizes[fill[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ShardingConfigError(f"config.mesh {sizes} needs {math.prod(sizes.values())} devices, "
                                  f"there are {num_devices}")
    return sizes


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``('data', 'fsdp')`` mesh over all (or the given) devices; same code on 1 CPU or a pod."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(axes, len(devices))
    shape = tuple(sizes[name] for name in BATCH_AXES)
    return jax.make_mesh(shape, BATCH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(shape), devices=devices)


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """Shard the largest axis divisible by the fsdp size, for arrays of at least ``min_size`` elements."""
    if fsdp == 1 or math.prod(shape) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def param_specs(params: Mapping[str, Any], mesh: Mesh, rules: Sequence[tuple[str, Sequence[str | None]]],
                fsdp_min_size: int) -> dict:
    """PartitionSpecs for a nested dict of arrays/shapes: first matching ``(regex, spec)`` rule,
    else the FSDP size rule. A rule whose spec does not divide the shape is an error naming both."""
    compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]
    specs = {}
    for path, leaf in traverse_util.flatten_dict(params, sep="/").items():
        shape = tuple(leaf.shape)
        rule = next(((p, s) for p, s in compiled if p.search(path)), None)
        if rule is None:
            specs[path] = _fsdp_spec(shape, mesh.shape["fsdp"], fsdp_min_size)
            continue
        pattern, spec = rule
        if len(spec) > len(shape):
            raise ShardingConfigError(f"config.sharding_rules {pattern.pattern!r} -> {spec} has more axes than "
                                      f"parameter {path} {shape}")
        for dim, axis in zip(shape, spec):
            if axis is not None and dim % mesh.shape[axis]:
                raise ShardingConfigError(f"config.sharding_rules {pattern.pattern!r} -> {spec}: parameter {path} "
                                          f"{shape} is not divisible by mesh axis {axis!r} ({mesh.shape[axis]})")
        specs[path] = P(*spec)
    return traverse_util.unflatten_dict(specs, sep="/")


def named(mesh: Mesh, specs: Any) -> Any:
    """PartitionSpec tree -> NamedSharding tree."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over every mesh axis."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble this process's slice of the batch into global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def data_parallel_size(mesh: Mesh) -> int:
    """Number of batch shards (product of the batch axes)."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def gather_to_host(x: jax.Array) -> np.ndarray:
    """A (sharded, possibly multi-process) array as one numpy array on every process; an array on
    this process's devices alone (e.g. over a mesh of the local devices) is read as it is."""
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
