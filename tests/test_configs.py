"""configs/: the paper's recipe in default.py, every field explained, one file per experiment."""

import importlib
import re

import pytest

from configs import default

DEPTHS = (20, 32, 44, 56, 110)


def test_every_default_field_has_a_comment():
  with open(default.__file__) as f:
    assignments = [line for line in f if re.match(r"\s*config\.[\w.]+ = ", line)]
  plain_fields = [line for line in assignments if "ConfigDict()" not in line]
  assert plain_fields and all("  # " in line for line in plain_fields), [
      line for line in plain_fields if "  # " not in line]


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
  assert config.warmup_steps == (400 if depth == 110 else 0)


def test_the_names_other_tools_rely_on_exist():
  config = default.get_config()
  for name in ["model.name", "model.depth", "model.residual", "model.shortcut", "batch_size", "total_steps",
               "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "seed", "dataset.data_dir",
               "wandb.mode"]:
    node = config
    for part in name.split("."):
      node = node[part]
