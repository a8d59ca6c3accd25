"""HBM bytes of the TimeSformer's attention sublayers (q/k/v projection, attention, output projection;
forward + backward) on one TPU chip, per formulation, from ahead-of-time compiles (libtpu, no TPU):

    python -m benchmarks.attention_bytes [--topology=v5p:2x2x1] [--clips=64] [--json=out.json]

Formulations (``hdvila_jax.models.timesformer.GridAttention``): ``heads-major`` (the default: one qkv
einsum into a heads-major layout, ``layers.attention``), ``token-major`` (q, k, v in the grid's own layout,
attention einsums over the axis) and ``fused`` (``config.model.fused_attention``: q, k, v with the heads
side by side, the attention in its Pallas kernel, ``kernels.fused_attention`` for the spatial one,
``kernels.temporal_attention`` for the temporal one). ``--clips`` is the per-chip number of clips (2 per
stage-1 example: 64 = 32 examples); the paper's grid (7 frames of 10 x 16 cells, 1024 wide, 16 heads),
bf16. A compile takes under a minute here.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from benchmarks.reporting import print_markdown_table, report
from hdvila_jax import aot
from hdvila_jax.models.timesformer import GridAttention

_TOPOLOGY = flags.DEFINE_string("topology", "v5p:2x2x1", "libtpu topology; its first chip compiles.")
_CLIPS = flags.DEFINE_integer("clips", 64, "Clips per chip (2 per stage-1 example).")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")
FRAMES, GRID, WIDTH, HEADS = 7, (10, 16), 1024, 16
FORMULATIONS = {"heads-major": dict(), "token-major": dict(token_major=True),
                "fused": dict(token_major=True, fused=True)}


def sublayer_cost(device: jax.Device, sublayer: str, formulation: str, clips: int) -> dict:
    """XLA's cost and memory analysis of one sublayer's forward + backward compiled for ``device``."""
    h, w = GRID
    shape = (clips, FRAMES, h, w, WIDTH) if sublayer == "temporal" else (clips * FRAMES, h * w, WIDTH)
    axis = 1  # time in the grid, space in the frames
    module = GridAttention(HEADS, jnp.bfloat16, jnp.float32, lowering_platform="tpu", **FORMULATIONS[formulation])
    single = jax.sharding.SingleDeviceSharding(device)
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape[1:]), jnp.bfloat16),
                                                axis))
    abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=single), tree)  # noqa: E731
    x = jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=single)
    mesh = jax.sharding.Mesh(np.array([device]).reshape(1, 1), ("data", "fsdp"))

    def forward_backward(variables, x, d_out):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # as the train step: the kernel may run
            out, vjp = jax.vjp(lambda v, x: module.apply(v, x, axis), variables, x)
            return out, vjp(d_out)

    start = time.perf_counter()
    compiled = jax.jit(forward_backward).lower(abstract(params), x, x).compile()
    cost = aot.cost_of(compiled)
    estimate = cost.get("optimal_seconds")  # libtpu gives none (or a negative one) for v5e and v6e
    return dict(sublayer=sublayer, formulation=formulation, clips=clips, topology=_TOPOLOGY.value,
                bytes_accessed=cost.get("bytes accessed", 0.0), flops=cost.get("flops", 0.0),
                xla_estimated_s=estimate if estimate and estimate > 0 else None,
                temporaries_bytes=compiled.memory_analysis().temp_size_in_bytes,
                compile_s=time.perf_counter() - start)


def print_table(rows: list[dict]) -> None:
    print_markdown_table(
        ["sublayer", "formulation", "GB accessed", "GFLOP", "XLA estimate (ms)", "temporaries (GiB)"],
        [(r["sublayer"], r["formulation"], f"{r['bytes_accessed'] / 1e9:.2f}", f"{r['flops'] / 1e9:.0f}",
          "-" if r["xla_estimated_s"] is None else f"{r['xla_estimated_s'] * 1e3:.2f}",
          f"{r['temporaries_bytes'] / 2**30:.2f}") for r in rows])


def main(argv):
    del argv
    device = aot.topology_devices(_TOPOLOGY.value)[0]
    rows = [sublayer_cost(device, sublayer, formulation, _CLIPS.value)
            for sublayer in ("spatial", "temporal") for formulation in FORMULATIONS]
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    app.run(main)
