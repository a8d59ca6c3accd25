"""Compile a config's train step (and its eval step) for a TPU topology ahead of time, on any
host with libtpu (``pip install -e ".[tpu]"``), never running it: does it fit, how many FLOPs, and
how fast XLA's cost model thinks it is.

    python -m hdvila_jax.aot --config=configs/stage1.py --topology=v5p:2x2x1 --per_chip_batch=8 \\
        --config.mesh.data=1 --config.mesh.fsdp=-1 [--config.model.remat=true] [--json=FILE]

The step is the trainer's own (``hdvila_jax.train.step_builder.build_step``: the same mesh rules,
shardings, donation, dtype and remat), traced for TPU and compiled by libtpu for the topology's
devices (``jax.experimental.topologies``). Topology names are libtpu's: ``v4:2x2x1``, ``v5e:2x4``,
``v5p:2x2x1``, ``v5p:4x4x4``, ``v6e:2x4``. Exits 1 with a message when the step does not fit:
either its peak exceeds the chip's HBM, or libtpu refuses to compile it (``RESOURCE_EXHAUSTED``: it
does not compile what cannot fit); then the report says ``fits: false`` with the bytes libtpu names.

Memory is per chip (peak = arguments + outputs - aliased + temporaries, from XLA's memory
analysis); FLOPs per chip and step are XLA's cost analysis of the partitioned program; the
estimated step time is XLA's cost model (``optimal_seconds``), and the MFU it implies is
FLOPs / (estimate x the chip's bf16 peak). The memory-bound time is the bytes XLA expects the
step to move through HBM over the chip's HBM bandwidth. XLA counts a loop body once, so with
``grad_accum_steps`` > 1 FLOPs and times cover one micro-batch and the update (``cost_covers``).
"""
from __future__ import annotations

import json
import math
import re
import time
from typing import Any

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from hdvila_jax import accelerators, cli_errors, hlo_profile, storage, tpu_flags, variables_io
from hdvila_jax.models import HDVILA
from hdvila_jax.models.config import ConfigError
from hdvila_jax.sharding import ShardingConfigError
from hdvila_jax.tasks.base import TrainConfigError
from hdvila_jax.train.optimizer import OptimizerConfigError
from hdvila_jax.train.step_builder import BuiltStep, build_step, eval_batch_shapes, memory_per_device

class AotError(RuntimeError):
    """The topology or the config cannot be compiled ahead of time."""


def topology_devices(name: str) -> list[jax.Device]:
    """The devices of the TPU topology ``name`` (libtpu's names; needs libtpu, never a TPU)."""
    from jax.experimental import topologies
    try:
        return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    except Exception as e:  # libtpu missing, or a name it does not know
        raise AotError(f"--topology={name!r}: no TPU topology ({type(e).__name__}: {e}); needs libtpu "
                       "(pip install -e '.[tpu]') and a name like v5p:2x2x1, v5e:2x4, v6e:2x4") from e


def chips_in(name: str) -> int:
    """Chips of a topology name: the product of its ``AxBxC`` dimensions."""
    match = re.fullmatch(r"[^:]+:(\d+(?:x\d+)*)", name)
    if not match:
        raise AotError(f"--topology={name!r}: expected NAME:AxB[xC], e.g. v5p:2x2x1")
    return math.prod(int(d) for d in match.group(1).split("x"))


def cost_of(compiled: jax.stages.Compiled) -> dict[str, float]:
    """XLA's cost analysis of one device's program (a dict, or a one-element list of it)."""
    analysis = compiled.cost_analysis()
    return dict(analysis[0] if isinstance(analysis, (list, tuple)) else analysis or {})


# libtpu's refusal: "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO
# temporaries (18.09G) exceeds available HBM (15.75G)." (sizes in GiB, per device).
_REFUSED = "RESOURCE_EXHAUSTED"
_SIZE = r"\(([\d.]+)([KMGT]?)\)"
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _named_bytes(what: str, message: str) -> float | None:
    """Bytes of ``what (12.3G)`` in libtpu's ``message``, or None when it names none."""
    match = re.search(re.escape(what) + r"\s*" + _SIZE, message)
    return float(match.group(1)) * _UNITS[match.group(2)] if match else None


def refused_report(message: str, devices_per_chip: int, chip: accelerators.Chip) -> dict[str, Any]:
    """The report of a step libtpu refused to compile for want of HBM (its ``RESOURCE_EXHAUSTED``
    ``message``): not fitting, with the bytes it names per chip (None where it names none)."""
    per_chip = lambda n: n * devices_per_chip if n is not None else None
    return dict(fits=False, compile_refused=message.strip().splitlines()[0], peak_bytes_per_chip=None,
                temporaries_bytes_per_chip=per_chip(_named_bytes("HLO temporaries", message)),
                available_hbm_bytes_per_chip=per_chip(_named_bytes("available HBM", message)),
                hbm_bytes_per_chip=chip.hbm_bytes)


