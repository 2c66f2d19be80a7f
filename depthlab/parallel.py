"""Where the devices come in: running one per-device function on all devices of a run.

The train and eval steps are written once, for one device, with collectives over the
axis `AXIS`. A `DataParallel` runs such a function on every device: `PmapParallel` with
`jax.pmap`, `ShardMapParallel` with `jax.jit(jax.shard_map(...))` over a one-axis mesh (one
implementation each of the one interface; `data_parallel(mode)` picks one). Both give the
function the same per-device shapes, so the step does not know which one runs it.

Arguments are either replicated (the train state, the dataset, keys) or sharded along
a leading axis of one entry per device (the eval split). `DataParallel` puts both kinds on
the devices and reads results back, so the loop never branches on the mode.

With several processes (depthlab/distributed.py), `DataParallel` spans the devices of all of
them, and each process puts arrays on its own devices only.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = "batch"


class DataParallel:
  """The devices a run trains on, and how a per-device function runs on them: the interface
  that PmapParallel and ShardMapParallel implement (`data_parallel` picks one by name)."""

  mode = ""

  def __init__(self, num_devices: int = 0):
    available = jax.devices()
    self.devices = available[:num_devices] if num_devices else available  # validation checked num_devices
    self.mesh = Mesh(np.array(self.devices), (AXIS,))
    self._restricted = bool(num_devices)

  @property
  def count(self) -> int:
    """Number of devices over all processes."""
    return len(self.devices)

  @property
  def local_devices(self) -> list[jax.Device]:
    return [d for d in self.devices if d.process_index == jax.process_index()]

  def _global_array(self, shape: tuple[int, ...], spec: P, buffers: list[jax.Array]) -> jax.Array:
    return jax.make_array_from_single_device_arrays(shape, NamedSharding(self.mesh, spec), buffers)

  def shard(self, tree: Any) -> Any:
    """Puts entry i of every leaf's leading axis (of size `count`) on device i."""

    def put(x):
      x = np.asarray(x)
      assert x.shape[0] == self.count, (x.shape, self.count)
      buffers = [jax.device_put(x[i : i + 1], d) for d in self.local_devices for i in [self.devices.index(d)]]
      return self._global_array(x.shape, P(AXIS), buffers)

    return jax.tree_util.tree_map(put, tree)

  def replicate(self, tree: Any) -> Any:
    """Puts a copy of every leaf on every device."""
    raise NotImplementedError

  def single_copy(self, tree: Any) -> Any:
    """One copy of a replicated tree, without pmap's device axis, in new buffers.

    What a checkpoint holds: it restores on any number of devices, and the train step
    can donate the state it came from while the copy is being written.
    """
    raise NotImplementedError

  def to_host(self, tree: Any) -> Any:
    """Reads a replicated result back as numpy, from this process's first device."""
    raise NotImplementedError

  def parallelize(
    self, fn: Callable[..., Any], sharded_argnums: Sequence[int] = (), donate_argnums: Sequence[int] = ()
  ) -> Callable[..., Any]:
    """Runs per-device `fn` on every device; its results must be replicated (use collectives).
    Arguments in `sharded_argnums` are `shard`ed, the others `replicate`d."""
    raise NotImplementedError


class PmapParallel(DataParallel):
  """jax.pmap: a replicated array has a leading axis of one entry per device."""

  mode = "pmap"

  def replicate(self, tree: Any) -> Any:
    def put(x):
      x = np.asarray(x) if not isinstance(x, jax.Array) else x
      buffers = [jax.device_put(x[None], d) for d in self.local_devices]
      return self._global_array((self.count, *x.shape), P(AXIS), buffers)

    return jax.tree_util.tree_map(put, tree)

  def single_copy(self, tree: Any) -> Any:
    first = lambda t: jax.tree_util.tree_map(lambda x: x[0], t)
    return jax.jit(first, out_shardings=NamedSharding(self.mesh, P()))(tree)

  def to_host(self, tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)

  def parallelize(
    self, fn: Callable[..., Any], sharded_argnums: Sequence[int] = (), donate_argnums: Sequence[int] = ()
  ) -> Callable[..., Any]:
    mapped = jax.pmap(
      fn, axis_name=AXIS, devices=self.devices if self._restricted else None, donate_argnums=tuple(donate_argnums)
    )
    if jax.process_count() == 1:
      return mapped
    # With several processes pmap returns this process's part only; made global again
    # (no copy), its results go to the next step, single_copy and checkpoints unchanged.
    return lambda *args: multihost_utils.host_local_array_to_global_array(mapped(*args), self.mesh, P(AXIS))


class ShardMapParallel(DataParallel):
  """jax.jit of jax.shard_map over a one-axis mesh: a replicated array has its own shape."""

  mode = "shard_map"

  def replicate(self, tree: Any) -> Any:
    def put(x):
      x = np.asarray(x) if not isinstance(x, jax.Array) else x
      return self._global_array(x.shape, P(), [jax.device_put(x, d) for d in self.local_devices])

    return jax.tree_util.tree_map(put, tree)

  def single_copy(self, tree: Any) -> Any:
    copy = lambda t: jax.tree_util.tree_map(lambda x: x + 0, t)  # + 0: a new buffer
    return jax.jit(copy, out_shardings=NamedSharding(self.mesh, P()))(tree)

  def to_host(self, tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

  def parallelize(
    self, fn: Callable[..., Any], sharded_argnums: Sequence[int] = (), donate_argnums: Sequence[int] = ()
  ) -> Callable[..., Any]:
    def per_device(*args):
      # A sharded argument arrives as this device's [1, ...] block; pmap would drop that axis.
      args = [jax.tree_util.tree_map(lambda x: x[0], a) if i in sharded_argnums else a for i, a in enumerate(args)]
      return fn(*args)

    def wrapped(*args):
      in_specs = tuple(P(AXIS) if i in sharded_argnums else P() for i in range(len(args)))
      # check_vma=False keeps pmap's semantics: the gradient of a replicated parameter is
      # this device's own gradient, and the step averages it with lax.pmean. With the
      # check on, shard_map would already sum it over devices.
      return jax.shard_map(per_device, mesh=self.mesh, in_specs=in_specs, out_specs=P(), check_vma=False)(*args)

    return jax.jit(wrapped, donate_argnums=tuple(donate_argnums))


MODES = {"pmap": PmapParallel, "shard_map": ShardMapParallel}


def data_parallel(mode: str = "pmap", num_devices: int = 0) -> DataParallel:
  """The devices of a run (0: all of them), run by `mode` (config.parallelism, a key of MODES)."""
  return MODES[mode](num_devices)
