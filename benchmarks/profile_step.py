"""Where a train step's time goes: each sub-module's forward and forward + backward, ours (JAX)
beside the original's (our PyTorch port) on the same activations and the same number of threads.

    python -m benchmarks.profile_step [--reps=5] [--warmup=1] [--threads=N] [--json=out.json]
    python -m benchmarks.profile_step --quick      # CI-sized: the plain tiny config, 1 rep
    python -m benchmarks.profile_step --convs=onednn    # ours with the opt-in oneDNN convolutions

Shapes: the issue-10 tiny setting (``benchmarks.settings``: ResNet-50, hidden 64, 4 layers,
128x192, batch 4 x 2 clips, 12 tokens, float32). Each part runs on the activations of one
forward pass of ours (the original's get them in its layouts); forward + backward is the
gradient of the part's parameters and float inputs for a fixed random cotangent. Dropout is
off on both sides. The original runs in a worker process of its own (``benchmarks.torch_process``
says why), which times each call itself. The four calls of a part alternate, so load from other
jobs hits all alike, each after one untimed call of its own (``UNTIMED_PER_TURN``: the first
call after the other process's can pay for what that one left behind, ``benchmarks.vs_reference``
says more); times are medians. ratio = original time / ours (above 1: ours is faster). In stage 1 every
part trains; in stage 2 the towers (the first five rows) run forward only.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
from absl import app, flags

from benchmarks import parts as P
from benchmarks.interleave import median_interleaved, wall_clock
from benchmarks.parts_jax import jax_parts
from benchmarks.reporting import print_markdown_table, report
from benchmarks.settings import pin_cpus, tiny_setting
from benchmarks.step_builder import build_step
from benchmarks.torch_process import parts_process
from hdvila_jax.huge_page_malloc import reexec_with_huge_page_malloc
from hdvila_jax.kernels import onednn_conv

_REPS = flags.DEFINE_integer("reps", 5, "Timed calls of each part and side.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls first.")
_QUICK = flags.DEFINE_bool("quick", False, "CI-sized: the plain tiny config, 1 timed call.")
_THREADS = flags.DEFINE_integer("threads", 0, "Run on this many CPUs, both sides (0: all this process may use).")
_CONVS = flags.DEFINE_enum("convs", "xla", ["xla", "onednn"],
                           "Our CPU convolutions: xla (XLA's own, the default), onednn (opted in).")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")
UNTIMED_PER_TURN = 1


def profile(quick: bool, reps: int, warmup: int, threads: int, convs: str) -> list[dict]:
    """One row per part: median ms of forward and forward + backward, ours (with ``convs``
    convolutions on CPU) and the original's."""
    config = tiny_setting(2, quick)
    built = build_step(config)
    batch = {k: np.asarray(v) for k, v in built.random_batch().items()}
    rows = []
    with onednn_conv.used(convs == "onednn"), tempfile.TemporaryDirectory() as tmp:
        ours, acts = jax_parts(built.model_cfg, batch, tiny_setting(1, quick).temperature,
                               P.STAGE1_PARTS + P.STAGE2_PARTS)
        acts_file = os.path.join(tmp, "acts.npz")
        np.savez(acts_file, **acts)
        with parts_process(acts_file, quick) as original:
            for part in ours:
                def theirs(kind, name=part.name):
                    return lambda: original.request([name, kind])
                s = median_interleaved(dict(ours_forward=wall_clock(part.forward), original_forward=theirs("forward"),
                                            ours_forward_backward=wall_clock(part.forward_backward),
                                            original_forward_backward=theirs("forward_backward")), reps, warmup,
                                           UNTIMED_PER_TURN)
                rows.append(dict(part=part.name, threads=threads, convs=convs,
                                 **{f"{k}_ms": 1e3 * v for k, v in s.items()}))
    return rows


def _cells(ours: float, original: float) -> list[str]:
    return [f"{ours:.1f}", f"{original:.1f}", f"{original / ours:.2f}x"]


def print_table(rows: list[dict]) -> None:
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k.endswith("_ms")}
    print_markdown_table(
        ["part", "ours fwd ms", "original fwd ms", "ratio", "ours fwd+bwd ms", "original fwd+bwd ms", "ratio"],
        [[r["part"], *_cells(r["ours_forward_ms"], r["original_forward_ms"]),
          *_cells(r["ours_forward_backward_ms"], r["original_forward_backward_ms"])]
         for r in rows + [dict(part="**total**", **total)]])


def main(argv):
    del argv
    threads = pin_cpus(_THREADS.value)
    reps, warmup = (1, 1) if _QUICK.value else (_REPS.value, _WARMUP.value)
    report(profile(_QUICK.value, reps, warmup, threads, _CONVS.value), print_table, _JSON.value)


if __name__ == "__main__":
    reexec_with_huge_page_malloc()  # as the trainer runs: hdvila_jax/main.py
    app.run(main)
