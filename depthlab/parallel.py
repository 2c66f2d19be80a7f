"""Where the devices come in: multi-host start-up, and running one per-device function on all devices.

The train and eval steps are written once, for one device, with collectives over the
axis `AXIS`. `DataParallel.parallelize` runs such a function on every device, either with
`jax.pmap` or with `jax.jit(jax.shard_map(...))` over a one-axis mesh; both see the
same per-device shapes, so the step does not know which one runs it.

Arguments are either replicated (the train state, the dataset, keys) or sharded along
a leading axis of one entry per device (the eval split). `DataParallel` puts both kinds on
the devices and reads results back, so the loop never branches on the mode.

Several processes (one per host) make one run through JAX's multi-controller runtime:
`maybe_initialize_distributed` joins them, every process runs the same program on the
same data, `DataParallel` spans the devices of all of them, and each process puts arrays
on its own devices only. `max_over_processes` and `sync_processes` are the few places
where the processes agree outside the step.
"""

from collections.abc import Callable, Mapping, Sequence
import os
import socket
import sys
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = "batch"
MODES = ("pmap", "shard_map")


class CoordinatorUnreachableError(RuntimeError):
  """A process of a multi-process run could not reach process 0's coordinator in time."""


def launched_as_several_processes(environ: Mapping[str, str] = os.environ) -> bool:
  """True under `srun` or `mpirun` with more than one task: JAX detects the rest from them.

  (SLURM_STEP_NUM_TASKS, not SLURM_NTASKS: a batch script itself runs as one process.)
  """
  return any(int(environ.get(name) or 1) > 1 for name in ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE"))


def _env_int(name: str, environ: Mapping[str, str]) -> int | None:
  return int(environ[name]) if environ.get(name) else None


def wait_for_coordinator(address: str, timeout: float) -> None:
  """Returns once something listens at `address` (host:port), else raises CoordinatorUnreachableError.

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
        raise CoordinatorUnreachableError(
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


class DataParallel:
  """The devices a run trains on, and how a per-device function runs on them."""

  def __init__(self, mode: str = "pmap", num_devices: int = 0):
    if mode not in MODES:
      raise ValueError(f"parallelism must be one of {MODES}; got {mode!r}.")
    if num_devices and jax.process_count() > 1:
      raise ValueError("num_devices can only restrict the devices of a single-process run; leave it at 0.")
    available = jax.devices()
    if num_devices > len(available):
      raise ValueError(f"num_devices={num_devices} but only {len(available)} devices are available.")
    self.mode = mode
    self.devices = available[:num_devices] if num_devices else available
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self._restricted = bool(num_devices)

  @property
  def count(self) -> int:
    """Number of devices over all processes."""
    return len(self.devices)

  @property
  def local_devices(self) -> list[jax.Device]:
    return [d for d in self.devices if d.process_index == jax.process_index()]

  def _global_index(self, device: jax.Device) -> int:
    return self.devices.index(device)

  def replicate(self, tree: Any) -> Any:
    """Puts a copy of every leaf on every device."""

    def put(x):
      x = np.asarray(x) if not isinstance(x, jax.Array) else x
      if self.mode == "pmap":  # pmap wants one entry per device along a new leading axis
        shape, spec, shard = (self.count,) + x.shape, P(AXIS), x[None]
      else:
        shape, spec, shard = x.shape, P(), x
      buffers = [jax.device_put(shard, d) for d in self.local_devices]
      return jax.make_array_from_single_device_arrays(shape, NamedSharding(self.mesh, spec), buffers)

    return jax.tree_util.tree_map(put, tree)

  def shard(self, tree: Any) -> Any:
    """Puts entry i of every leaf's leading axis (of size `count`) on device i."""

    def put(x):
      x = np.asarray(x)
      if x.shape[0] != self.count:
        raise ValueError(f"leading axis {x.shape[0]} != device count {self.count}")
      buffers = [jax.device_put(x[i : i + 1], d) for d in self.local_devices for i in [self._global_index(d)]]
      return jax.make_array_from_single_device_arrays(x.shape, NamedSharding(self.mesh, P(AXIS)), buffers)

    return jax.tree_util.tree_map(put, tree)

  def single_copy(self, tree: Any) -> Any:
    """One copy of a replicated tree, without pmap's device axis, in new buffers.

    What a checkpoint holds: it restores on any number of devices, and the train step
    can donate the state it came from while the copy is being written.
    """
    take = (lambda x: x[0]) if self.mode == "pmap" else (lambda x: x + 0)  # + 0: a new buffer
    return jax.jit(lambda t: jax.tree_util.tree_map(take, t), out_shardings=NamedSharding(self.mesh, P()))(tree)

  def to_host(self, tree: Any) -> Any:
    """Reads a replicated result back as numpy, from this process's first device."""

    def get(x):
      local = np.asarray(x.addressable_shards[0].data)
      return local[0] if self.mode == "pmap" else local

    return jax.tree_util.tree_map(get, tree)

  def parallelize(
    self, fn: Callable[..., Any], sharded_argnums: Sequence[int] = (), donate_argnums: Sequence[int] = ()
  ) -> Callable[..., Any]:
    """Runs per-device `fn` on every device; its results must be replicated (use collectives)."""
    if self.mode == "pmap":
      mapped = jax.pmap(
        fn, axis_name=AXIS, devices=self.devices if self._restricted else None, donate_argnums=tuple(donate_argnums)
      )
      if jax.process_count() == 1:
        return mapped
      # With several processes pmap returns this process's part only; made global again
      # (no copy), its results go to the next step, single_copy and checkpoints unchanged.
      return lambda *args: multihost_utils.host_local_array_to_global_array(mapped(*args), self.mesh, P(AXIS))

    def per_device(*args):
      # A sharded argument arrives as this device's [1, ...] block; pmap would drop that axis.
      args = [jax.tree_util.tree_map(lambda x: x[0], a) if i in sharded_argnums else a for i, a in enumerate(args)]
      return fn(*args)

    def wrapped(*args):
      in_specs = tuple(P(AXIS) if i in sharded_argnums else P() for i in range(len(args)))
      # check_vma=False keeps pmap's semantics: the gradient of a replicated parameter is
      # this device's own gradient, and the step averages it with lax.pmean. With the
      # check on, shard_map would already sum it over devices.
      mapped = jax.shard_map(per_device, mesh=self.mesh, in_specs=in_specs, out_specs=P(), check_vma=False)
      return mapped(*args)

    return jax.jit(wrapped, donate_argnums=tuple(donate_argnums))
