"""configs/: the paper's recipe in default.py, every field explained, one file per experiment."""

import ast
import functools
import glob
import importlib
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from depthlab import batches, input_pipeline, loop, steps, trainer
from depthlab import state as state_lib
import nets
from tests.conftest import REPO

DEPTHS = (20, 32, 44, 56, 110)


def test_every_default_field_has_a_comment():
  with open(default.__file__) as f:
    assignments = [line for line in f if re.match(r"\s*config\.[\w.]+ = ", line)]
  plain_fields = [line for line in assignments if "ConfigDict()" not in line]
  assert plain_fields and all("  # " in line for line in plain_fields), [
    line for line in plain_fields if "  # " not in line
  ]


def test_default_is_the_papers_recipe():
  config = default.get_config()
  assert (config.batch_size, config.total_steps, config.learning_rate) == (128, 64_000, 0.1)
  assert (config.momentum, config.weight_decay, tuple(config.lr_boundaries)) == (0.9, 1e-4, (32_000, 48_000))
  assert (config.dataset.crop_padding, config.dataset.random_flip) == (4, True)
  assert config.model.shortcut == "A" and config.dataset.validation_size == 0


@pytest.mark.parametrize("kind", ["resnet", "plain"])
@pytest.mark.parametrize("depth", DEPTHS)
def test_one_config_per_net_and_depth(kind, depth):
  config = importlib.import_module(f"configs.{kind}{depth}").get_config()
  assert config.model.depth == depth and config.model.residual == (kind == "resnet")
  assert config.warmup_steps == 400  # every depth, plain or residual: the same recipe


def test_the_names_other_tools_rely_on_exist():
  config = default.get_config()
  for name in [
    "model.name",
    "model.depth",
    "model.residual",
    "model.shortcut",
    "batch_size",
    "total_steps",
    "log_every_steps",
    "eval_every_steps",
    "checkpoint_every_steps",
    "seed",
    "dataset.data_dir",
    "wandb.mode",
  ]:
    node = config
    for part in name.split("."):
      node = node[part]


# ------------------------------------------------------------------------ the famous nets on CIFAR-10

NET_CONFIGS = (
  "lenet5",
  "alexnet",
  "vgg16",
  "googlenet",
  "resnet18",
  "resnet50",
  "preact_resnet164",
  "preact_resnet1001",
)


def net_config(name):
  return importlib.import_module(f"configs.{name}").get_config()


def cifar_count(config) -> int:
  model = trainer.create_model(config, num_classes=10)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3)), train=False), variables)
  assert logits.shape == (2, 10)
  return nets.count_params(variables["params"])


# Parameters of each CIFAR-10 version (docs/nets.md's table), training-only heads included.
CIFAR_COUNTS = {
  "lenet5": 62_006,
  "alexnet": 5_721_994,
  "vgg16": 15_249_354,
  "googlenet": 10_333_886,
  "resnet18": 11_173_962,
  "resnet50": 23_520_842,
  "preact_resnet164": 1_703_258,
}


@pytest.mark.parametrize("name", sorted(CIFAR_COUNTS))
def test_net_config_builds_its_cifar_version(name):
  assert cifar_count(net_config(name)) == CIFAR_COUNTS[name]


def test_net_configs_name_registered_nets_with_the_default_recipe_fields():
  base = default.get_config()
  for name in NET_CONFIGS:
    config = net_config(name)
    assert config.model.name in nets.names(), name
    assert set(base) == set(config) and config.dataset == base.dataset, name


def test_the_imagenette_config_is_the_paper_s_resnet50_on_imagenet_sized_input():
  config = net_config("resnet50_imagenette")
  assert set(default.get_config()) == set(config) and dict(config.model) == {"name": "resnet50"}
  assert (config.dataset.image_size, config.dataset.augmentation) == (224, "random_resized_crop")
  assert config.dataset.test_split == "validation" and config.batch_size == 256
  assert max(config.lr_boundaries) < config.total_steps


@pytest.fixture
def tiny_mock_cifar10():
  """16 mock images per split: enough for a step and an evaluation of a big net."""
  with tfds.testing.mock_data(num_examples=16):
    yield


def tiny_run(config, tiny_config):
  """The config's net and recipe with tiny_config's run settings (mock data, one device, no wandb)."""
  for field in ("batch_size", "log_every_steps", "eval_every_steps", "num_devices", "wandb", "dataset"):
    config[field] = tiny_config[field]
  config.batch_size, config.total_steps, config.eval_batch_size = 4, 1, 16
  return config


def test_lenet5_without_batch_norm_trains_and_evaluates_on_mock_data(tiny_mock_cifar10, tiny_config, tmp_path):
  final = loop.train_and_evaluate(tiny_run(net_config("lenet5"), tiny_config), str(tmp_path))
  assert final["test_examples"] == 16 and np.isfinite(final["train_loss"]) and final["num_params"] == 62_006


def one_train_step(config):
  """steps.train_step once on 4 mock images, as one device of a pmap runs it (vmap names the axis)."""
  dataset = input_pipeline.load_dataset(config.dataset)
  model = trainer.create_model(config, dataset.num_classes)
  state = state_lib.create_train_state(config, model, jax.random.key(0), dataset.train.images.shape[1:])
  batch = {
    "image": batches.normalize(dataset.train.images[None, :4], dataset.mean_image),
    "label": dataset.train.labels[None, :4],
  }
  step = jax.vmap(
    functools.partial(steps.train_step, aux_loss_weight=config.aux_loss_weight),
    axis_name=steps.AXIS,
    in_axes=(0, 0, None),
  )
  new_state, metrics = jax.jit(step)(jax.tree_util.tree_map(lambda x: x[None], state), batch, jax.random.key(1))
  return state, new_state, metrics


# Shrunk where the full depth would only slow the compilation down.
SMALLER = {"preact_resnet164": {"depth": 11}}


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "preact_resnet164"])
def test_net_config_trains_one_step_on_mock_data(name, tiny_mock_cifar10, tiny_config):
  config = tiny_run(net_config(name), tiny_config)
  config.model.update(SMALLER.get(name, {}))
  state, new_state, metrics = one_train_step(config)
  assert int(new_state.step[0]) == 1 and np.isfinite(metrics["train_loss"]).all()
  moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b[0])), state.params, new_state.params)
  assert all(jax.tree_util.tree_leaves(moved)), name  # every parameter (aux heads too) got a gradient


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))), ids=os.path.basename)
def test_every_config_gives_the_command_that_trains_it(path):
  if os.path.basename(path) == "__init__.py":
    return
  with open(path) as f:
    docstring = ast.get_docstring(ast.parse(f.read()))
  assert f"python train.py --config=configs/{os.path.basename(path)}" in docstring
