"""The CIFAR networks match He et al. 2015: parameter counts, shapes, depths, shortcuts."""

import jax
import jax.numpy as jnp
import pytest

import nets

# Trainable parameters (batch-norm scale and bias included) of the option-A ResNets.
PAPER_COUNTS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
OPTION_B_EXTRA = 2_752  # two 1x1 conv + BN projections: 16->32 and 32->64


def count(**kwargs) -> int:
  model = nets.create("cifar_resnet", **kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return nets.count_params(variables["params"])


@pytest.mark.parametrize("depth", sorted(PAPER_COUNTS))
def test_resnet_has_the_papers_parameter_count(depth):
  assert count(depth=depth) == PAPER_COUNTS[depth]


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_plain_net_has_the_option_a_count(depth):
  assert count(depth=depth, residual=False) == PAPER_COUNTS[depth]


@pytest.mark.parametrize("depth", [20, 56, 1202])
def test_option_b_adds_two_projections(depth):
  assert count(depth=depth, shortcut="B") == PAPER_COUNTS[depth] + OPTION_B_EXTRA


@pytest.mark.parametrize("residual", [True, False])
def test_forward_gives_logits_and_updates_batch_stats(residual):
  model = nets.create("cifar_resnet", depth=8, residual=residual)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)),
                                   variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree_util.tree_leaves(changed))


def test_residual_and_plain_nets_compute_different_functions():
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  res, plain = (nets.create("cifar_resnet", depth=8, residual=r) for r in (True, False))
  variables = res.init(jax.random.key(1), x, train=False)  # same parameter tree for both
  assert not jnp.allclose(res.apply(variables, x, train=False), plain.apply(variables, x, train=False))


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_params():
  model = nets.create("cifar_resnet", depth=8, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert {p.dtype for p in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
  assert model.apply(variables, x, train=False).shape == (2, 10)


@pytest.mark.parametrize("depth", [0, 18, 21, 57])
def test_a_depth_not_6n_plus_2_is_an_error_naming_valid_depths(depth):
  with pytest.raises(ValueError, match=r"6n\+2 \(20, 32, 44, 56, 110, 1202"):
    count(depth=depth)


def test_unknown_shortcut_is_an_error():
  with pytest.raises(ValueError, match="shortcut must be one of"):
    count(depth=20, shortcut="C")


def test_unknown_model_name_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet9000'.*cifar_resnet"):
    nets.create("resnet9000")
