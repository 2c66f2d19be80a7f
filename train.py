"""Trains a network from nets/ on CIFAR-10 as a config from configs/ describes.

    python train.py --config=configs/resnet56.py
    python train.py --config=configs/plain56.py --config.total_steps=2000 --workdir=runs/plain56

The step is written once for one device (`train_step`) and run on all devices by
parallel.Replicas (pmap or jit + shard_map). The training split lives on every device
as uint8; each step gathers, augments and normalises its own slice of the global batch
on the device, so the host only dispatches.
"""

import functools
import json
import math
import os
import shutil
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from flax.training import train_state
from ml_collections import config_flags

from depthlab import checkpoints
from depthlab import input_pipeline
import nets
from depthlab import parallel
from nets import cpu_conv
from depthlab import validation
from depthlab import writers

AXIS = parallel.AXIS

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS, argv: list[str] | None = None) -> None:
  """train.py's command line (defined on demand, so that eval.py can import this module).

  `argv` (the whole command line) replaces sys.argv as the source of config overrides.
  """
  config_flags.DEFINE_config_file("config", None, "A config file from configs/, e.g. configs/resnet56.py.",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_string("workdir", None, "Where the run writes (config.json, metrics.jsonl, checkpoints, "
                      "wandb). Default: runs/<experiment>/<run name>.", flag_values=flag_values)
  flags.DEFINE_bool("debug", False, "Show the Python traceback of a config or storage error too.",
                    flag_values=flag_values)
  flags.mark_flags_as_required(["config"], flag_values=flag_values)


# What ml_collections and absl raise for a bad --config or --config.<field> (unknown field:
# KeyError; missing config file: OSError; a value of the wrong type: flags.Error).
COMMAND_LINE_ERRORS = (flags.Error, KeyError, OSError, AttributeError, TypeError, ValueError)


def command_line_problem(error: Exception, args: list[str]) -> str:
  """One line for a bad command line: the argument at fault, what is wrong, the fix."""
  config_file = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
  if isinstance(error, OSError) and config_file and not os.path.isfile(config_file):
    return (f"--config={config_file}: no such config file; give one of configs/*.py, e.g. "
            "--config=configs/resnet56.py (paths are relative to where you run).")
  if isinstance(error, KeyError):  # ml_collections: "'modle'\nDid you mean ..."
    key, _, hint = str(error.args[0]).partition("\n")
    culprit = next((a for a in args if f".{key.strip(chr(39))}" in a.split("=")[0]), "--config.*")
    return f"{culprit.split('=')[0]}: no config field {key}. {hint}".strip()
  return str(error).splitlines()[0] if isinstance(error, flags.Error) else f"{type(error).__name__}: {error}"


def parse_flags(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
  """absl's parsing of `argv`, config file loaded; a mistake in them is a ConfigError."""
  try:
    rest = flag_values(argv)
    flag_values.config.keys()  # a config file that failed to load raises only when it is used
  except COMMAND_LINE_ERRORS as e:
    raise validation.ConfigError([command_line_problem(e, argv[1:])], "The command line") from e
  return rest


def parse_command_line(args: list[str]) -> tuple[ml_collections.ConfigDict, str]:
  """The config and workdir that `python train.py <args>` trains with (a ConfigError for a
  command line absl or ml_collections refuses)."""
  values, argv = flags.FlagValues(), ["train.py", *args]
  define_flags(values, argv)
  parse_flags(values, argv)
  return values.config, values.workdir or default_workdir(values.config)


class TrainState(train_state.TrainState):
  batch_stats: Any


def net_name(config: ml_collections.ConfigDict) -> str:
  """What the run trains, seed aside: resnet56, plain20, resnet32-B, vgg16, ..."""
  model = config.model
  if model.name != "cifar_resnet":
    return model.name + (str(model.depth) if "depth" in model else "")  # preact_resnet164
  name = f"{'resnet' if model.residual else 'plain'}{model.depth}"
  return name + (f"-{model.shortcut}" if model.residual and model.shortcut != "A" else "")


def run_name(config: ml_collections.ConfigDict) -> str:
  """A short name that says what the run trains: resnet56, plain20, resnet32-B-seed3, ..."""
  if config.num_seeds > 1:
    return net_name(config) + f"-seeds{config.seed}-{config.seed + config.num_seeds - 1}"
  return net_name(config) + (f"-seed{config.seed}" if config.seed else "")


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """runs/<experiment>/<run name>: a run's parameters, not a wandb id, say where it lives,
  so that a sweep run that is stopped and started again finds its checkpoints."""
  return os.path.join("runs", config.experiment, run_name(config))


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Warm-up rate until `warmup_steps`, then `learning_rate`, times `lr_decay` at each boundary."""
  boundaries = {b: config.lr_decay for b in config.lr_boundaries}
  if not config.warmup_steps:
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  boundaries[config.warmup_steps] = config.learning_rate / config.warmup_learning_rate
  return optax.piecewise_constant_schedule(config.warmup_learning_rate, dict(sorted(boundaries.items())))


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum; weight decay as an L2 term added to the gradient (as in the paper's Caffe)."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(learning_rate_schedule(config), momentum=config.momentum))


def create_model(config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  return nets.create(
      config.model.name, num_classes=num_classes, dtype=jnp.dtype(config.dtype),
      axis_name=AXIS if config.cross_replica_bn else None, **{
          k: v for k, v in config.model.items() if k != "name"})


def apply_with_conv_weight_grad(apply_fn: Callable[..., Any], mode: str) -> Callable[..., Any]:
  """`apply_fn`, its convolutions traced with the weight gradient `mode` (nets/cpu_conv.py)."""
  def apply(*args, **kwargs):
    with cpu_conv.weight_grad(mode):
      return apply_fn(*args, **kwargs)
  return apply


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  """The seeds a run trains: config.seed, and the next ones when config.num_seeds > 1."""
  if config.num_seeds < 1:
    raise ValueError(f"num_seeds must be at least 1; got {config.num_seeds}.")
  return list(range(config.seed, config.seed + config.num_seeds))


def run_keys(config: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """The keys of initialisation and of data order, augmentation and dropout.

  With num_seeds = K, both have a leading axis of K, and seed s gets the keys of a
  one-seed run with --config.seed=s: a K-seed run trains the same nets as K runs.
  """
  keys = [jax.random.split(jax.random.key(seed)) for seed in seeds(config)]
  if config.num_seeds == 1:
    return keys[0][0], keys[0][1]
  return jnp.stack([k[0] for k in keys]), jnp.stack([k[1] for k in keys])


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module, key: jax.Array,
                       image_shape: tuple[int, ...]) -> TrainState:
  """Initialises parameters, batch statistics and the optimizer state (under jit: fast start-up).

  With config.num_seeds > 1, `key` holds one key per seed and every leaf of the state
  gets a leading seed axis.
  """
  def init(key):
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return TrainState.create(apply_fn=apply_with_conv_weight_grad(model.apply, config.get("conv_weight_grad", "auto")),
                             params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}),  # none without batch norm
                             tx=create_optimizer(config))
  return jax.jit(init if config.num_seeds == 1 else jax.vmap(init))(key)


def loss_and_error(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example softmax cross-entropy and top-1 error (0 or 1)."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  error = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  return loss, error


CHANCE_LOSS_MARGIN = 0.03  # a dead net's loss sits this close to ln(num_classes) ...
CHANCE_ERROR_MARGIN = 0.03  # ... and its error this close to 1 - 1/num_classes (it predicts one class)


def at_chance(loss: float, error: float, num_classes: int) -> bool:
  """True if a training loss and error are those of a net that has stopped learning:
  uniform (or constant) predictions give loss ln(num_classes) and error 1 - 1/num_classes."""
  return (abs(loss - math.log(num_classes)) < CHANCE_LOSS_MARGIN
          and error > 1 - 1 / num_classes - CHANCE_ERROR_MARGIN)


class TrainingCollapsed(RuntimeError):
  """A run stopped because its net is at chance (config.stop_on_collapse)."""


class CollapseWatch:
  """Finds a run whose net has stopped learning: training loss and error at chance
  (`at_chance`) in every log line for config.collapse_steps steps in a row, all after the
  warm-up.

  A net that blew up in its first steps and came back with dead units predicts one class
  for every image. A fresh net starts near chance too, and a deep plain net can stay there
  for a while before it learns, hence the wait after the warm-up and the long stretch.
  With several seeds each seed is watched on its own.
  """

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int):
    self.steps_needed = config.collapse_steps
    self.log_every_steps = config.log_every_steps
    self.watch_from = config.warmup_steps + config.log_every_steps  # first window fully after warm-up
    self.num_classes = num_classes
    self.prefixes = [""] if config.num_seeds == 1 else [f"seed{s}/" for s in seeds(config)]
    self.at_chance_since = {p: None for p in self.prefixes}  # first step of the stretch at chance
    self.dead = set()

  def update(self, step: int, line: dict[str, float]) -> list[str]:
    """Counts this log line (the mean of the steps since the last one); returns the seeds ("" for
    a one-seed run) whose stretch at chance has just reached collapse_steps steps."""
    if step < self.watch_from:
      return []
    newly = []
    for p in self.prefixes:
      if not at_chance(line[f"{p}train_loss"], line[f"{p}train_error"], self.num_classes):
        self.at_chance_since[p] = None
        continue
      if self.at_chance_since[p] is None:
        self.at_chance_since[p] = step - self.log_every_steps + 1
      if step - self.at_chance_since[p] + 1 >= self.steps_needed and p not in self.dead:
        self.dead.add(p)
        newly.append(p)
    return newly

  def since(self, prefix: str) -> int:
    """The first step of the seed's stretch at chance."""
    return self.at_chance_since[prefix]

  def all_dead(self) -> bool:
    return len(self.dead) == len(self.prefixes)


def collapse_message(config: ml_collections.ConfigDict, who: list[str], first: int, step: int,
                     line: dict[str, float], num_classes: int) -> tuple[str, str]:
  """The alarm's title and text: what was seen, the likely cause and the fix."""
  name = run_name(config) + (f" ({', '.join(p.rstrip('/') for p in who)})" if who != [""] else "")
  p = who[0]
  title = f"{name} is at chance: its net has stopped learning"
  text = (f"Training loss {line[f'{p}train_loss']:.3f} (ln {num_classes} = {math.log(num_classes):.3f}) and error "
          f"{100 * line[f'{p}train_error']:.1f}% in every log line of steps {first}-{step}, after the warm-up. "
          "Likely cause: the first steps at the full learning rate blew the net up and left it predicting one "
          f"class. Fix: warm up longer (--config.warmup_steps, now {config.warmup_steps}) or lower "
          f"--config.learning_rate (now {config.learning_rate}); see README, 'The recipe'.")
  return title, text


def block_grad_norms(grads: Any) -> dict[str, jax.Array]:
  """The L2 norm of the gradient of each top-level block of the net, input to output.

  Keys are `grad_norm/<block>` in the order the net creates its blocks, so a plot of
  them runs from the first layer to the classifier.
  """
  return {f"grad_norm/{name}": optax.global_norm(g) for name, g in grads.items()}


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               aux_loss_weight: float = 0.0, log_grad_norms: bool = False) -> tuple[TrainState, dict]:
  """One SGD step on this device's part of the global batch; gradients averaged over devices.

  A net with auxiliary classifiers returns `(logits, aux_logits)` in training (see nets/):
  their losses join the objective with `aux_loss_weight`; the metrics are the main classifier's.
  """
  def loss_fn(params):
    outputs, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
        mutable=["batch_stats"], rngs={"dropout": rng})
    logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, ())
    loss, error = loss_and_error(logits, batch["label"])
    objective = loss.mean() + sum(
        aux_loss_weight * loss_and_error(aux, batch["label"])[0].mean() for aux in aux_logits)
    return objective, (loss.mean(), error.mean(), updates.get("batch_stats", {}))

  (_, (loss, error, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = jax.lax.pmean(grads, AXIS)
  # Batch norm normalises with this device's statistics (or the global batch's with
  # cross_replica_bn); the running averages are kept equal on all devices.
  batch_stats = jax.lax.pmean(batch_stats, AXIS)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {"train_loss": loss, "train_error": error}
  if log_grad_norms:  # of the averaged gradient: the one the update uses
    metrics.update(block_grad_norms(grads))
  return state, jax.lax.pmean(metrics, AXIS)


def train_step_on_device(state: TrainState, data: dict[str, jax.Array], key_data: jax.Array, orders: jax.Array, *,
                         config: ml_collections.ConfigDict, num_devices: int) -> tuple[TrainState, dict]:
  """Builds this device's slice of the step's global batch from the on-device dataset, then steps.

  `key_data` is jax.random.key_data of the run's data key; `orders` the epochs' example
  orders from `EpochOrders`.
  """
  _, augment_key, dropout_key = data_keys(key_data)
  step = state.step
  global_batch = config.batch_size
  local_batch = global_batch // num_devices
  start = jax.lax.axis_index(AXIS) * local_batch
  indices = input_pipeline.batch_indices(orders, step, global_batch)
  mine = lambda x: jax.lax.dynamic_slice_in_dim(x, start, local_batch)
  local = mine(indices)
  images = input_pipeline.augment(data["image"][local], data["mean"], jax.random.fold_in(augment_key, step),
                                  config.dataset, global_batch, mine)
  batch = {"image": images, "label": data["label"][local]}
  rng = jax.random.fold_in(jax.random.fold_in(dropout_key, step), jax.lax.axis_index(AXIS))
  return train_step(state, batch, rng, aux_loss_weight=config.aux_loss_weight,
                    log_grad_norms=config.log_grad_norms)


def data_keys(key_data: jax.Array) -> jax.Array:
  """The keys of data order, augmentation and dropout [3], from a seed's data key as raw key data."""
  return jax.random.split(jax.random.wrap_key_data(key_data), 3)


class EpochOrders:
  """The example orders of the epochs a dispatch can reach, on the devices, for every seed.

  Each epoch's order (a permutation of all examples, a sort) is computed when the loop
  enters the epoch, not in every step, on the devices that run the step: the batches
  are those input_pipeline.global_batch_indices defines.
  """

  def __init__(self, config: ml_collections.ConfigDict, replicas: parallel.Replicas, data_key: jax.Array,
               num_examples: int):
    self.steps_per_epoch = input_pipeline.steps_per_epoch(num_examples, config.batch_size)
    # A dispatch starting in epoch e reaches e + 1 (or further when it is longer than an epoch).
    num_epochs = (config.steps_per_dispatch - 1) // self.steps_per_epoch + 2
    orders = lambda key_data, epoch: input_pipeline.epoch_orders(
        data_keys(key_data)[0], epoch, num_epochs, num_examples)
    self._orders = jax.jit(jax.vmap(orders, in_axes=(0, None)) if config.num_seeds > 1 else orders)
    self._key_data, self._replicas = jax.random.key_data(data_key), replicas
    self._epoch, self._replicated = None, None

  def for_dispatch_after(self, step: int) -> jax.Array:
    """The orders (replicated) of a dispatch whose first step follows `step` completed ones."""
    epoch = step // self.steps_per_epoch
    if epoch != self._epoch:
      self._epoch, self._replicated = epoch, self._replicas.replicate(self._orders(self._key_data, epoch))
    return self._replicated


def steps_on_device(config: ml_collections.ConfigDict, num_devices: int, steps: int
                    ) -> Callable[[TrainState, dict[str, jax.Array], jax.Array, jax.Array], tuple[TrainState, dict]]:
  """The per-device function one dispatch runs: `steps` train steps of every seed.

  This is where the loop's speed tricks live, both plain JAX transformations of
  `train_step_on_device`:
  - several seeds (config.num_seeds) train in one step (`over_seeds`): one small net
    leaves an accelerator idle, K of them side by side (vmapped) fill it. State, keys and
    metrics get a leading seed axis; the data is shared, each seed draws its own batches.
  - several steps per dispatch (config.steps_per_dispatch) run as a lax.scan, so the
    host dispatches once per `steps` steps. Each step reads its batch from state.step,
    so the scan trains exactly as `steps` dispatches would.
  Metrics come back per step: [steps] or [steps, seeds].
  """
  step = functools.partial(train_step_on_device, config=config, num_devices=num_devices)
  step = over_seeds(step, config, in_axes=(0, None, 0, 0))

  if steps == 1:  # no scan: XLA's CPU backend runs convolutions inside a loop many times slower
    def one_step(state, data, key_data, orders):
      state, metrics = step(state, data, key_data, orders)
      return state, jax.tree_util.tree_map(lambda m: m[None], metrics)
    return one_step

  def run(state, data, key_data, orders):
    return jax.lax.scan(lambda s, _: step(s, data, key_data, orders), state, length=steps)
  return run


def over_seeds(fn: Callable[..., Any], config: ml_collections.ConfigDict,
               in_axes: tuple[int | None, ...]) -> Callable[..., Any]:
  """`fn` of one seed as a function of all config.num_seeds seeds.

  Arguments with in_axes 0 (state, keys) have a leading seed axis, those with None (the
  data) are shared; results get a leading seed axis. config.seed_batching says how:
  "vmap" (one vectorised step; the convolutions become grouped ones, which fill an
  accelerator), or "loop" (the seeds one after the other in the same jitted step; XLA's
  CPU backend runs grouped convolutions several times slower than K plain ones);
  "auto": loop on CPU, vmap elsewhere.
  """
  if config.num_seeds == 1:
    return fn
  batching = config.get("seed_batching", "auto")
  if batching not in ("auto", "vmap", "loop"):
    raise ValueError(f"seed_batching must be auto, vmap or loop; got {batching!r}.")
  if batching == "vmap" or (batching == "auto" and jax.default_backend() != "cpu"):
    return jax.vmap(fn, in_axes=in_axes)

  def one_after_another(*args):
    seed_args = lambda i: [a if axis is None else jax.tree_util.tree_map(lambda x: x[i], a)
                           for a, axis in zip(args, in_axes)]
    results = [fn(*seed_args(i)) for i in range(config.num_seeds)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *results)
  return one_after_another


def step_of(state: TrainState) -> int:
  """The state's step count (one for all seeds: they step together)."""
  return int(np.ravel(jax.device_get(state.step))[0])


def dispatch_size(step: int, config: ml_collections.ConfigDict) -> int:
  """How many steps the dispatch after `step` runs: config.steps_per_dispatch, or 1 where
  a log, evaluation or checkpoint step (or the end) falls inside those steps."""
  n = config.steps_per_dispatch
  if n < 1:
    raise ValueError(f"steps_per_dispatch must be at least 1; got {n}.")
  if n == 1 or step + n > config.total_steps:
    return 1
  for every in (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps):
    if (step // every + 1) * every < step + n:
      return 1
  return n


def per_seed_metrics(values: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, float]:
  """Metrics of one value per seed as floats: alone for one seed; for several, their mean,
  their sample std (`<key>_std`) and each seed's own (`seed<s>/<key>`)."""
  if config.num_seeds == 1:
    return {k: float(v) for k, v in values.items()}
  metrics = {}
  for key, per_seed in values.items():
    per_seed = np.asarray(per_seed, np.float64)
    if "/" not in key:  # per-block metrics: per seed only
      metrics[key] = float(per_seed.mean())
      metrics[f"{key}_std"] = float(per_seed.std(ddof=1))
    metrics.update({f"seed{s}/{key}": float(v) for s, v in zip(seeds(config), per_seed)})
  return metrics


def eval_on_device(state: TrainState, split: dict[str, jax.Array], mean: jax.Array, *,
                   image_size: int = 0) -> dict[str, jax.Array]:
  """Summed loss, errors and count over this device's share of a split, summed over devices.

  `split` holds [chunks, chunk_size, ...] arrays and a mask that is 0 on the padding.
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def chunk_sums(totals, chunk):
    logits = state.apply_fn(variables, input_pipeline.eval_images(chunk["image"], mean, image_size), train=False)
    loss, error = loss_and_error(logits, chunk["label"])
    sums = {"loss": (loss * chunk["mask"]).sum(), "errors": (error * chunk["mask"]).sum(),
            "count": chunk["mask"].sum()}
    return jax.tree_util.tree_map(jnp.add, totals, sums), None

  zeros = {"loss": 0.0, "errors": 0.0, "count": 0.0}
  totals, _ = jax.lax.scan(chunk_sums, zeros, split)
  return jax.lax.psum(totals, AXIS)


def shard_for_eval(split: input_pipeline.Split, num_devices: int, batch_size: int) -> dict[str, np.ndarray]:
  """Lays a split out as [devices, chunks, chunk_size, ...], padded and masked to fit."""
  chunk = math.ceil(batch_size / num_devices)
  per_device = math.ceil(len(split) / (num_devices * chunk)) * chunk
  pad = num_devices * per_device - len(split)
  arrays = {"image": split.images, "label": split.labels, "mask": np.ones(len(split), np.float32)}
  return {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]).reshape(
      num_devices, per_device // chunk, chunk, *v.shape[1:]) for k, v in arrays.items()}


def check_batch_size(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1,
                     resuming: bool = False) -> None:
  """The global batch must split evenly over the devices of all processes."""
  problems = validation.batch_problems(config, num_devices, num_processes, resuming)
  if problems:
    raise validation.ConfigError(problems)


def make_evaluator(replicas: parallel.Replicas, splits: dict[str, input_pipeline.Split],
                   mean_image: np.ndarray, config: ml_collections.ConfigDict) -> Callable[[TrainState], dict[str, float]]:
  """A function state -> {"<split>_loss", "<split>_error", "<split>_examples"} over whole splits
  (with several seeds, also per seed and the std: see per_seed_metrics).

  The splits go to the devices once, each device holding its share.
  """
  on_device = over_seeds(functools.partial(eval_on_device, image_size=config.dataset.get("image_size", 0)),
                         config, in_axes=(0, None, None))
  eval_fn = replicas.parallelize(on_device, sharded_argnums=(1,))
  data = {name: replicas.shard(shard_for_eval(split, replicas.count, config.eval_batch_size))
          for name, split in splits.items()}
  mean = replicas.replicate(mean_image)

  def evaluate(state: TrainState) -> dict[str, float]:
    results = {}
    for name, split in data.items():
      sums = replicas.to_host(eval_fn(state, split, mean))
      results.update(per_seed_metrics({f"{name}_loss": sums["loss"] / sums["count"],
                                       f"{name}_error": sums["errors"] / sums["count"]}, config))
      results[f"{name}_examples"] = int(np.ravel(sums["count"])[0])
    return results
  return evaluate


def summarize(window: list[dict[str, jax.Array]], replicas: parallel.Replicas, step: int,
              config: ml_collections.ConfigDict) -> dict[str, float]:
  """Means of the metrics of the steps since the last line (per seed: see per_seed_metrics);
  a non-finite one stops the run."""
  values = [replicas.to_host(metrics) for metrics in window]  # each [steps] or [steps, seeds]
  means = per_seed_metrics({k: np.concatenate([v[k] for v in values]).mean(axis=0) for k in values[0]}, config)
  if not all(math.isfinite(v) for v in means.values()):
    bad = sorted({k.split("/")[0] for k, v in means.items() if not math.isfinite(v) and k.startswith("seed")})
    raise FloatingPointError(
        f"Training diverged: non-finite loss by step {step}{' in ' + ', '.join(bad) if bad else ''} "
        f"({means}). The last checkpoint before it is kept. Lower --config.learning_rate or check the data.")
  return means


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """True if no float leaf of `tree` holds a NaN or an infinity."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves))


def restore_or_start(config: ml_collections.ConfigDict, ckpts: checkpoints.Checkpoints,
                     state: TrainState) -> tuple[TrainState, dict[str, Any]]:
  """The newest readable checkpoint of the workdir if there is one (same model and data only)."""
  def same_model_and_data(record):
    differences = checkpoints.config_differences(record["config"], config)
    if differences:
      raise checkpoints.ConfigMismatchError(
          f"{ckpts.directory} holds a run with another model or data; differing fields:\n  "
          + "\n  ".join(differences) + "\nUse another --workdir, or --config.restart=True to start over there.")

  restored = ckpts.restore(jax.device_get(state), check=same_model_and_data)
  if restored is None:
    return state, {}
  _, state, record = restored
  return state, record


def agreed_stop_signal(preemption: checkpoints.PreemptionSignal, at_boundary: bool) -> int:
  """The signal that stops the run after this step, 0 to go on.

  A single process stops at once. Several processes must stop at the same step (one that
  left the step's collectives would leave the others waiting), so they compare at log and
  checkpoint steps only, which keeps the host sync out of the other steps.
  """
  if jax.process_count() == 1:
    return preemption.signum
  return parallel.max_over_processes(preemption.signum) if at_boundary else 0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains until config.total_steps, resuming from the workdir's checkpoints; returns the final metrics."""
  run_start = time.perf_counter()
  parallel.maybe_initialize_distributed(config.distributed)
  replicas = parallel.Replicas(config.parallelism, config.num_devices)
  check_batch_size(config, replicas.count, jax.process_count(),
                   resuming=not config.restart and checkpoints.has_checkpoints(workdir))
  is_main = jax.process_index() == 0
  if is_main:
    writers.check_writable(workdir)  # fail now, not after loading the data and compiling
  if config.restart and is_main:  # a new run: new checkpoints, metrics and wandb run
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    for name in ("metrics.jsonl", "wandb_run_id"):
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
  parallel.sync_processes("restart")  # no process may find the checkpoints process 0 is deleting

  # From here a signal stops the run at a step boundary; a KeyboardInterrupt inside XLA's
  # compiler could end the process in a segmentation fault.
  with checkpoints.PreemptionSignal() as preemption:
    dataset = input_pipeline.load_dataset(config.dataset)
    model = create_model(config, dataset.num_classes)
    init_key, data_key = run_keys(config)
    ckpts = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
    try:
      state, record = restore_or_start(
          config, ckpts, create_train_state(config, model, init_key, input_pipeline.input_shape(
              config.dataset, dataset.train.images.shape[1:])))
      first_step = step_of(state)
      if first_step >= config.total_steps and "final" in record:
        if is_main:
          print(f"{workdir} holds a finished run ({first_step} steps, test error "
                f"{100 * record['final'].get('test_error', float('nan')):.2f}%); nothing to do. "
                f"--config.restart=True trains it again.", flush=True)
        return record["final"]
      if first_step > config.total_steps:
        raise validation.ConfigError([
            f"total_steps {config.total_steps}: {workdir} has a checkpoint at step {first_step}, beyond it; "
            "raise --config.total_steps or use another --workdir."])
      return train_from(config, workdir, replicas, dataset, state, data_key, ckpts, run_start, preemption,
                        seconds_before=record.get("wall_time_sec", 0.0))
    finally:
      ckpts.wait()
      ckpts.close()


def train_from(config: ml_collections.ConfigDict, workdir: str, replicas: parallel.Replicas,
               dataset: input_pipeline.Dataset, state: TrainState, data_key: jax.Array,
               ckpts: checkpoints.Checkpoints, run_start: float, preemption: checkpoints.PreemptionSignal,
               seconds_before: float = 0.0) -> dict[str, float]:
  """The training loop, from state.step to config.total_steps, then the final evaluation.

  `seconds_before`: the wall time of the run's earlier segments (it resumes).
  """
  is_main = jax.process_index() == 0
  first_step = step_of(state)
  num_params = nets.count_params(state.params) // config.num_seeds  # of one net
  writer = writers.MetricWriter(workdir, config, run_name(config), num_params, first_step, active=is_main)
  schedule = learning_rate_schedule(config)
  dispatch = {n: replicas.parallelize(steps_on_device(config, replicas.count, n), donate_argnums=(0,))
              for n in {1, config.steps_per_dispatch}}  # jax compiles each on its first call
  evaluate = make_evaluator(replicas, dataset.eval_splits, dataset.mean_image, config)
  state = replicas.replicate(state)
  train_data = replicas.replicate({
      "image": dataset.train.images, "label": dataset.train.labels, "mean": dataset.mean_image})
  # As raw key data: pmap refuses a typed key array that spans several processes.
  key_data = replicas.replicate(jax.random.key_data(data_key))
  orders = EpochOrders(config, replicas, data_key, len(dataset.train))

  def save(step: int) -> None:
    copy = replicas.single_copy(state)
    if not all_finite(copy):  # the loss of a step is finite even when its update was not
      raise FloatingPointError(f"Training diverged: non-finite parameters after step {step}; the "
                               "last checkpoint before it is kept. Lower --config.learning_rate.")
    record = {"config": config.to_dict(), "wall_time_sec": seconds_before + time.perf_counter() - run_start}
    save_start = time.perf_counter()
    ckpts.save(step, copy, json.loads(json.dumps(record, default=list)))
    save_seconds.append(time.perf_counter() - save_start)

  collapse = CollapseWatch(config, dataset.num_classes)
  save_seconds = []  # how long each save held up training (the writing goes on behind it)
  window = []  # the metrics of the steps since the last line, still on the devices
  window_start, window_first_step, seconds_per_step = 0.0, None, 0.0
  loop_start, line, step, evaluated = time.perf_counter(), {}, first_step, {}
  with writer:
    while step < config.total_steps:
      steps = dispatch_size(step, config)
      state, metrics = dispatch[steps](state, train_data, key_data, orders.for_dispatch_after(step))
      step += steps
      window.append(metrics)
      if window_first_step is None:  # this dispatch compiles; time it alone, leave it out of throughput
        jax.block_until_ready(metrics)
        window_start, window_first_step = time.perf_counter(), step + 1
        if is_main:
          print(f"Step {step} done {window_start - run_start:.1f}s after start; it took "
                f"{window_start - loop_start:.1f}s, compilation included.", flush=True)
      last = step == config.total_steps
      line = {}
      if step % config.log_every_steps == 0 or last:
        line = summarize(window, replicas, step, config)
        now = time.perf_counter()
        if step >= window_first_step:
          seconds_per_step = (now - window_start) / (step - window_first_step + 1)
          line["images_per_sec"] = config.batch_size * config.num_seeds / seconds_per_step
        line["lr"] = float(schedule(step - 1))
        window, window_start, window_first_step = [], now, step + 1
      if last:  # saved before the final evaluation, so that a signal during it loses no training
        save(step)
      if step % config.eval_every_steps == 0 or last:
        eval_start = time.perf_counter()
        evaluated = evaluate(state)
        line.update({k: v for k, v in evaluated.items() if not k.endswith("_examples")})
        window_start += time.perf_counter() - eval_start  # evaluation is not training time
      if line:
        writer.write(step, line)
        writer.progress(step, line, seconds_per_step)
      collapsed = collapse.update(step, line) if "train_loss" in line else []
      if collapsed:
        writer.alert(*collapse_message(config, collapsed, collapse.since(collapsed[0]), step, line,
                                       dataset.num_classes))
        writer.summarize({"collapsed_at_step": step})
      stop_collapsed = config.stop_on_collapse and collapsed and collapse.all_dead() and not last
      signum = agreed_stop_signal(
          preemption, step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0)
      if (step % config.checkpoint_every_steps == 0 or signum or stop_collapsed) and not last:
        save(step)
      if stop_collapsed:
        ckpts.wait()
        raise TrainingCollapsed(
            f"Stopped at step {step} (config.stop_on_collapse): the net is at chance. The checkpoint of step "
            f"{step} is in {ckpts.directory}; rerun with --config.stop_on_collapse=False to train it on, or "
            "--config.restart=True with a longer warm-up or a lower learning rate.")
      if signum and not last:  # at the last step the run is saved and evaluated: it finishes
        ckpts.wait()  # raises if the checkpoint did not reach the disk: no message claims it did
        writer.mark_preempted()
        if is_main:
          print(f"Stopped by signal {signum} at step {step}; the checkpoint of step {step} is saved in "
                f"{ckpts.directory}. Run the same command again to resume.", flush=True)
        raise SystemExit(128 + signum)

    if first_step == config.total_steps:  # resumed after the final checkpoint, before its evaluation was recorded
      evaluated = evaluate(state)
      line = {k: v for k, v in evaluated.items() if not k.endswith("_examples")}
      if writer.active and all(logged["step"] < step for logged in writers.read_metrics(workdir)):
        writer.write(step, line)
    final = {**line, "wall_time_sec": seconds_before + time.perf_counter() - run_start, "num_params": num_params,
             **{k: v for k, v in evaluated.items() if k.endswith("_examples")}}
    ckpts.save_final(step, final)  # once the final checkpoint is on disk
    writer.check_on_disk()
    writer.summarize(final)
  if is_main:
    print(f"Done: {run_name(config)} after {step} steps: test error "
          f"{100 * final.get('test_error', float('nan')):.2f}%, wall time "
          f"{writers.format_duration(final['wall_time_sec'])}; {len(save_seconds)} checkpoint saves held "
          f"training up {sum(save_seconds):.2f}s in all.", flush=True)
  return final


def log_libraries_to(workdir: str) -> str:
  """Sends absl logging (orbax's and jax's messages, their tracebacks on a failed save) to
  <workdir>/library.log instead of the console, which keeps to progress and our messages."""
  path = os.path.join(workdir, "library.log")
  logging.get_absl_handler().python_handler.stream = open(path, "a", buffering=1)  # pylint: disable=consider-using-with
  return path


# Errors whose message says what to do, besides validation.USER_ERRORS: printed without a traceback.
RUN_ERRORS = (checkpoints.ConfigMismatchError, checkpoints.CorruptCheckpointError, FloatingPointError,
              TrainingCollapsed)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cpu_conv.use_fast_xla_cpu_flags()
  if not FLAGS["verbosity"].present:  # orbax logs each save at INFO; keep the console to progress
    logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  workdir = FLAGS.workdir or default_workdir(config)
  with validation.user_errors_as_messages(FLAGS.debug, also=RUN_ERRORS):
    validation.validate_config(config, workdir)
    if jax.process_index() == 0:
      writers.check_writable(workdir)
      log_libraries_to(workdir)
    train_and_evaluate(config, workdir)


def parse_flags_or_exit(argv: list[str]) -> list[str]:
  """app.run's flag parser: a bad command line is one message and exit code 2, no traceback."""
  with validation.user_errors_as_messages(debug="--debug" in argv):
    return parse_flags(FLAGS, argv)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags_or_exit)