def compile_and_report(lowered: jax.stages.Lowered, devices_per_chip: int, chip: accelerators.Chip,
                       dtype: str) -> tuple[dict[str, Any], jax.stages.Compiled | None]:
    """Compile ``lowered``; its report (:func:`compiled_report`, or :func:`refused_report` when libtpu
    refuses it for want of memory) with the compile time, and the compiled step (None if refused)."""
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if _REFUSED not in str(e):
            raise
        return dict(refused_report(str(e), devices_per_chip, chip), compile_s=time.perf_counter() - start), None
    return dict(compiled_report(compiled, devices_per_chip, chip, dtype), compile_s=time.perf_counter() - start), compiled


def compiled_report(compiled: jax.stages.Compiled, devices_per_chip: int, chip: accelerators.Chip,
                    dtype: str) -> dict[str, Any]:
    """Memory, FLOPs and XLA's time estimate of ``compiled``, per chip."""
    memory = {k: v * devices_per_chip for k, v in memory_per_device(compiled).items()}
    cost = cost_of(compiled)
    flops = cost.get("flops", 0.0) * devices_per_chip
    bytes_accessed = cost.get("bytes accessed", 0.0) * devices_per_chip
    estimate = cost.get("optimal_seconds")
    peak = chip.peak_flops.get(dtype) or chip.peak_flops["bfloat16"]
    return dict(peak_bytes_per_chip=memory["peak"], arguments_bytes_per_chip=memory["arguments"],
                outputs_bytes_per_chip=memory["outputs"], aliased_bytes_per_chip=memory["aliased"],
                temporaries_bytes_per_chip=memory["temporaries"], hbm_bytes_per_chip=chip.hbm_bytes,
                fits=memory["peak"] <= chip.hbm_bytes, flops_per_chip_step=flops,
                hbm_bytes_accessed_per_chip_step=bytes_accessed, compute_bound_s=flops / peak,
                memory_bound_s=bytes_accessed / chip.hbm_bytes_per_s,
                xla_estimated_step_s=estimate if estimate and estimate > 0 else None,
                mfu_at_xla_estimate=flops / (estimate * peak) if estimate and estimate > 0 else None)


def eval_step_lowered(built: BuiltStep) -> jax.stages.Lowered | None:
    """The config's eval step (its task's ``eval_step``: QA prediction, or retrieval encoding) lowered
    for ``built``'s mesh and the config's eval batch; None when the config evaluates nothing (no
    ``data.val_files``). ``built.model_cfg`` is lowered for the mesh's platform."""
    config, model_cfg, mesh = built.config, built.model_cfg, built.mesh
    if not config.data.val_files:
        return None
    step, inputs = built.task.eval_step(HDVILA(model_cfg))
    batch = built.abstract_batch(eval_batch_shapes(config, model_cfg, built.task))
    variables = variables_io.sharded_variable_shapes(config, model_cfg, mesh)
    return step.lower(variables, {k: batch[k] for k in inputs})


def compile_for_topology(config: ml_collections.ConfigDict, topology: str, per_chip_batch: int | None = None,
                         with_eval: bool = True, profile: bool = False, hlo_path: str | None = None) -> dict[str, Any]:
    """Compile ``config``'s train step (and its eval step) for ``topology``; the report (with
    ``profile``, also the train step's ``op_profile`` and ``module_profile``; ``hlo_path``: write its optimised HLO there)."""
    if per_chip_batch is not None and per_chip_batch < 1:
        raise AotError(f"--per_chip_batch={per_chip_batch}: must be a positive integer")
    libtpu_flags = tpu_flags.apply(config.get("libtpu_flags", ""))  # before libtpu starts, as the trainer does
    devices = topology_devices(topology)
    chips = chips_in(topology)
    if len(devices) % chips:
        raise AotError(f"--topology={topology!r}: {len(devices)} devices over {chips} chips")
    chip = accelerators.chip_of(devices[0].device_kind)
    if chip is None:
        raise AotError(f"--topology={topology!r}: unknown chip {devices[0].device_kind!r} "
                       "(hdvila_jax/accelerators.py)")
    if per_chip_batch is not None:
        config = config.copy_and_resolve_references()
        config.batch_size = per_chip_batch * chips * config.grad_accum_steps
        config.eval_batch_size = per_chip_batch * chips
    built = build_step(config, devices)
    devices_per_chip = len(devices) // chips
    dtype = built.model_cfg.dtype
    report = dict(topology=topology, chip=chip.name, chips=chips, devices=len(devices),
                  mesh=dict(built.mesh.shape), global_batch=config.batch_size,
                  per_chip_batch=config.batch_size / config.grad_accum_steps / chips,
                  grad_accum_steps=config.grad_accum_steps,
                  dtype=dtype, remat=built.model_cfg.active_remat or "none", libtpu_flags=libtpu_flags,
                  stage=config.stage,
                  task=built.task.name)
    train_report, compiled = compile_and_report(built.lower(), devices_per_chip, chip, dtype)
    # XLA's cost analysis counts a loop body once: with accumulation, one micro-batch's cost
    report.update(train_report,
                  cost_covers="one micro-batch and the update" if config.grad_accum_steps > 1 else "the step")
    hlo = compiled.as_text() if compiled is not None and (hlo_path or profile) else None  # tens of MB at paper size
    if hlo_path and hlo is not None:
        with open(hlo_path, "w") as f:
            f.write(hlo)
    if profile and hlo is not None:
        report["op_profile"] = hlo_profile.op_profile(hlo)
        report["module_profile"] = hlo_profile.module_profile(hlo)
    lowered_eval = eval_step_lowered(built) if with_eval else None
    if lowered_eval is not None:
        eval_report, _ = compile_and_report(lowered_eval, devices_per_chip, chip, dtype)
        report["eval"] = dict(eval_report, global_batch=config.eval_batch_size)
    return report


