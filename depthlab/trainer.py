"""The Trainer: one run on its devices, built once from a config and the devices, complete.

It owns what a run keeps on the devices (the train state, the training split, the keys, the
epochs' example orders), the compiled dispatch of n steps and the evaluator, and offers what
train.py's loop, eval.py and the benchmarks need:

    trainer = Trainer(config, data_parallel)  # a fresh state on the devices
    record = trainer.restore(ckpts)  # or the newest readable checkpoint's (None: none)
    metrics = trainer.train(10)  # 10 steps as one dispatch; metrics still on the devices
    trainer.evaluate()  # loss and error over the evaluation splits
    trainer.save(ckpts, record)  # one copy of the state, checked finite
"""

import functools
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from depthlab import batches, checkpoints, errors, evaluation, input_pipeline, parallel, run_files, validation
from depthlab.state import create_train_state, run_keys, step_count
from depthlab.steps import data_keys, steps_on_device
import nets


def use_compilation_cache(cache_dir: str) -> None:
  """Keeps compiled steps in JAX's persistent cache at `cache_dir`, so that the next start of
  the same run (a resume, a repeat) loads them instead of compiling again; "" turns it off.
  $JAX_COMPILATION_CACHE_DIR, where set, wins over `cache_dir`."""
  if not cache_dir:
    jax.config.update("jax_enable_compilation_cache", False)
  elif not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cache_dir))


def training_devices(config: ml_collections.ConfigDict, workdir: str | None = None) -> parallel.DataParallel:
  """The devices a run trains on (config.parallelism, config.num_devices), checked against the
  devices there are and the batch (a ConfigError), before anything is loaded or written. A run
  that resumes in `workdir` keeps its batch size, which the message says."""
  resuming = bool(workdir) and not config.restart and checkpoints.has_checkpoints(workdir)
  problems = validation.device_problems(config, jax.device_count(), jax.process_count(), resuming)
  if problems:
    raise errors.ConfigError(problems)
  return parallel.data_parallel(config.parallelism, config.num_devices)


class EpochOrders:
  """The example orders of the epochs a dispatch can reach, on the devices, for every seed.

  Each epoch's order (a permutation of all examples, a sort) is computed when the loop
  enters the epoch, not in every step, on the devices that run the step: the batches
  are those batches.global_batch_indices defines.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    data_parallel: parallel.DataParallel,
    data_key: jax.Array,
    num_examples: int,
  ):
    self.steps_per_epoch = batches.steps_per_epoch(num_examples, config.batch_size)
    # A dispatch starting in epoch e reaches e + 1 (or further when it is longer than an epoch).
    num_epochs = (config.steps_per_dispatch - 1) // self.steps_per_epoch + 2
    orders = lambda key_data, epoch: batches.epoch_orders(data_keys(key_data)[0], epoch, num_epochs, num_examples)
    self._orders = jax.jit(jax.vmap(orders, in_axes=(0, None)) if config.num_seeds > 1 else orders)
    self._key_data, self._data_parallel = jax.random.key_data(data_key), data_parallel
    self._epoch, self._replicated = None, None

  def for_dispatch_after(self, step: int) -> jax.Array:
    """The orders (replicated) of a dispatch whose first step follows `step` completed ones."""
    epoch = step // self.steps_per_epoch
    if epoch != self._epoch:
      self._epoch, self._replicated = epoch, self._data_parallel.replicate(self._orders(self._key_data, epoch))
    return self._replicated


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """The config's net (nets/), with batch norm over all devices' batches where config.cross_replica_bn."""
  return nets.create(
    config.model.name,
    num_classes=num_classes,
    dtype=jnp.dtype(config.dtype),
    axis_name=parallel.AXIS if config.cross_replica_bn else None,
    conv_weight_grad=config.conv_weight_grad,
    **{k: v for k, v in config.model.items() if k != "name"},
  )


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """True if no float leaf of `tree` holds a NaN or an infinity."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves))


