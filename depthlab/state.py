"""What a run starts from and how it steps: the train state (TrainState), the optimizer and
its schedule, the seeds and the keys of each, and the initial state of a model."""

from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


class TrainState(train_state.TrainState):
  batch_stats: Any


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The rate of each step: the warm-up for `warmup_steps`, then `learning_rate`, times
  `lr_decay` at each of `lr_boundaries`.

  The warm-up is `warmup_shape`: "constant" holds `warmup_learning_rate`; "linear" rises
  from it, step by step, to `learning_rate`, so that no step multiplies the rate (a jump
  from 0.01 to 0.1 at the end of a constant warm-up throws the nets back: docs/recipe.md).
  """
  boundaries = {b: config.lr_decay for b in config.lr_boundaries}
  if not config.warmup_steps:
    return optax.piecewise_constant_schedule(config.learning_rate, boundaries)
  if config.warmup_shape == "linear":
    warmup = optax.linear_schedule(config.warmup_learning_rate, config.learning_rate, config.warmup_steps)
    after = optax.piecewise_constant_schedule(config.learning_rate, boundaries)
    return lambda step: jnp.where(step < config.warmup_steps, warmup(step), after(step))
  boundaries[config.warmup_steps] = config.learning_rate / config.warmup_learning_rate
  return optax.piecewise_constant_schedule(config.warmup_learning_rate, dict(sorted(boundaries.items())))


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum; weight decay as an L2 term added to the gradient (as in the paper's Caffe)."""
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay), optax.sgd(learning_rate_schedule(config), momentum=config.momentum)
  )


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  """The seeds a run trains: config.seed, and the next ones when config.num_seeds > 1."""
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


def create_train_state(
  config: ml_collections.ConfigDict, model: nn.Module, key: jax.Array, image_shape: tuple[int, ...]
) -> TrainState:
  """Initialises parameters, batch statistics and the optimizer state (under jit: fast start-up).

  With config.num_seeds > 1, `key` holds one key per seed and every leaf of the state
  gets a leading seed axis.
  """

  def init(key):
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),  # none without batch norm
      tx=create_optimizer(config),
    )

  return jax.jit(init if config.num_seeds == 1 else jax.vmap(init))(key)


def step_count(state: TrainState) -> int:
  """The state's step count (one for all seeds: they step together)."""
  return int(np.ravel(jax.device_get(state.step))[0])
