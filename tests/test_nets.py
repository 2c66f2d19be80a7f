"""The CIFAR networks match He et al. 2015: parameter counts, shapes, depths, shortcuts."""

import jax
import jax.numpy as jnp
import pytest

import nets
from nets import layers, lenet
from tests.conftest import PAPER_COUNTS, cifar_resnet_params

# Trainable parameters (batch-norm scale and bias included) of the option-A ResNets.
OPTION_B_EXTRA = 2_752  # two 1x1 conv + BN projections: 16->32 and 32->64


@pytest.mark.parametrize("depth", sorted(PAPER_COUNTS))
def test_resnet_has_the_papers_parameter_count(depth):
  assert cifar_resnet_params(depth=depth) == PAPER_COUNTS[depth]


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_plain_net_has_the_option_a_count(depth):
  assert cifar_resnet_params(depth=depth, residual=False) == PAPER_COUNTS[depth]


@pytest.mark.parametrize("depth", [20, 56, 1202])
def test_option_b_adds_two_projections(depth):
  assert cifar_resnet_params(depth=depth, shortcut="B") == PAPER_COUNTS[depth] + OPTION_B_EXTRA


@pytest.mark.parametrize("residual", [True, False])
def test_forward_gives_logits_and_updates_batch_stats(residual):
  model = nets.create("cifar_resnet", depth=8, residual=residual)
  x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
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
    cifar_resnet_params(depth=depth)


def test_unknown_shortcut_is_an_error():
  with pytest.raises(ValueError, match="shortcut must be one of"):
    cifar_resnet_params(depth=20, shortcut="C")


def test_zero_init_residual_starts_every_residual_block_as_the_identity():
  model = nets.create("cifar_resnet", depth=8, zero_init_residual=True)
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), x, train=False)
  assert all(jnp.all(variables["params"][f"block{i}"]["BatchNorm_1"]["scale"] == 0) for i in (1, 2, 3))
  _, state = model.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
  seen = state["intermediates"]
  block_input = jax.nn.relu(seen["stem_bn"]["__call__"][0])
  assert jnp.array_equal(seen["block1"]["__call__"][0], block_input)  # relu(0 + x) of a post-ReLU x
  assert cifar_resnet_params(depth=20, zero_init_residual=True) == PAPER_COUNTS[20]


def test_zero_init_residual_on_a_plain_net_is_an_error():
  with pytest.raises(ValueError, match="zero_init_residual needs a residual net"):
    cifar_resnet_params(depth=20, residual=False, zero_init_residual=True)


def test_unknown_model_name_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"Unknown model 'resnet9000'.*cifar_resnet"):
    nets.create("resnet9000")


# --------------------------------------------------------------------------- the famous nets