def fit_error(report: dict[str, Any]) -> str | None:
    """Why the report's train or eval step does not fit its chip's HBM, or None when both fit."""
    too_big = [(name, row) for name, row in (("train", report), ("eval", report.get("eval"))) if row and not row["fits"]]
    if not too_big:
        return None
    return "; ".join(f"the {name} step does not fit: {_why(row)} ({report['chip']})" for name, row in too_big) + (
        "; lower --per_chip_batch, turn on --config.model.remat=true, or shard more (--config.mesh.fsdp)")


def _why(row: dict[str, Any]) -> str:
    """What a row that does not fit needs against what its chip has."""
    if "compile_refused" not in row:
        return f"peak {_gib(row['peak_bytes_per_chip'])} per chip of {_gib(row['hbm_bytes_per_chip'])} HBM"
    if row["temporaries_bytes_per_chip"] is None:
        return f"libtpu refused to compile it ({row['compile_refused']})"
    return (f"libtpu refused to compile it: {_gib(row['temporaries_bytes_per_chip'])} of temporaries per chip "
            f"exceed the {_gib(row['available_hbm_bytes_per_chip'] or row['hbm_bytes_per_chip'])} of HBM available")


def _gib(n: float) -> str:
    return f"{n / accelerators.GIB:.2f} GiB"


def print_report(report: dict[str, Any]) -> None:
    """The report as ``key: value`` lines (train step first, then the eval step)."""
    def lines(row: dict[str, Any], prefix: str) -> None:
        for key, value in row.items():
            if key in ("eval", "op_profile", "module_profile"):
                continue
            shown = _gib(value) if key.endswith("bytes_per_chip") and value is not None else value
            if isinstance(value, float) and not key.endswith("bytes_per_chip"):
                shown = f"{value:.4g}"
            print(f"{prefix}{key}: {shown}")
    lines(report, "")
    if "eval" in report:
        lines(report["eval"], "eval.")
    if "op_profile" in report:
        print("train step ops by kind (outputs written per step, per device):")
        for row in report["op_profile"]:
            print(f"  {row['kind']}: {row['count']} ops, {_gib(row['output_bytes'])}")
    if "module_profile" in report:
        print("train step outputs by model part (written per step, per device):")
        for row in report["module_profile"]:
            print(f"  {row['part']}: {row['count']} ops, {_gib(row['output_bytes'])}")


def define_flags() -> None:
    """The command line (defined only when run as a program, so that importing this module defines no flags)."""
    config_flags.DEFINE_config_file("config", None, "Trainer config file[:variant].")
    flags.DEFINE_string("topology", None, "libtpu topology name, e.g. v5p:2x2x1, v5e:2x4, v6e:2x4.")
    flags.DEFINE_integer("per_chip_batch", None, "Examples per chip per (micro-)batch: sets config.batch_size to "
                         "this x chips x grad_accum_steps, config.eval_batch_size to this x chips; default: the "
                         "config's batch sizes.")
    flags.DEFINE_bool("eval", True, "Also compile the eval step (retrieval encoding, QA prediction) where the "
                      "config evaluates (data.val_files).")
    flags.DEFINE_bool("profile", False, "Also print the bytes the train step's ops write, by kind of op and "
                      "by model part (hdvila_jax.hlo_profile).")
    flags.DEFINE_string("json", None, "Write the report as JSON to this file.")
    flags.DEFINE_string("hlo", None, "Write the train step's optimised HLO (text) to this file.")
    cli_errors.define_debug_flag()
    flags.mark_flags_as_required(["config", "topology"])


def main(argv):
    del argv
    args = flags.FLAGS
    # A user's mistake (a topology, a batch, a config field) is one line; --debug shows its traceback.
    with cli_errors.user_errors(AotError, ConfigError, TrainConfigError, ShardingConfigError, OptimizerConfigError):
        report = compile_for_topology(args.config, args.topology, args.per_chip_batch, args.eval, args.profile,
                                      args.hlo)
    print_report(report)
    if args.json:
        storage.write_text(args.json, json.dumps(report, indent=2))
    error = fit_error(report)
    if error:
        raise cli_errors.UserError(error)


if __name__ == "__main__":
    define_flags()
    app.run(main)
