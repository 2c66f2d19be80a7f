"""depthlab/validation.py: every config mistake is found before anything heavy starts and told as one
message naming the field and the fix; train.py shows it without a traceback."""

import subprocess
import sys

import ml_collections
import pytest

from configs import default
from depthlab import cli, errors, validation
from tests.conftest import REPO


def problems_of(config, **kwargs):
  with pytest.raises(errors.ConfigError) as error:
    validation.validate_config(config, **kwargs)
  return "\n".join(error.value.problems)


def test_every_config_file_passes():
  import glob
  import importlib

  for path in glob.glob(f"{REPO}/configs/*.py"):
    name = path.rsplit("/", 1)[1][:-3]
    if name != "__init__":
      validation.validate_config(importlib.import_module(f"configs.{name}").get_config(), num_devices=8)


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("learning_rate", -0.1, "learning_rate = -0.1: must be a positive number"),
    ("total_steps", 0, "total_steps = 0: must be at least 1"),
    ("log_every_steps", 0, "log_every_steps = 0: must be at least 1"),
    ("checkpoint_every_steps", 0, "checkpoint_every_steps = 0: must be at least 1"),
    ("batch_size", 0, "batch_size = 0: must be at least 1"),
    ("parallelism", "pjit", "parallelism = 'pjit': unknown choice; set --config.parallelism to one of"),
    (
      "seed_batching",
      "pmap",
      "seed_batching = 'pmap': unknown choice; set --config.seed_batching to one of auto, vmap, loop",
    ),
    ("steps_per_dispatch", 0, "steps_per_dispatch = 0: must be at least 1"),
    ("profile_first_step", -1, "profile_first_step = -1: must not be negative"),
    ("profile_steps", 0, "profile_steps = 0: must be at least 1"),
    (
      "warmup_shape",
      "cosine",
      "warmup_shape = 'cosine': unknown choice; set --config.warmup_shape to one of constant, linear",
    ),
  ],
)
def test_a_value_out_of_range_names_the_field_and_the_fix(field, value, message):
  config = default.get_config()
  config[field] = value
  assert message in problems_of(config)


def test_an_augmentation_that_does_not_fit_the_image_size_is_a_problem_naming_the_fix():
  config = default.get_config()
  config.dataset.augmentation = "random_resized_crop"
  assert "random_resized_crop needs an image size; set --config.dataset.image_size, e.g. 224" in problems_of(config)
  config.dataset.augmentation, config.dataset.image_size = "pad_crop_flip", 224
  assert "pad_crop_flip crops the images as stored; set --config.dataset.image_size=0" in problems_of(config)


def test_an_unknown_model_or_a_depth_the_net_cannot_have_is_a_problem():
  config = default.get_config()
  config.model.depth = 21
  assert "CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202, ...); got 21" in problems_of(config)
  config.model.depth, config.model.residual, config.model.zero_init_residual = 20, False, True
  assert "zero_init_residual needs a residual net" in problems_of(config)
  config.model.name = "resnet57"
  assert "model.name = 'resnet57': unknown model" in problems_of(config)


def test_a_typo_in_a_config_file_gets_a_did_you_mean():
  config = default.get_config()
  config.lerning_rate = 0.1
  config.model.dpeth = 20
  problems = problems_of(config)
  assert 'lerning_rate: no such field. Did you mean "learning_rate"?' in problems
  assert 'model.dpeth: cifar_resnet has no such field. Did you mean "depth"?' in problems


def test_a_config_file_that_lacks_a_field_of_default_py_is_a_problem():
  fields = default.get_config().to_dict()
  del fields["seed_batching"], fields["dataset"]["image_size"]
  problems = problems_of(ml_collections.ConfigDict(fields))  # as a file not built on default.py may be
  assert "seed_batching: missing; a config file starts from configs/default.py's get_config()" in problems
  assert "dataset.image_size: missing" in problems


def test_a_value_of_the_wrong_type_in_a_config_file_is_a_problem():
  config = ml_collections.ConfigDict({**default.get_config().to_dict(), "total_steps": "64k"})  # as a file may build it
  assert "total_steps = '64k': must be a int" in problems_of(config)


def test_a_batch_that_does_not_divide_over_the_devices_says_how_to_fix_it():
  config = default.get_config()
  config.batch_size = 100
  assert "use a multiple of 8 (--config.batch_size=...)" in problems_of(config, num_devices=8)
  resumed = validation.device_problems(config, 8, resuming=True)[0]
  assert "--config.batch_size" not in resumed and "--config.num_devices" in resumed  # a resume keeps its batch


def test_a_workdir_that_is_a_file_is_a_problem(tmp_path):
  (tmp_path / "run").write_text("")
  assert "is a file; give a folder" in problems_of(default.get_config(), workdir=str(tmp_path / "run"))


@pytest.mark.parametrize(
  "args, message",
  [
    (["--config=configs/resnet20.py", "--config.learning_rate=-1"], "learning_rate = -1.0: must be a positive number"),
    (["--config=configs/resnet20.py", "--config.modle.depth=20"], 'no config field \'modle\'. Did you mean "model"'),
    (["--config=configs/resnet20.py", "--config.data_dir=/data"], "--config.data_dir: no config field 'data_dir'."),
    (["--config=configs/nope.py"], "--config=configs/nope.py: no such config file"),
    (["--config=configs/resnet20.py", "--config.total_steps=0"], "total_steps = 0: must be at least 1"),
    (["--config=configs/resnet20.py", "--config.num_devices=16"], "num_devices = 16: only 8 devices here"),
    (["--config=configs/resnet20.py", "--config.batch_size=100"], "batch_size 100 does not divide over 8 devices"),
  ],
)
def test_train_py_prints_one_message_and_no_traceback_for_a_bad_config(args, message, tmp_path):
  result = subprocess.run(
    [sys.executable, "train.py", *args, f"--workdir={tmp_path / 'run'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == cli.EXIT_CONFIG, result.stderr[-2000:]
  assert message in result.stderr and "Traceback" not in result.stderr + result.stdout
  assert not (tmp_path / "run").exists()  # a refused config leaves nothing behind