class Trainer:
  """A run's model, train state, data and compiled steps on the devices of `data_parallel`.

  `dataset`: instead of config.dataset's (the benchmark's random images). The state starts
  initialised from the config's seed; `restore` replaces it with a checkpoint's.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    data_parallel: parallel.DataParallel,
    dataset: input_pipeline.Dataset | None = None,
  ):
    self.config = config
    self.data_parallel = data_parallel
    self.dataset = dataset or input_pipeline.load_dataset(config.dataset)
    self.model = create_model(config, self.dataset.num_classes)
    self.init_key, self.data_key = run_keys(config)  # one per seed with num_seeds > 1
    image_shape = batches.input_shape(config.dataset, self.dataset.train.images.shape[1:])
    initial = create_train_state(config, self.model, self.init_key, image_shape)
    self.num_params = nets.count_params(initial.params) // config.num_seeds  # of one net
    self.state = data_parallel.replicate(initial)
    self.step = step_count(initial)
    self._template = jax.device_get(initial)  # the structure a checkpoint restores into
    self._dispatches = {}
    self._evaluators = {}

  def restore(
    self, ckpts: checkpoints.Checkpoints, step: int | None = None, check=lambda record: None, set_aside: bool = True
  ) -> dict[str, Any] | None:
    """Replaces the state with checkpoint `step`'s (default: the newest that reads back intact)
    and returns its record; None, with the state left as it was, where none does. `check` and
    `set_aside`: as Checkpoints.restore's."""
    restored = ckpts.restore(self._template, step, check=check, set_aside=set_aside)
    if restored is None:
      return None
    _, state, record = restored
    self.state, self.step = self.data_parallel.replicate(state), step_count(state)
    return record

  @functools.cached_property
  def training_data(self) -> tuple[dict[str, jax.Array], jax.Array, EpochOrders]:
    """The training split and mean image, the data key and the epochs' orders: put on the devices
    when first asked for, at the first `train` (an evaluation needs none of them)."""
    split = self.dataset.train
    data = self.data_parallel.replicate({"image": split.images, "label": split.labels, "mean": self.dataset.mean_image})
    # As raw key data: pmap refuses a typed key array that spans several processes.
    key_data = self.data_parallel.replicate(jax.random.key_data(self.data_key))
    return data, key_data, EpochOrders(self.config, self.data_parallel, self.data_key, len(split))

  def train(self, steps: int) -> dict[str, jax.Array]:
    """Runs `steps` train steps of every seed as one dispatch (JAX compiles each number of steps
    at its first dispatch) and returns their metrics, still on the devices: [steps] or
    [steps, seeds] per key. The state's old buffers are donated."""
    if steps not in self._dispatches:
      self._dispatches[steps] = self.data_parallel.parallelize(
        steps_on_device(self.config, self.data_parallel.count, steps), donate_argnums=(0,)
      )
    data, key_data, orders = self.training_data
    self.state, metrics = self._dispatches[steps](self.state, data, key_data, orders.for_dispatch_after(self.step))
    self.step += steps
    return metrics

  def evaluate(self, include_train: bool = False) -> dict[str, float]:
    """Loss and error over each evaluation split (and the training split) of the state now:
    see evaluation.make_evaluator. Each split goes to the devices at its first evaluation."""
    splits = dict(self.dataset.eval_splits, **({"train": self.dataset.train} if include_train else {}))
    if tuple(splits) not in self._evaluators:
      self._evaluators[tuple(splits)] = evaluation.make_evaluator(
        self.data_parallel, splits, self.dataset.mean_image, self.config
      )
    return self._evaluators[tuple(splits)](self.state)

  def save(self, ckpts: checkpoints.Checkpoints, record: dict[str, Any]) -> None:
    """Saves one copy of the state as the checkpoint of this step (see Checkpoints.save); a
    state that is no longer finite is never saved: the run has diverged."""
    copy = self.data_parallel.single_copy(self.state)
    if not all_finite(copy):  # the loss of a step is finite even when its update was not
      raise FloatingPointError(
        f"Training diverged: non-finite parameters after step {self.step}; the "
        "last checkpoint before it is kept. Lower --config.learning_rate."
      )
    ckpts.save(self.step, copy, record)


def evaluate_checkpoint(
  workdir: str, step: int | None = None, include_train: bool = False, num_devices: int = 0, data_dir: str | None = None
) -> dict[str, Any]:
  """Loss and error of a run's checkpoint (default: the newest intact one) on the test split
  (and the train split), on this machine's devices, any number of them; also written to
  <workdir>/eval_<step>.json, the one file it writes. The run is left as it is."""
  config = run_files.load_run_config(workdir)
  if not checkpoints.has_checkpoints(workdir):  # before orbax, which would create the folder
    raise FileNotFoundError(
      f"{workdir} holds no checkpoint (nothing in {os.path.join(workdir, 'checkpoints')}): "
      "train it first, or give the workdir of a run that has saved one."
    )
  if data_dir:
    config.dataset.data_dir = data_dir
  use_compilation_cache(config.compilation_cache_dir)
  if num_devices > jax.device_count():
    raise errors.ConfigError([f"--num_devices={num_devices}: only {jax.device_count()} devices here; 0 uses all."])
  trainer = Trainer(config, parallel.data_parallel(config.parallelism, num_devices))
  ckpts = checkpoints.Checkpoints(workdir)
  try:
    record = trainer.restore(ckpts, step, set_aside=False)  # an evaluator leaves the run as it is
  finally:
    ckpts.close()
  if record is None:
    raise errors.CorruptCheckpointError(
      f"No checkpoint in {ckpts.directory} reads back intact (each is reported above); nothing was evaluated."
    )
  results = {"step": trainer.step, "devices": trainer.data_parallel.count, **trainer.evaluate(include_train)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_{trainer.step}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
