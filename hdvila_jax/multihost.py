"""Command-line flags and start-up of multi-process (several hosts) runs, shared by the entry points.

Pass --coordinator_address/--num_processes/--process_id (or set JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID) on every host.
"""
import os

import jax
from absl import flags

_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def initialize_from_flags() -> None:
    """``jax.distributed.initialize`` (gloo collectives on CPU) when a coordinator is given."""
    if _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
