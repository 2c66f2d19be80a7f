"""The functions that run on the devices: the train step, the dispatch of several steps and
seeds around it, and the evaluation of a split; written once for one device, with
collectives over parallel.AXIS (parallel.DataParallel runs them on all devices)."""

from collections.abc import Callable
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from depthlab import batches, parallel
from depthlab.state import TrainState

AXIS = parallel.AXIS


def loss_and_error(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example softmax cross-entropy and top-1 error (0 or 1)."""
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  error = (jnp.argmax(logits, -1) != labels).astype(jnp.float32)
  return loss, error


def block_grad_norms(grads: Any) -> dict[str, jax.Array]:
  """The L2 norm of the gradient of each top-level block of the net, input to output.

  Keys are `grad_norm/<block>` in the order the net creates its blocks, so a plot of
  them runs from the first layer to the classifier.
  """
  return {f"grad_norm/{name}": optax.tree.norm(g) for name, g in grads.items()}


def train_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  aux_loss_weight: float = 0.0,
  log_grad_norms: bool = False,
) -> tuple[TrainState, dict]:
  """One SGD step on this device's part of the global batch; gradients averaged over devices.

  A net with auxiliary classifiers returns `(logits, aux_logits)` in training (see nets/):
  their losses join the objective with `aux_loss_weight`; the metrics are the main classifier's.
  """

  def loss_fn(params):
    outputs, updates = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats},
      batch["image"],
      train=True,
      mutable=["batch_stats"],
      rngs={"dropout": rng},
    )
    logits, aux_logits = outputs if isinstance(outputs, tuple) else (outputs, ())
    loss, error = loss_and_error(logits, batch["label"])
    objective = loss.mean() + sum(aux_loss_weight * loss_and_error(aux, batch["label"])[0].mean() for aux in aux_logits)
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


def train_step_on_device(
  state: TrainState,
  data: dict[str, jax.Array],
  key_data: jax.Array,
  orders: jax.Array,
  *,
  config: ml_collections.ConfigDict,
  num_devices: int,
) -> tuple[TrainState, dict]:
  """Builds this device's slice of the step's global batch from the on-device dataset, then steps.

  `key_data` is jax.random.key_data of the run's data key; `orders` the epochs' example
  orders from `EpochOrders`.
  """
  _, augment_key, dropout_key = data_keys(key_data)
  step = state.step
  global_batch = config.batch_size
  local_batch = global_batch // num_devices
  start = jax.lax.axis_index(AXIS) * local_batch
  indices = batches.batch_indices(orders, step, global_batch)
  device_share = lambda x: jax.lax.dynamic_slice_in_dim(x, start, local_batch)
  local = device_share(indices)
  images = batches.augment(
    data["image"][local],
    data["mean"],
    jax.random.fold_in(augment_key, step),
    config.dataset,
    global_batch,
    device_share,
  )
  batch = {"image": images, "label": data["label"][local]}
  rng = jax.random.fold_in(jax.random.fold_in(dropout_key, step), jax.lax.axis_index(AXIS))
  return train_step(state, batch, rng, aux_loss_weight=config.aux_loss_weight, log_grad_norms=config.log_grad_norms)


def data_keys(key_data: jax.Array) -> jax.Array:
  """The keys of data order, augmentation and dropout [3], from a seed's data key as raw key data."""
  return jax.random.split(jax.random.wrap_key_data(key_data), 3)


def steps_on_device(
  config: ml_collections.ConfigDict, num_devices: int, steps: int
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


def over_seeds(
  fn: Callable[..., Any], config: ml_collections.ConfigDict, in_axes: tuple[int | None, ...]
) -> Callable[..., Any]:
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
  batching = config.seed_batching  # one of validation.SEED_BATCHING
  if batching == "vmap" or (batching == "auto" and jax.default_backend() != "cpu"):
    return jax.vmap(fn, in_axes=in_axes)

  def one_after_another(*args):
    seed_args = lambda i: [
      a if axis is None else jax.tree_util.tree_map(lambda x: x[i], a) for a, axis in zip(args, in_axes)
    ]
    results = [fn(*seed_args(i)) for i in range(config.num_seeds)]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *results)

  return one_after_another


def eval_on_device(
  state: TrainState, split: dict[str, jax.Array], mean: jax.Array, *, image_size: int = 0
) -> dict[str, jax.Array]:
  """Summed loss, errors and count over this device's share of a split, summed over devices.

  `split` holds [chunks, chunk_size, ...] arrays and a mask that is 0 on the padding.
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def chunk_sums(totals, chunk):
    logits = state.apply_fn(variables, batches.eval_images(chunk["image"], mean, image_size), train=False)
    loss, error = loss_and_error(logits, chunk["label"])
    sums = {"loss": (loss * chunk["mask"]).sum(), "errors": (error * chunk["mask"]).sum(), "count": chunk["mask"].sum()}
    return jax.tree_util.tree_map(jnp.add, totals, sums), None

  zeros = {"loss": 0.0, "errors": 0.0, "count": 0.0}
  totals, _ = jax.lax.scan(chunk_sums, zeros, split)
  return jax.lax.psum(totals, AXIS)
