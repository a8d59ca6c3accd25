"""The train state's shapes and shardings, and creating it already sharded.

State: ``{'step': int32[], 'rng', 'params', 'batch_stats', 'opt_state'}``; ``rng`` is the dropout
key's raw data (uint32[2] for threefry2x32, uint32[4] for rbg and unsafe_rbg: ``config.rng_impl``).
Parameters are sharded by :func:`sharding.param_specs`; optimizer moments follow their
parameter's sharding; step, rng and optimizer counters are replicated.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import traverse_util
from jax.sharding import Mesh, PartitionSpec as P

from hdvila_jax import sharding
from hdvila_jax.models import ModelConfig
from hdvila_jax.models import variables as model_variables
from hdvila_jax.models.variables import abstract_variables
from hdvila_jax.variables_io import variable_specs
from hdvila_jax.train.optimizer import Optimizer

State = dict[str, Any]


def opt_state_specs(optimizer: Optimizer, params: Any, param_specs: Any) -> Any:
    """Specs of the optimizer state: a leaf whose dict-key path ends with a parameter's path
    (the Adam moments, also under ``multi_transform``'s group names) is sharded like that
    parameter, everything else (counters) is replicated."""
    flat_params = traverse_util.flatten_dict(params, sep="/")
    flat_specs = traverse_util.flatten_dict(param_specs, sep="/", is_leaf=lambda _, x: isinstance(x, P))

    def spec(key_path, leaf):
        keys = [str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey)]
        for start in range(len(keys)):
            path = "/".join(keys[start:])
            if path in flat_params and tuple(flat_params[path].shape) == tuple(leaf.shape):
                return flat_specs[path]
        return P()

    return jax.tree_util.tree_map_with_path(spec, jax.eval_shape(optimizer.tx.init, params))


def state_specs(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh,
                optimizer: Optimizer) -> State:
    """PartitionSpecs of the whole train state."""
    var_specs = variable_specs(config, model_cfg, mesh)
    params = abstract_variables(model_cfg, config.stage)["params"]
    return dict(step=P(), rng=P(), params=var_specs["params"], batch_stats=var_specs["batch_stats"],
                opt_state=opt_state_specs(optimizer, params, var_specs["params"]))


def init_variables_sharded(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh) -> dict:
    """Random ``{'params', 'batch_stats'}``, created directly in their shardings by a jitted init."""
    rules = tuple((pattern, tuple(spec)) for pattern, spec in config.sharding_rules)
    init = _sharded_init(model_cfg, config.stage, mesh, rules, config.fsdp_min_size)
    return init(jax.random.PRNGKey(config.seed))


@functools.lru_cache(maxsize=4)
def _sharded_init(model_cfg: ModelConfig, stage: int, mesh: Mesh, rules: tuple, fsdp_min_size: int):
    """The jitted init (compiled once per model, stage and sharding)."""
    specs = {name: sharding.param_specs(tree, mesh, rules, fsdp_min_size)
             for name, tree in abstract_variables(model_cfg, stage).items()}
    return jax.jit(functools.partial(model_variables.initialize, model_cfg, stage),
                   out_shardings=sharding.named(mesh, specs))


def dropout_key_data(config: ml_collections.ConfigDict) -> jax.Array:
    """The raw data of the run's dropout key (seed ``config.seed + 1``, impl ``config.rng_impl``)."""
    return jax.random.key_data(jax.random.key(config.seed + 1, impl=config.rng_impl))


def new_train_state(config: ml_collections.ConfigDict, variables: dict, mesh: Mesh, specs: State,
                    optimizer: Optimizer) -> State:
    """Step 0 state around (sharded) ``variables``: a fresh optimizer state, created sharded."""
    opt_init = jax.jit(optimizer.tx.init, out_shardings=sharding.named(mesh, specs["opt_state"]))
    replicated = sharding.replicated(mesh)
    return dict(step=jax.device_put(jnp.zeros((), jnp.int32), replicated),
                rng=jax.device_put(dropout_key_data(config), replicated),
                params=variables["params"], batch_stats=variables["batch_stats"],
                opt_state=opt_init(variables["params"]))


def abstract_state(config: ml_collections.ConfigDict, model_cfg: ModelConfig, mesh: Mesh,
                   optimizer: Optimizer, specs: State) -> State:
    """``ShapeDtypeStruct``s with shardings of the train state (the restore target)."""
    variables = abstract_variables(model_cfg, config.stage)
    shapes = dict(step=jax.ShapeDtypeStruct((), jnp.int32), rng=jax.eval_shape(lambda: dropout_key_data(config)),
                  params=variables["params"], batch_stats=variables["batch_stats"],
                  opt_state=jax.eval_shape(optimizer.tx.init, variables["params"]))
    return jax.tree.map(lambda s, spec: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.NamedSharding(mesh, spec)),
                        shapes, specs, is_leaf=lambda x: isinstance(x, P))
