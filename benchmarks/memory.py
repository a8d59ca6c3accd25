"""Per-device memory of the paper-config train steps under FSDP, from XLA's compiled memory
analysis (compiled on forced CPU devices, never run), per rematerialisation policy.

    python -m benchmarks.memory [--devices=8,64] [--per_device_batch=8] [--stages=1,2]
        [--remat=none,stage,block,block_dots] [--scheduler=memory,concurrency] [--json=out.json]
    python -m benchmarks.memory --quick      # CI-sized: tiny config on 8 devices

Each device count runs in its own subprocess (the forced device count is fixed when jax
starts). The mesh is all-FSDP (``data=1, fsdp=N``); the global batch is
``per_device_batch * N`` examples of 2 clips at 640x1024, bf16 compute, float32 parameters
and Adam moments. ``--remat``: "none" or a ``model.remat_policy`` (with ``model.remat=True``).
Peak = arguments + outputs - aliased (donated) + temporaries.

``--scheduler``: XLA:CPU's default instruction scheduler is concurrency-optimised: it orders
independent work for parallelism at the cost of memory, and with rematerialisation it keeps
the recomputed activations alive together (so remat *raised* the peak). GPU and TPU schedule
for memory, so "memory" (the CPU's memory-optimised scheduler) is the default here. XLA:CPU
also runs bf16 matmuls and convolutions in float32 (with float32 copies of their operands),
so these peaks overstate a bf16 device's; they rank the policies, a GPU run
(``benchmarks/gpu.sh``) gives the real numbers.
"""
from __future__ import annotations

from absl import app, flags

from benchmarks.reporting import emit_row, print_markdown_table, report, run_on_forced_devices

_DEVICES = flags.DEFINE_list("devices", ["8", "64"], "Device counts (FSDP sizes).")
_PER_DEVICE_BATCH = flags.DEFINE_integer("per_device_batch", 8, "Examples per device.")
_STAGES = flags.DEFINE_list("stages", ["1", "2"], "Stages to compile.")
_REMAT = flags.DEFINE_list("remat", ["none", "stage", "block"], "'none' or model.remat_policy values.")
_SCHEDULER = flags.DEFINE_list("scheduler", ["memory"], "XLA:CPU schedulers: memory, concurrency (its default).")
_QUICK = flags.DEFINE_bool("quick", False, "Tiny config, 8 devices, stage 1, no remat and 'stage' (for CI).")
_JSON = flags.DEFINE_string("json", None, "Write the rows as JSON to this file.")
_WORKER = flags.DEFINE_bool("worker", False, "Internal: compile in this process and print JSON rows.")

GIB = 1024**3
SCHEDULERS = dict(memory="CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", concurrency="CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED")


def trainer_config(stage: int, variant: str, devices: int, per_device_batch: int, remat: str):
    """The stage's trainer config, all-FSDP over ``devices``, with the given batch and remat policy
    ("none" or a ``model.remat_policy``)."""
    from configs import stage1, stage2
    config = (stage1 if stage == 1 else stage2).get_config(variant)
    config.mesh.data, config.mesh.fsdp = 1, devices
    config.batch_size = config.eval_batch_size = per_device_batch * devices
    config.grad_accum_steps = 1
    config.model.remat = remat != "none"
    if remat != "none":
        config.model.remat_policy = remat
    return config


def compiled_memory(config, scheduler: str) -> dict:
    """Per-device bytes of the compiled train step of ``config`` under XLA:CPU's ``scheduler``."""
    from hdvila_jax.train.step_builder import build_step, memory_per_device
    built = build_step(config)
    lowered = built.lower()
    return memory_per_device(lowered.compile(compiler_options=dict(xla_cpu_scheduler_type=SCHEDULERS[scheduler])))


def worker(devices: int, stages: list[int], remats: list[str], schedulers: list[str], per_device_batch: int,
           variant: str) -> None:
    for stage in stages:
        for remat in remats:
            for scheduler in schedulers:
                config = trainer_config(stage, variant, devices, per_device_batch, remat)
                row = dict(stage=stage, devices=devices, per_device_batch=per_device_batch, remat=remat,
                           scheduler=scheduler, variant=variant, **compiled_memory(config, scheduler))
                emit_row(row)


def print_table(rows: list[dict]) -> None:
    def fits(peak: int) -> str:
        return " / ".join("yes" if peak <= gb * 1e9 else "no" for gb in (16, 40, 80))

    print_markdown_table(
        ["stage", "devices (FSDP)", "examples/device", "remat", "XLA:CPU scheduler", "arguments GiB", "outputs GiB",
         "aliased GiB", "temporaries GiB", "peak GiB", "fits 16 / 40 / 80 GB"],
        [[r["stage"], r["devices"], r["per_device_batch"], r["remat"], r["scheduler"],
          *(f"{r[k] / GIB:.2f}" for k in ("arguments", "outputs", "aliased", "temporaries", "peak")), fits(r["peak"])]
         for r in rows])


def main(argv):
    del argv
    variant = "tiny" if _QUICK.value else "paper"
    stages = [1] if _QUICK.value else [int(s) for s in _STAGES.value]
    remats = ["none", "stage"] if _QUICK.value else _REMAT.value
    schedulers = ["memory"] if _QUICK.value else _SCHEDULER.value
    per_device_batch = 1 if _QUICK.value else _PER_DEVICE_BATCH.value
    if _WORKER.value:
        worker(int(_DEVICES.value[0]), stages, remats, schedulers, per_device_batch, variant)
        return
    devices = [8] if _QUICK.value else [int(d) for d in _DEVICES.value]
    args = [f"--stages={','.join(map(str, stages))}", f"--remat={','.join(remats)}",
            f"--scheduler={','.join(schedulers)}", f"--per_device_batch={per_device_batch}"]
    args += ["--quick"] if _QUICK.value else []
    rows = [row for d in devices
            for row in run_on_forced_devices(module="benchmarks.memory", devices=d,
                                             args=["--worker", f"--devices={d}", *args])]
    report(rows, print_table, _JSON.value)


if __name__ == "__main__":
    app.run(main)
