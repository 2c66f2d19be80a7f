"""Several processes (one per host) as one run, through JAX's multi-controller runtime:
`maybe_initialize_distributed` joins them before any other JAX call, every process runs the
same program on the same data, and `max_over_processes` and `sync_processes` are the few
places where the processes agree outside the step (parallel.DataParallel spans the devices
of all of them).
"""

from collections.abc import Mapping
import os
import socket
import sys
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np

from depthlab import errors


def launched_as_several_processes(environ: Mapping[str, str] = os.environ) -> bool:
  """True under `srun` or `mpirun` with more than one task: JAX detects the rest from them.

  (SLURM_STEP_NUM_TASKS, not SLURM_NTASKS: a batch script itself runs as one process.)
  """
  return any(int(environ.get(name) or 1) > 1 for name in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"))


def _env_int(name: str, environ: Mapping[str, str]) -> int | None:
  return int(environ[name]) if environ.get(name) else None


def wait_for_coordinator(address: str, timeout: float) -> None:
  """Returns once something listens at `address` (host:port), else raises errors.CoordinatorUnreachableError.

  jax.distributed.initialize aborts the whole process (no Python exception) when the
  coordinator does not answer in time, so processes other than 0 look first.
  """
  host, _, port = address.rpartition(":")
  host = host.strip("[]")  # an IPv6 address comes as [::1]:port
  deadline = time.monotonic() + timeout
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=min(2.0, timeout)).close()
      return
    except OSError as e:
      if time.monotonic() > deadline:
        raise errors.CoordinatorUnreachableError(
          f"Could not reach the coordinator at {address} within {timeout:g}s ({e}). Check that "
          f"process 0 has started and runs on that host, that all processes got the same address "
          f"and port (--config.distributed.coordinator_address or $JAX_COORDINATOR_ADDRESS), and that "
          f"no firewall blocks the port; --config.distributed.initialization_timeout waits longer."
        ) from e
      time.sleep(0.5)


def maybe_initialize_distributed(config: Any, environ: Mapping[str, str] = os.environ) -> None:
  """Starts JAX's multi-controller runtime when the config or the environment asks for it.

  `config` is the config's `distributed` field. Unset fields come from $JAX_COORDINATOR_ADDRESS,
  $JAX_NUM_PROCESSES and $JAX_PROCESS_ID, else JAX detects them (Cloud TPU, SLURM, Open MPI).
  """
  address = config.coordinator_address or environ.get("JAX_COORDINATOR_ADDRESS")
  if not (config.initialize or address or launched_as_several_processes(environ)):
    return
  num_processes = config.num_processes if config.num_processes is not None else _env_int("JAX_NUM_PROCESSES", environ)
  process_id = config.process_id if config.process_id is not None else _env_int("JAX_PROCESS_ID", environ)
  timeout = config.initialization_timeout
  if address and process_id:
    wait_for_coordinator(address, timeout)
  # If some process never arrives, JAX aborts every process after the timeout with
  # "DEADLINE_EXCEEDED ... RegisterTask"; this line says what that means.
  print(
    f"jax.distributed: process {_or_detected(process_id)} of {_or_detected(num_processes)} joining "
    f"{address or 'the detected coordinator'}; waiting up to {timeout}s for all processes (a "
    f"DEADLINE_EXCEEDED abort means some did not start or got another address or process count).",
    file=sys.stderr,
    flush=True,
  )
  jax.distributed.initialize(
    coordinator_address=address, num_processes=num_processes, process_id=process_id, initialization_timeout=timeout
  )
  # A first collective while the processes are still in step: CPU collectives (gloo) set up
  # their connections at the first one and give up if a process is 30 s late, as it is when
  # it still compiles the train step; later collectives wait as long as it takes.
  sync_processes("joined")


def _or_detected(value: int | None) -> str:
  return "(detected)" if value is None else str(value)


def max_over_processes(value: int) -> int:
  """The largest `value` of all processes; every process must call it at the same point."""
  if jax.process_count() == 1:
    return value
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def sync_processes(name: str) -> None:
  """Waits until every process gets here (a no-op in a single-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