def abstract_init(model, input_shape):
  """The variables' shapes, without allocating them (a 138M-parameter VGG costs nothing)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))


def zoo_count(name, input_shape=(224, 224, 3), **kwargs) -> int:
  return nets.count_params(abstract_init(nets.create(name, **kwargs), input_shape)["params"])


# The papers' nets at their inputs: (name, keyword arguments, input, parameters).
ZOO_COUNTS = [
  ("lenet5", {"num_classes": 10}, (32, 32, 1), 61_706),
  ("lenet5", {"num_classes": 10, "sparse_c3": True}, (32, 32, 1), 60_806),
  (
    "lenet5",
    {"num_classes": 10, "sparse_c3": True, "trainable_pooling": True, "rbf_output": True},
    (32, 32, 1),
    60_840,
  ),
  ("alexnet", {}, (227, 227, 3), 60_965_224),
  ("alexnet", {"grouped": False}, (227, 227, 3), 62_378_344),
  ("vgg11", {}, (224, 224, 3), 132_863_336),
  ("vgg13", {}, (224, 224, 3), 133_047_848),
  ("vgg16", {}, (224, 224, 3), 138_357_544),
  ("vgg19", {}, (224, 224, 3), 143_667_240),
  ("vgg16", {"batch_norm": True}, (224, 224, 3), 138_357_544 + 4_224),  # BN scale + bias for each conv bias
  ("googlenet", {"aux_heads": False}, (224, 224, 3), 6_998_552),
  ("googlenet", {"aux_heads": False, "batch_norm": True}, (224, 224, 3), 7_005_832),
  ("googlenet", {}, (224, 224, 3), 6_998_552 + 3_188_840 + 3_190_888),  # aux heads on 512 and 528 channels
  ("resnet18", {}, (224, 224, 3), 11_689_512),
  ("resnet34", {}, (224, 224, 3), 21_797_672),
  ("resnet50", {}, (224, 224, 3), 25_557_032),
  ("resnet101", {}, (224, 224, 3), 44_549_160),
  ("resnet152", {}, (224, 224, 3), 60_192_808),
  ("resnet50", {"stride_in_3x3": True}, (224, 224, 3), 25_557_032),
  ("preact_resnet", {"depth": 164, "num_classes": 10}, (32, 32, 3), 1_703_258),
  ("preact_resnet", {"depth": 110, "bottleneck": False, "num_classes": 10}, (32, 32, 3), 1_730_522),
]


@pytest.mark.parametrize(
  "name,kwargs,input_shape,expected",
  ZOO_COUNTS,
  ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw, _, _ in ZOO_COUNTS],
)
def test_famous_net_has_the_papers_parameter_count(name, kwargs, input_shape, expected):
  assert zoo_count(name, input_shape, **kwargs) == expected


def test_preact_resnet_1001_has_10_3_million_parameters():
  # The paper rounds it to 10.2M; 164 layers match it to the parameter, and 1001 is the same design.
  assert zoo_count("preact_resnet", (32, 32, 3), depth=1001, num_classes=10) == 10_327_706


# (name, keyword arguments, input): each gives [batch, classes] logits at evaluation.
CANONICAL = [
  ("lenet5", {}, (32, 32, 1)),
  ("alexnet", {}, (227, 227, 3)),
  ("vgg19", {"batch_norm": True}, (224, 224, 3)),
  ("googlenet", {}, (224, 224, 3)),
  ("resnet34", {}, (224, 224, 3)),
  ("resnet101", {"stride_in_3x3": True}, (224, 224, 3)),
  ("preact_resnet", {"depth": 56, "bottleneck": False}, (32, 32, 3)),
  # The CIFAR adaptations: 32x32 inputs through nets made for 224.
  ("alexnet", {"cifar_stem": True, "classifier_width": 256}, (32, 32, 3)),
  ("vgg16", {"classifier_width": 512}, (32, 32, 3)),
  ("googlenet", {"cifar_stem": True}, (32, 32, 3)),
  ("resnet50", {"cifar_stem": True}, (32, 32, 3)),
]


@pytest.mark.parametrize("name,kwargs,input_shape", CANONICAL, ids=[f"{n}-{s[0]}" for n, _, s in CANONICAL])
def test_forward_shape_at_the_canonical_input(name, kwargs, input_shape):
  model = nets.create(name, num_classes=7, **kwargs)
  variables = abstract_init(model, input_shape)
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((3, *input_shape)), train=False), variables)
  assert logits.shape == (3, 7) and logits.dtype == jnp.float32


@pytest.mark.parametrize(
  "name,size,expected",
  [
    ("googlenet", 224, (7, 7, 1024)),
    ("googlenet", 32, (8, 8, 1024)),
    ("resnet18", 224, (7, 7, 512)),
    ("resnet18", 32, (4, 4, 512)),
  ],
)
def test_cifar_stem_keeps_a_32x32_input_as_large_as_the_paper_keeps_224(name, size, expected):
  model = nets.create(name, cifar_stem=size == 32)
  variables = abstract_init(model, (size, size, 3))
  _, state = jax.eval_shape(
    lambda v: model.apply(v, jnp.zeros((1, size, size, 3)), train=False, capture_intermediates=True), variables
  )
  last_block = {"googlenet": "inception_5b", "resnet18": "conv5_2"}[name]
  assert state["intermediates"][last_block]["__call__"][0].shape[1:] == expected


def test_googlenet_aux_classifiers_only_in_training():
  model = nets.create("googlenet", num_classes=10, cifar_stem=True, batch_norm=True)
  x = jnp.zeros((2, 32, 32, 3))
  variables = abstract_init(model, (32, 32, 3))
  assert {"aux_4a", "aux_4d"} <= set(variables["params"])
  train_out, _ = jax.eval_shape(
    lambda v: model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)}), variables
  )
  logits, aux = train_out
  assert logits.shape == (2, 10) and [a.shape for a in aux] == [(2, 10), (2, 10)]
  assert jax.eval_shape(lambda v: model.apply(v, x, train=False), variables).shape == (2, 10)


def test_dropout_is_random_in_training_and_off_at_evaluation():
  layer = layers.DenseReLU(64, dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (2, 8))
  variables = layer.init(jax.random.key(1), x)
  apply = jax.jit(lambda x, train, key: layer.apply(variables, x, train, rngs={"dropout": key}), static_argnums=1)
  assert not jnp.allclose(apply(x, True, jax.random.key(0)), apply(x, True, jax.random.key(1)))
  assert jnp.array_equal(apply(x, False, jax.random.key(0)), apply(x, False, jax.random.key(1)))


def test_lenet_sparse_c3_reads_only_the_papers_table():
  """C3 map 0 reads S2 maps 0, 1, 2 (Table I): changing S2 map 3 leaves it alone, map 2 does not."""
  c3 = lenet.ConvTanh(16, lenet.C3_TABLE)
  s2 = jax.random.normal(jax.random.key(0), (1, 14, 14, 6))
  variables = jax.jit(c3.init)(jax.random.key(1), s2)
  map0 = jax.jit(lambda s2: c3.apply(variables, s2)[..., 0])
  assert jnp.allclose(map0(s2.at[..., 3].add(1.0)), map0(s2))
  assert not jnp.allclose(map0(s2.at[..., 2].add(1.0)), map0(s2))


def test_resnet_v1_5_moves_the_stride_from_the_1x1_to_the_3x3_conv():
  def kernel_strides(**kwargs):
    model = nets.create("resnet50", **kwargs)
    _, state = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3)), train=False, capture_intermediates=True),
      abstract_init(model, (64, 64, 3)),
    )
    block = state["intermediates"]["conv3_1"]
    return [block[f"Conv_{i}"]["__call__"][0].shape[1] for i in range(2)]  # sizes after the 1x1 and the 3x3

  assert kernel_strides() == [8, 8]  # the 1x1 already halves 16 -> 8
  assert kernel_strides(stride_in_3x3=True) == [16, 8]


@pytest.mark.parametrize(
  "name,kwargs,message",
  [
    ("vgg", {}, r"Unknown model 'vgg'.*'vgg16'"),
    ("resnet", {"depth": 20}, r"Unknown model 'resnet'.*'resnet152'.*'resnet50'"),
    ("preact_resnet", {"depth": 165}, r"depth 9n\+2 \(e.g. 164, 1001\); got 165"),
    ("preact_resnet", {"depth": 1001, "bottleneck": False}, r"depth 6n\+2 .*got 1001"),
  ],
)
def test_unknown_names_and_depths_are_errors_naming_the_valid_ones(name, kwargs, message):
  with pytest.raises(ValueError, match=message):
    zoo_count(name, (32, 32, 3), **kwargs)


def test_every_registered_net_takes_the_arguments_train_py_passes():
  for name in nets.names():
    model = nets.create(name, num_classes=10, dtype=jnp.float32, axis_name=None, conv_weight_grad="lax")
    assert model.num_classes == 10, name


# One net of each module, small enough to trace fast at 32x32 (alexnet ungrouped: a grouped
# convolution takes lax's weight gradient in every mode).
ONE_OF_EACH = [
  ("lenet5", {"sparse_c3": True}),
  ("alexnet", {"cifar_stem": True, "grouped": False, "classifier_width": 8}),
  ("vgg11", {"classifier_width": 8}),
  ("googlenet", {"cifar_stem": True}),
  ("resnet18", {"cifar_stem": True}),
  ("cifar_resnet", {"depth": 8, "shortcut": "B"}),
  ("preact_resnet", {"depth": 11}),
]


@pytest.mark.parametrize("name,kwargs", ONE_OF_EACH, ids=[name for name, _ in ONE_OF_EACH])
def test_every_convolution_takes_the_weight_gradient_the_net_is_created_with(name, kwargs):
  def jaxpr(mode):
    model = nets.create(name, num_classes=10, conv_weight_grad=mode, **kwargs)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), train=False))
    train = lambda v, x: model.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)}, mutable=["batch_stats"])
    return str(jax.make_jaxpr(train)(variables, x))  # in training: GoogLeNet's auxiliary heads too

  convolutions = jaxpr("lax").count("conv_general_dilated[")
  assert convolutions > 0 and "custom_vjp" not in jaxpr("lax")
  assert jaxpr("patches").count("custom_vjp_call[") == convolutions  # each one's gradient by patches
