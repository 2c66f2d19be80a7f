"""depthlab/steps.py: the train step's objective, steps per dispatch, the data order of each
seed, several seeds in one step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from depthlab import input_pipeline, parallel, steps
from depthlab import state as state_lib


class WithAuxHead(nn.Module):
  """A net with an auxiliary classifier, returned the way GoogLeNet returns its two in training."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    logits, aux = nn.Dense(10, name="main")(x), nn.Dense(10, name="aux")(x)
    return (logits, (aux,)) if train else logits


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_auxiliary_losses_join_the_objective_with_their_weight_but_not_the_metrics(weight):
  model, x = WithAuxHead(), jax.random.normal(jax.random.key(0), (4, 8))
  labels = jnp.array([0, 1, 2, 3])
  params = model.init(jax.random.key(1), x)["params"]  # no batch norm: no batch_stats
  state = state_lib.TrainState.create(apply_fn=model.apply, params=params, batch_stats={}, tx=optax.sgd(1.0))
  step = jax.vmap(functools.partial(steps.train_step, aux_loss_weight=weight), axis_name=steps.AXIS)
  add_axis = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a)[None], tree)
  new_state, metrics = step(add_axis(state), add_axis({"image": x, "label": labels}), add_axis(jax.random.key(2)))

  def cross_entropy(head, head_params):
    logits, (aux,) = model.apply({"params": {**params, head: head_params}}, x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits if head == "main" else aux, labels).mean()

  np.testing.assert_allclose(metrics["train_loss"][0], cross_entropy("main", params["main"]), rtol=1e-6)
  aux_grad = jax.grad(functools.partial(cross_entropy, "aux"))(params["aux"])
  np.testing.assert_allclose(
    new_state.params["aux"]["kernel"][0], params["aux"]["kernel"] - weight * aux_grad["kernel"], rtol=1e-5, atol=1e-7
  )


def test_a_dispatch_runs_several_steps_except_where_a_log_eval_or_checkpoint_step_falls_inside():
  config = default.get_config()
  config.total_steps, config.log_every_steps, config.eval_every_steps = 100, 10, 50
  config.checkpoint_every_steps, config.steps_per_dispatch = 50, 5
  assert steps.dispatch_size(0, config) == 5  # steps 1-5
  assert steps.dispatch_size(5, config) == 5  # 6-10: the log step ends the dispatch
  assert steps.dispatch_size(7, config) == 1  # after a resume at step 7: one by one up to 10
  assert steps.dispatch_size(98, config) == 1  # 99, 100: the end
  config.steps_per_dispatch = 1
  assert steps.dispatch_size(0, config) == 1
  config.steps_per_dispatch = 0
  with pytest.raises(ValueError, match="steps_per_dispatch must be at least 1"):
    steps.dispatch_size(0, config)


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_dispatches_read_each_seed_s_batches_from_orders_computed_once_per_epoch(tiny_config, num_seeds):
  # 40 examples in batches of 16: 2 steps an epoch; dispatches of 5 steps reach 3 epochs.
  tiny_config.num_seeds, tiny_config.steps_per_dispatch = num_seeds, 5
  data_parallel = parallel.DataParallel("pmap", num_devices=1)
  _, data_key = state_lib.run_keys(tiny_config)
  orders = steps.EpochOrders(tiny_config, data_parallel, data_key, num_examples=40)
  computed = []
  orders._orders = functools.partial(lambda compute, *args: computed.append(args[1]) or compute(*args), orders._orders)
  seed_keys = [data_key] if num_seeds == 1 else list(data_key)
  read = jax.jit(input_pipeline.batch_indices, static_argnums=2)
  for first_step in range(0, 20, 5):
    held = data_parallel.to_host(orders.for_dispatch_after(first_step))
    for seed, key in enumerate(seed_keys):
      order_key = steps.data_keys(jax.random.key_data(key))[0]
      for step in range(first_step, first_step + 5):
        np.testing.assert_array_equal(
          read(held if num_seeds == 1 else held[seed], step, 16),
          input_pipeline.global_batch_indices(order_key, step, 40, 16),
        )
  assert computed == [0, 2, 5, 7]  # on entering a new epoch only
  orders.for_dispatch_after(19)
  orders.for_dispatch_after(18)  # the same epoch: the same orders
  assert computed == [0, 2, 5, 7, 9]


def test_an_unknown_seed_batching_is_an_error_naming_the_choices():
  config = default.get_config()
  config.num_seeds, config.seed_batching = 2, "pmap"
  with pytest.raises(ValueError, match="seed_batching must be auto, vmap or loop"):
    steps.over_seeds(lambda x: x, config, (0,))
