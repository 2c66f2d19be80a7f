"""Where the devices come in: multi-host start-up, and running one per-device function on all devices.

The train and eval steps are written once, for one device, with collectives over the
axis `AXIS`. `Replicas.parallelize` runs such a function on every device, either with
`jax.pmap` or with `jax.jit(jax.shard_map(...))` over a one-axis mesh; both see the
same per-device shapes, so the step does not know which one runs it.

Arguments are either replicated (the train state, the dataset, keys) or sharded along
a leading axis of one entry per device (the eval split). `Replicas` puts both kinds on
the devices and reads results back, so train.py never branches on the mode.
"""

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "batch"
MODES = ("pmap", "shard_map")


def maybe_initialize_distributed(config: Any) -> None:
  """Starts JAX's multi-controller runtime when the config or the environment asks for it."""
  if not (config.initialize or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return
  jax.distributed.initialize(
      coordinator_address=config.coordinator_address,
      num_processes=config.num_processes,
      process_id=config.process_id)


class Replicas:
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
      buffers = [jax.device_put(x[i:i + 1], d) for d in self.local_devices for i in [self._global_index(d)]]
      return jax.make_array_from_single_device_arrays(x.shape, NamedSharding(self.mesh, P(AXIS)), buffers)
    return jax.tree_util.tree_map(put, tree)

  def single_copy(self, tree: Any) -> Any:
    """One copy of a replicated tree, without pmap's device axis, in new buffers.

    What a checkpoint holds: it restores on any number of devices, and the train step
    can donate the state it came from while the copy is being written.
    """
    take = (lambda x: x[0]) if self.mode == "pmap" else (lambda x: x + 0)  # + 0: a new buffer
    return jax.jit(lambda t: jax.tree_util.tree_map(take, t),
                   out_shardings=NamedSharding(self.mesh, P()))(tree)

  def to_host(self, tree: Any) -> Any:
    """Reads a replicated result back as numpy, from this process's first device."""
    def get(x):
      local = np.asarray(x.addressable_shards[0].data)
      return local[0] if self.mode == "pmap" else local
    return jax.tree_util.tree_map(get, tree)

  def parallelize(self, fn: Callable[..., Any], sharded_argnums: Sequence[int] = (),
                  donate_argnums: Sequence[int] = ()) -> Callable[..., Any]:
    """Runs per-device `fn` on every device; its results must be replicated (use collectives)."""
    if self.mode == "pmap":
      return jax.pmap(fn, axis_name=AXIS, devices=self.devices if self._restricted else None,
                      donate_argnums=tuple(donate_argnums))

    def per_device(*args):
      # A sharded argument arrives as this device's [1, ...] block; pmap would drop that axis.
      args = [jax.tree_util.tree_map(lambda x: x[0], a) if i in sharded_argnums else a
              for i, a in enumerate(args)]
      return fn(*args)

    def wrapped(*args):
      in_specs = tuple(P(AXIS) if i in sharded_argnums else P() for i in range(len(args)))
      # check_vma=False keeps pmap's semantics: the gradient of a replicated parameter is
      # this device's own gradient, and the step averages it with lax.pmean. With the
      # check on, shard_map would already sum it over devices.
      mapped = jax.shard_map(per_device, mesh=self.mesh, in_specs=in_specs, out_specs=P(),
                             check_vma=False)
      return mapped(*args)

    return jax.jit(wrapped, donate_argnums=tuple(donate_argnums))
