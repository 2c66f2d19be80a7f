"""The one way a run is put together before its first step, shared by train.py, eval.py and
the benchmark: devices -> dataset -> model -> keys -> train state (or a checkpoint's) ->
the state and the training data on the devices (`set_up`)."""

from collections.abc import Callable
import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from depthlab import checkpoints, input_pipeline, parallel, validation
from depthlab.state import TrainState, create_model, create_train_state, run_keys, step_count
from depthlab.steps import EpochOrders, steps_on_device
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
    raise validation.ConfigError(problems)
  return parallel.DataParallel(config.parallelism, config.num_devices)


@dataclasses.dataclass
class RunSetup:
  """A run ready for its first step: what `set_up` made, the state and data on the devices."""

  config: ml_collections.ConfigDict
  data_parallel: parallel.DataParallel
  dataset: input_pipeline.Dataset
  model: nn.Module
  init_key: jax.Array  # of initialisation (one per seed with num_seeds > 1)
  data_key: jax.Array  # of data order, augmentation and dropout (one per seed)
  state: TrainState  # replicated on the devices
  first_step: int  # the state's step: 0, or the restored checkpoint's
  num_params: int  # of one net
  record: dict[str, Any]  # what the restored checkpoint was saved with; {} for a fresh state
  train_data: dict[str, jax.Array] | None = None  # the training split and mean image, replicated
  key_data: jax.Array | None = None  # the data key as raw key data, replicated
  orders: EpochOrders | None = None  # the epochs' example orders on the devices

  def train_dispatch(self, steps: int) -> Callable[..., tuple[TrainState, dict]]:
    """`steps` train steps on every device as one dispatch, (state, train_data, key_data,
    orders) -> (state, metrics); the state's buffers are donated. JAX compiles it on its first call."""
    return self.data_parallel.parallelize(
      steps_on_device(self.config, self.data_parallel.count, steps), donate_argnums=(0,)
    )


def fresh_start(state: TrainState) -> tuple[TrainState, dict[str, Any]]:
  """`set_up`'s default `restore`: the initialised state, no checkpoint record."""
  return state, {}


def set_up(
  config: ml_collections.ConfigDict,
  data_parallel: parallel.DataParallel,
  dataset: input_pipeline.Dataset | None = None,
  restore: Callable[[TrainState], tuple[TrainState, dict[str, Any]]] = fresh_start,
  for_training: bool = True,
) -> RunSetup:
  """Loads the dataset, builds the model, draws the keys, initialises the train state and
  puts it on the devices of `data_parallel`.

  `dataset`: instead of config.dataset's (the benchmark's random images). `restore`: from
  the initialised state (a template of host arrays) to the state to start from and its
  checkpoint's record, e.g. a checkpoint's. `for_training`: also put the training split,
  the data key and the epochs' orders on the devices (evaluating needs the state only).
  """
  dataset = dataset or input_pipeline.load_dataset(config.dataset)
  model = create_model(config, dataset.num_classes)
  init_key, data_key = run_keys(config)
  state, record = restore(
    create_train_state(
      config, model, init_key, input_pipeline.input_shape(config.dataset, dataset.train.images.shape[1:])
    )
  )
  run = RunSetup(
    config,
    data_parallel,
    dataset,
    model,
    init_key,
    data_key,
    data_parallel.replicate(state),
    first_step=step_count(state),
    num_params=nets.count_params(state.params) // config.num_seeds,
    record=record,
  )
  if for_training:
    put_training_data(run)
  return run


def put_training_data(run: RunSetup) -> None:
  """Puts the training split, the data key and the epochs' orders on the run's devices."""
  run.train_data = run.data_parallel.replicate(
    {"image": run.dataset.train.images, "label": run.dataset.train.labels, "mean": run.dataset.mean_image}
  )
  # As raw key data: pmap refuses a typed key array that spans several processes.
  run.key_data = run.data_parallel.replicate(jax.random.key_data(run.data_key))
  run.orders = EpochOrders(run.config, run.data_parallel, run.data_key, len(run.dataset.train))
