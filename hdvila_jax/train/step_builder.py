"""The trainer's sharded train step for benchmarks: built from a trainer config exactly as
``hdvila_jax.train.trainer`` builds it, with abstract (shape-only) or random inputs."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from hdvila_jax.models import HDVILA, ModelConfig
from hdvila_jax.models.variables import abstract_variables
from hdvila_jax.train import sharding, train_state
from hdvila_jax.train.config_checks import check_config
from hdvila_jax.train.optimizer import Optimizer, make_optimizer
from hdvila_jax.train.train_step import jit_train_step


def memory_per_device(compiled: jax.stages.Compiled) -> dict[str, int]:
    """Bytes per device from XLA's memory analysis of ``compiled``: arguments, outputs, aliased,
    temporaries, and peak = arguments + outputs - aliased + temporaries."""
    m = compiled.memory_analysis()
    row = dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes, aliased=m.alias_size_in_bytes,
               temporaries=m.temp_size_in_bytes)
    return dict(row, peak=row["arguments"] + row["outputs"] - row["aliased"] + row["temporaries"])


@dataclasses.dataclass
class BuiltStep:
    """A jitted train step and what it takes."""

    config: ml_collections.ConfigDict
    model_cfg: ModelConfig
    mesh: Mesh
    optimizer: Optimizer
    specs: dict
    step: Callable

    def abstract_state(self) -> dict:
        return train_state.abstract_state(self.config, self.model_cfg, self.mesh, self.optimizer, self.specs)

    def batch_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Global batch ``name -> (shape, dtype)`` of the config."""
        c, m = self.config, self.model_cfg
        b, clips, (h, w), length = c.batch_size, c.data.train_n_clips, m.crop_size, c.data.max_txt_len
        shapes = dict(img_middle=((b, clips, h, w, 3), jnp.uint8),
                      img_other=((b, clips, m.num_frames - 1, h // 4, w // 4, 3), jnp.uint8),
                      text_input_ids=((b, length), jnp.int32), text_input_mask=((b, length), jnp.int32))
        if c.stage == 2:
            shapes["mlm_labels"] = ((b, length), jnp.int32)
        return shapes

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        batch_sharding = sharding.batch_sharding(self.mesh)
        return {k: jax.ShapeDtypeStruct(s, d, sharding=batch_sharding) for k, (s, d) in self.batch_shapes().items()}

    def random_batch(self, seed: int = 0) -> dict[str, jax.Array]:
        """Random pixels and tokens, 15% MLM targets in stage 2, placed on the mesh."""
        rng = np.random.default_rng(seed)
        vocab = self.model_cfg.vocab_size
        out = {}
        for name, (shape, dtype) in self.batch_shapes().items():
            if dtype == jnp.uint8:
                out[name] = rng.integers(0, 256, shape, dtype=np.uint8)
            elif name == "text_input_mask":
                out[name] = np.ones(shape, np.int32)
            elif name == "mlm_labels":
                out[name] = np.where(rng.random(shape) < 0.15, rng.integers(5, vocab, shape), -100).astype(np.int32)
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


def build_step(config: ml_collections.ConfigDict, devices=None) -> BuiltStep:
    """Check ``config``, build its mesh, optimizer and the jitted, sharded, donating train step."""
    model_cfg = check_config(config)
    mesh = sharding.make_mesh(config.mesh, devices)
    optimizer = make_optimizer(config.optimizer, abstract_variables(model_cfg, config.stage)["params"],
                               config.total_steps)
    specs = train_state.state_specs(config, model_cfg, mesh, optimizer)
    step = jit_train_step(config, HDVILA(model_cfg), optimizer, mesh, specs)
    return BuiltStep(config, model_cfg, mesh, optimizer, specs, step)
