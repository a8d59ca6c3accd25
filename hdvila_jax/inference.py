"""The model's jitted encoders and the one encode loop of retrieval evaluation, multiple choice,
QA prediction, search indexing and the Encoder.

The loop takes process-local batches (each holding a ``valid`` flag per row: padding rows are
False), assembles each into a global batch sharded over the mesh's batch axes, runs a jitted
function on it, gathers every process's rows and drops the padding.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from hdvila_jax import sharding
from hdvila_jax.models import HDVILA

TEXT_INPUTS = ("text_input_ids", "text_input_mask")
VIDEO_INPUTS = ("img_middle", "img_other")
BatchFn = Callable[[Any, Mapping[str, jax.Array]], Mapping[str, jax.Array]]


def make_encode_fn(model: HDVILA, towers: Sequence[str] = ("text", "video")) -> BatchFn:
    """Jitted ``(variables, batch) -> {"<tower>_features": [B, D]}`` of the stage-1 ``towers``
    ("text": ``text_input_*``; "video": ``img_middle``/``img_other``), normalised, no dropout."""
    unknown = set(towers) - {"text", "video"}
    if unknown or not towers:
        raise ValueError(f"towers must be 'text' and/or 'video', got {towers!r}")

    def encode(variables, batch):
        out = {}
        if "text" in towers:
            out["text_features"] = model.apply(variables, *(batch[k] for k in TEXT_INPUTS),
                                               method=HDVILA.encode_text)[1]
        if "video" in towers:
            out["video_features"] = model.apply(variables, *(batch[k] for k in VIDEO_INPUTS),
                                                method=HDVILA.encode_video)[1]
        return out
    return jax.jit(encode)


def encoder_inputs(towers: Sequence[str]) -> tuple[str, ...]:
    """The batch keys :func:`make_encode_fn` reads for ``towers``."""
    return (*(TEXT_INPUTS if "text" in towers else ()), *(VIDEO_INPUTS if "video" in towers else ()))


def encode_batches(fn: BatchFn, variables: Any, batches: Iterable[Mapping[str, np.ndarray]], mesh: Mesh,
                   inputs: Sequence[str], carry: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """``fn(variables, global batch of inputs)`` over every process-local batch (holding ``inputs``,
    ``carry`` and ``valid``): its outputs and the ``carry`` fields (labels, ids) of all processes'
    valid rows, concatenated in batch order (within a batch, process-major)."""
    collected: dict[str, list[np.ndarray]] = defaultdict(list)
    for local in batches:
        batch = sharding.global_batch({k: local[k] for k in (*inputs, *carry, "valid")}, mesh)
        outputs = fn(variables, {k: batch[k] for k in inputs})
        keep = sharding.gather_to_host(batch["valid"])
        for name, value in {**outputs, **{k: batch[k] for k in carry}}.items():
            collected[name].append(sharding.gather_to_host(value)[keep])
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def padded_batches(arrays: Mapping[str, np.ndarray], count: int, batch_size: int
                   ) -> Iterable[dict[str, np.ndarray]]:
    """The first ``count`` rows of in-memory ``arrays`` as fixed-size batches, the last zero-padded,
    each with its ``valid`` flags (for :func:`encode_batches` on this process's devices)."""
    for start in range(0, count, batch_size):
        real = min(batch_size, count - start)
        batch = {}
        for name, array in arrays.items():
            chunk = np.asarray(array[start:start + real])
            pad = np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)
            batch[name] = np.concatenate([chunk, pad])
        batch["valid"] = np.arange(batch_size) < real
        yield batch
