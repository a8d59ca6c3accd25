"""Start-up of multi-process (several hosts) runs and the flags for it, shared by the entry points.

On a Cloud TPU VM slice, under SLURM and under Open MPI, ``jax.distributed.initialize()`` finds the
coordinator, the process count and this process's index itself. Elsewhere (a plain cluster of GPU
hosts, several CPU processes in tests) pass --coordinator_address/--num_processes/--process_id (or
set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every host.
"""
import os

import jax
from absl import flags, logging

_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
NOTHING_DETECTED = "coordinator_address should be defined"  # jax's error when no cluster is found


def initialize_from_flags() -> str:
    """Join the run's processes; returns how: "explicit" (a coordinator was given), "auto-detected"
    (TPU slice, SLURM, Open MPI) or "single process" (no cluster found). Collectives between CPU
    devices of several processes go over gloo; accelerators use their own."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # the CPU client's; accelerators keep theirs
    if _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        return "explicit"
    try:
        jax.distributed.initialize()
    except ValueError as e:
        if NOTHING_DETECTED not in str(e):
            raise
        logging.info("no cluster detected (TPU slice, SLURM, Open MPI): a single process")
        return "single process"
    return "auto-detected"
