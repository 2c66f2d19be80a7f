"""depthlab/steps.py: the train step's objective, steps per dispatch, the data order of each
seed, several seeds in one step."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from depthlab import state as state_lib
from depthlab import steps


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
