"""What the backward pass keeps of the two ResNets per remat policy, from
``jax.ad_checkpoint.print_saved_residuals`` (traced, never run).

    python -m benchmarks.residuals [--policies=none,stage,block,block_dots] [--dtype=bfloat16] [--json=out.json]
    python -m benchmarks.residuals --quick      # CI-sized: 128x192 crop

One clip of the paper model (``configs/model.py:paper``): the HR ResNet on the middle frame at
the crop size (stages 1-4) and the LR ResNet on the 6 other frames at a quarter of it (stages
1-3), as ``VideoEncoder.backbones`` runs them. A residual "from the argument" is a parameter,
BatchNorm statistic or the input, which exist anyway; the others are activations the backward
pass keeps alive, the memory a remat policy trades for recomputation.
"""
from __future__ import annotations

import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax.ad_checkpoint import print_saved_residuals

from benchmarks.reporting import print_markdown_table, report
from configs import model as model_configs
from hdvila_jax.models.resnet import ResNet

_POLICIES = flags.DEFINE_list("policies", ["none", "stage", "block", "block_dots"],
                              "'none' or model.remat_policy values.")
_DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Compute dtype of the convolutions.")
_QUICK = flags.DEFINE_bool("quick", False, "128x192 crop (for CI).")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")

MIB = 1024**2
_AVAL = re.compile(r"^(\w+)\[([\d,]*)\]")
_ITEM_BYTES = dict(bool=1, pred=1, i8=1, u8=1, bf16=2, f16=2, i16=2, u16=2, f32=4, i32=4, u32=4, f64=8, i64=8, u64=8)


def residual_bytes(line: str) -> int:
    """Bytes of one ``print_saved_residuals`` line (``bf16[1,160,256,64] output of ...``)."""
    match = _AVAL.match(line)
    if match is None or match.group(1) not in _ITEM_BYTES:
        raise ValueError(f"unexpected print_saved_residuals line: {line!r}")
    dims = [int(d) for d in match.group(2).split(",") if d]
    return int(np.prod(dims, dtype=np.int64)) * _ITEM_BYTES[match.group(1)]


def saved_residuals(depth: int, num_stages: int, shape: tuple[int, ...], dtype: str, policy: str) -> list[str]:
    """``print_saved_residuals`` lines of a ResNet's forward (sum of its outputs) on ``shape``."""
    model = ResNet(depth, num_stages, jnp.dtype(dtype), remat="" if policy == "none" else policy)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)

    def loss(variables, x):
        return sum(jnp.sum(o.astype(jnp.float32)) for o in model.apply(variables, x))

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        print_saved_residuals(loss, variables, x)
    return out.getvalue().splitlines()


def policy_row(policy: str, crop: tuple[int, int], frames: int, depth: int, dtype: str) -> dict:
    """Residual count and MiB (arguments, activations) of one clip's two ResNets under ``policy``."""
    h, w = crop
    lines = (saved_residuals(depth, 4, (1, h, w, 3), dtype, policy)
             + saved_residuals(depth, 3, (frames - 1, h // 4, w // 4, 3), dtype, policy))
    arguments = [line for line in lines if "from the argument" in line]
    activations = [line for line in lines if "from the argument" not in line]
    largest = max(activations, key=residual_bytes, default="")
    return dict(policy=policy, crop=list(crop), dtype=dtype, residuals=len(lines), activations=len(activations),
                argument_mib=sum(map(residual_bytes, arguments)) / MIB,
                activation_mib=sum(map(residual_bytes, activations)) / MIB,
                largest_activation=largest.split(" from ")[0])


def print_table(rows: list[dict]) -> None:
    print_markdown_table(
        ["remat policy", "residuals", "of them activations", "activation MiB per clip", "largest activation"],
        [[r["policy"], r["residuals"], r["activations"], f"{r['activation_mib']:.1f}", r["largest_activation"]]
         for r in rows])


def main(argv):
    del argv
    cfg = model_configs.get_config("paper")
    crop = (128, 192) if _QUICK.value else tuple(cfg.crop_size)
    rows = [policy_row(p, crop, cfg.num_frames, cfg.resnet_depth, _DTYPE.value) for p in _POLICIES.value]
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    app.run(main)
