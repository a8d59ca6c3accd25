"""The platform the model is lowered for: the devices a step will run on, not necessarily the default backend.

A few layers take a lowering that is fast on one platform only (XLA:CPU's convolution and
max-pool forms, ``conv.py`` and ``layers.max_pool``). They are told the platform explicitly:
``ModelConfig.lowering_platform`` is passed down the module tree as an attribute, and whoever
builds a step for a mesh sets it to the mesh's platform (``train.step_builder.build_step``), so that
a TPU step compiled ahead of time on a CPU host gets the TPU forms.
"""
from __future__ import annotations

import jax


def resolve_platform(name: str) -> str:
    """``name`` ("cpu", "gpu", "tpu"), or JAX's default backend for ""."""
    return name or jax.default_backend()
