"""The sharded train step of a config, built once for the trainer, the AOT compiler
(``hdvila_jax.aot``) and the benchmarks: mesh, optimizer, state shardings, the jitted donating
step, and the step's abstract (shape-only) inputs.

The devices may be real (the trainer) or a TPU topology's (``jax.experimental.topologies``, for
compiling ahead of time on any host); the model is traced for their platform (convolution
and max-pool lowerings: the model config's ``lowering_platform``, set here from the mesh).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hdvila_jax import sharding
from hdvila_jax.config_checks import check_batch_sizes, check_config
from hdvila_jax.models import HDVILA, ModelConfig, model_config_from_dict
from hdvila_jax.models.variables import abstract_variables
from hdvila_jax.tasks.base import BatchShapes, Task
from hdvila_jax.train import train_state
from hdvila_jax.train.optimizer import Optimizer, make_optimizer
from hdvila_jax.train.train_step import jit_train_step


def memory_per_device(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Bytes per device from XLA's memory analysis of ``compiled``: arguments, outputs, aliased,
    temporaries, and peak = arguments + outputs - aliased + temporaries."""
    m = compiled.memory_analysis()
    row = dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes, aliased=m.alias_size_in_bytes,
               temporaries=m.temp_size_in_bytes)
    return dict(row, peak=row["arguments"] + row["outputs"] - row["aliased"] + row["temporaries"])


def train_batch_shapes(config: ml_collections.ConfigDict, model_cfg: ModelConfig, task: Task) -> BatchShapes:
    """The global train batch of ``config``'s ``task``: ``batch_size`` examples of ``train_n_clips`` clips."""
    return task.batch_shapes(config, model_cfg, config.batch_size, config.data.train_n_clips, train=True)


def eval_batch_shapes(config: ml_collections.ConfigDict, model_cfg: ModelConfig, task: Task) -> BatchShapes:
    """The global eval batch of ``config``'s ``task``: ``eval_batch_size`` examples of ``inference_n_clips`` clips."""
    return task.batch_shapes(config, model_cfg, config.eval_batch_size, config.data.inference_n_clips, train=False)


@dataclasses.dataclass
class BuiltStep:
    """A jitted train step and what it takes."""

    config: ml_collections.ConfigDict
    model_cfg: ModelConfig
    mesh: Mesh
    optimizer: Optimizer
    specs: dict
    step: Callable
    task: Task

    @property
    def platform(self) -> str:
        """The platform of the mesh's devices ("cpu", "gpu", "tpu")."""
        return self.mesh.devices.flat[0].platform

    def abstract_state(self) -> dict:
        return train_state.abstract_state(self.config, self.model_cfg, self.mesh, self.optimizer, self.specs)

    def batch_shapes(self) -> BatchShapes:
        """Global batch ``name -> (shape, dtype)`` of the config."""
        return train_batch_shapes(self.config, self.model_cfg, self.task)

    def abstract_batch(self, shapes: BatchShapes | None = None) -> dict[str, jax.ShapeDtypeStruct]:
        """``shapes`` (default: the train batch's) as sharded ``ShapeDtypeStruct``s."""
        batch_sharding = sharding.batch_sharding(self.mesh)
        return {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding)
                for k, (s, d) in (shapes or self.batch_shapes()).items()}

    def random_batch(self, seed: int = 0) -> dict[str, jax.Array]:
        """Random pixels and tokens, 15% MLM targets in stage 2, placed on the mesh."""
        rng = np.random.default_rng(seed)
        vocab = self.model_cfg.vocab_size
        out = {}
        for name, (shape, dtype) in self.batch_shapes().items():
            if dtype == jnp.uint8:
                out[name] = rng.integers(0, 256, shape, dtype=np.uint8)
            elif name.endswith("input_mask"):
                out[name] = np.ones(shape, np.int32)
            elif name == "mlm_labels":
                out[name] = np.where(rng.random(shape) < 0.15, rng.integers(5, vocab, shape), -100).astype(np.int32)
            elif name in ("qa_label", "mc_answer"):
                out[name] = np.zeros(shape, np.int32)
            else:
                out[name] = rng.integers(5, vocab, shape).astype(np.int32)
        return sharding.global_batch(out, self.mesh)

    def lower(self) -> jax.stages.Lowered:
        """The step lowered for this config's abstract state and batch (compile it with any options)."""
        return self.step.lower(self.abstract_state(), self.abstract_batch())

    def init_state(self) -> dict:
        """A random, sharded step-0 train state."""
        variables = train_state.init_variables_sharded(self.config, self.model_cfg, self.mesh)
        return train_state.new_train_state(self.config, variables, self.mesh, self.specs, self.optimizer)


def build_step(config: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None,
               task: Task | None = None) -> BuiltStep:
    """Build ``config``'s mesh over ``devices`` (default: all), optimizer, state shardings and the
    jitted, sharded, donating train step of ``task``, traced for the devices' platform. Without
    ``task`` the config is checked first and its task made here (the AOT compiler, benchmarks);
    the trainer passes the task of the config it checked."""
    if task is None:
        model_cfg, task = check_config(config)
    else:
        model_cfg = model_config_from_dict(config.model.to_dict())
    mesh = sharding.make_mesh(config.mesh, devices)
    if not model_cfg.lowering_platform:
        model_cfg = dataclasses.replace(model_cfg, lowering_platform=mesh.devices.flat[0].platform)
    check_batch_sizes(config, mesh)
    optimizer = make_optimizer(config.optimizer, abstract_variables(model_cfg, config.stage)["params"],
                               config.total_steps)
    specs = train_state.state_specs(config, model_cfg, mesh, optimizer)
    step = jit_train_step(config, HDVILA(model_cfg), optimizer, mesh, specs, task)
    return BuiltStep(config, model_cfg, mesh, optimizer, specs, step, task)
