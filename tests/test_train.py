"""train.py and the loop (depthlab/loop.py): what a run writes, and the same result on any device layout,
any number of steps per dispatch and any number of seeds per run."""

import json
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from depthlab import loop, trainer
from depthlab.run_files import read_metrics
from tests.conftest import (
  REPO,
  parse_flags,
  process_env,
  real_cifar10_dir,
  requires_cifar10,
  requires_devices,
  train_py,
)

# ------------------------------------------------------------------------------ what a run does


def test_grad_norms_are_logged_per_block_from_stem_to_classifier(mock_cifar10, tiny_config, tmp_path):
  tiny_config.log_grad_norms = True
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  line = read_metrics(tmp_path)[0]
  norms = {k: v for k, v in line.items() if k.startswith("grad_norm/")}
  blocks = ["block1", "block2", "block3"]  # ResNet-8: one block per stage
  assert sorted(norms) == sorted(f"grad_norm/{b}" for b in ["stem_conv", "stem_bn", *blocks, "classifier"])
  assert all(0 < v < float("inf") for v in norms.values())


def test_a_run_writes_config_and_metrics(mock_cifar10, tiny_config, tmp_path):
  final = loop.train_and_evaluate(tiny_config, str(tmp_path))
  with open(tmp_path / "config.json") as f:
    written = json.load(f)
  assert written["model"]["depth"] == 8 and written["num_params"] == final["num_params"] > 0
  lines = read_metrics(tmp_path)
  assert [line["step"] for line in lines] == [2, 4]
  assert {"train_loss", "train_error", "lr", "images_per_sec"} <= set(lines[1])
  assert {"test_loss", "test_error"} <= set(lines[1])
  assert {"test_loss", "test_error"} <= set(lines[0])  # the first log step evaluates: a test error within minutes
  assert final["test_error"] == lines[-1]["test_error"] and final["test_examples"] == 256


def test_same_seed_same_run_other_seed_other_run(mock_cifar10, tiny_config, tmp_path):
  runs = []
  for seed in (0, 0, 1):
    tiny_config.seed = seed
    runs.append(loop.train_and_evaluate(tiny_config, str(tmp_path / f"{len(runs)}"))["train_loss"])
  assert runs[0] == runs[1] != runs[2]


def losses_by(config, tmp_path, field, values):
  """Per value of config.<field>: the (train loss, test loss) of each log line of a run with it."""
  losses = {}
  for value in values:
    config[field] = value
    loop.train_and_evaluate(config, str(tmp_path / str(value)))
    losses[value] = [(m["train_loss"], m.get("test_loss", 0)) for m in read_metrics(tmp_path / str(value))]
  return losses


@requires_devices(8)
@pytest.mark.parametrize("num_devices", [2, 8])
def test_cross_replica_bn_on_n_devices_matches_one_device(mock_cifar10, tiny_config, tmp_path, num_devices):
  tiny_config.cross_replica_bn, tiny_config.log_every_steps = True, 1
  losses = losses_by(tiny_config, tmp_path, "num_devices", (1, num_devices))
  np.testing.assert_allclose(losses[num_devices], losses[1], rtol=2e-4)


@requires_devices(4)
@pytest.mark.parametrize("cross_replica_bn", [False, True])
def test_shard_map_gives_the_same_result_as_pmap(mock_cifar10, tiny_config, tmp_path, cross_replica_bn):
  tiny_config.num_devices, tiny_config.log_every_steps = 4, 1
  tiny_config.cross_replica_bn = cross_replica_bn
  losses = losses_by(tiny_config, tmp_path, "parallelism", ("pmap", "shard_map"))
  np.testing.assert_allclose(losses["shard_map"], losses["pmap"], rtol=1e-5)


# ------------------------------------------------------------ steps per dispatch, several seeds


def test_several_steps_per_dispatch_train_as_the_same_steps_one_by_one(mock_cifar10, tiny_config, tmp_path):
  tiny_config.log_every_steps, tiny_config.total_steps = 4, 8  # steps 1-3 and 5-7 run one by one
  runs = {}
  for n in (1, 2, 4):
    tiny_config.steps_per_dispatch = n
    final = loop.train_and_evaluate(tiny_config, str(tmp_path / str(n)))
    runs[n] = [final["test_loss"]] + [(m["step"], m["train_loss"]) for m in read_metrics(tmp_path / str(n))]
  for n in (2, 4):
    assert [step for step, _ in runs[n][1:]] == [4, 8]
    np.testing.assert_allclose([loss for _, loss in runs[n][1:]], [loss for _, loss in runs[1][1:]], rtol=1e-4)
    np.testing.assert_allclose(runs[n][0], runs[1][0], rtol=1e-4)


def test_the_conv_weight_gradient_by_patches_trains_as_lax_s(mock_cifar10, tiny_config, tmp_path):
  for mode in ("lax", "patches"):  # the model is created with the config's mode
    tiny_config.conv_weight_grad = mode
    assert trainer.create_model(tiny_config, num_classes=10).conv_weight_grad == mode
  losses = losses_by(tiny_config, tmp_path, "conv_weight_grad", ("lax", "patches"))
  np.testing.assert_allclose(losses["patches"], losses["lax"], rtol=1e-4)


@pytest.mark.parametrize("seed_batching", ["vmap", "loop"])
def test_k_seeds_in_one_run_train_as_k_one_seed_runs(mock_cifar10, tiny_config, tmp_path, seed_batching):
  tiny_config.num_seeds, tiny_config.seed, tiny_config.seed_batching = 2, 3, seed_batching
  final = loop.train_and_evaluate(tiny_config, str(tmp_path / "both"))
  line = read_metrics(tmp_path / "both")[-1]
  for key in ("train_loss", "train_error", "test_loss", "test_error"):
    per_seed = [line[f"seed{s}/{key}"] for s in (3, 4)]
    assert line[key] == pytest.approx(np.mean(per_seed))
    assert line[f"{key}_std"] == pytest.approx(np.std(per_seed, ddof=1))
  assert line["seed3/train_loss"] != line["seed4/train_loss"]  # own init, data order, augmentation
  tiny_config.num_seeds, tiny_config.seed_batching = 1, "auto"
  for seed in (3, 4):
    tiny_config.seed = seed
    alone = loop.train_and_evaluate(tiny_config, str(tmp_path / str(seed)))
    np.testing.assert_allclose(line[f"seed{seed}/train_loss"], alone["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(line[f"seed{seed}/test_error"], alone["test_error"], atol=1 / 256 + 1e-6)
    assert final["num_params"] == alone["num_params"]  # of one net, not of both


def test_several_seeds_resume_from_their_checkpoint(mock_cifar10, tiny_config, tmp_path):
  tiny_config.num_seeds, tiny_config.checkpoint_every_steps = 2, 2
  whole = loop.train_and_evaluate(tiny_config, str(tmp_path / "whole"))
  tiny_config.total_steps = 2
  loop.train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
  tiny_config.total_steps = 4
  resumed = loop.train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
  for key in ("seed0/train_loss", "seed1/train_loss", "seed1/test_error"):
    np.testing.assert_allclose(resumed[key], whole[key], rtol=1e-4)


@requires_devices(4)
def test_several_seeds_on_several_devices_match_one_device(mock_cifar10, tiny_config, tmp_path):
  tiny_config.num_seeds, tiny_config.cross_replica_bn = 2, True
  finals = {}
  for n in (1, 4):
    tiny_config.num_devices = n
    finals[n] = loop.train_and_evaluate(tiny_config, str(tmp_path / str(n)))
  for key in ("seed0/train_loss", "seed1/train_loss", "test_loss"):
    np.testing.assert_allclose(finals[4][key], finals[1][key], rtol=2e-4)


def test_an_imagenet_resnet_trains_and_evaluates_on_imagenette_sized_input(tiny_config, tmp_path):
  """The ImageNet pipeline end to end on mock imagenette: random-resized crops, centre-crop eval."""
  tiny_config.model = ml_collections.ConfigDict({"name": "resnet18"})
  tiny_config.dataset.name, tiny_config.dataset.test_split = "imagenette/160px-v2", "validation"
  tiny_config.dataset.image_size, tiny_config.dataset.augmentation = 32, "random_resized_crop"
  tiny_config.batch_size, tiny_config.eval_batch_size, tiny_config.total_steps = 4, 8, 2
  tiny_config.log_every_steps = tiny_config.eval_every_steps = 2
  with tfds.testing.mock_data(num_examples=16):
    final = loop.train_and_evaluate(tiny_config, str(tmp_path))
  assert final["test_examples"] == 16 and np.isfinite(final["train_loss"]) and final["num_params"] == 11_181_642


@requires_devices(3)
def test_batch_that_does_not_divide_over_devices_is_an_error(tiny_config, tmp_path):
  tiny_config.num_devices = 3
  with pytest.raises(ValueError, match="batch_size 16 does not divide over 3 devices"):
    loop.train_and_evaluate(tiny_config, str(tmp_path))


def test_non_finite_loss_stops_the_run_naming_the_step(mock_cifar10, tiny_config, tmp_path):
  tiny_config.learning_rate, tiny_config.log_every_steps = float("nan"), 1
  with pytest.raises(FloatingPointError, match="non-finite loss by step 2"):
    loop.train_and_evaluate(tiny_config, str(tmp_path))


def test_train_py_runs_without_importing_tensorflow(tmp_path):
  script = f"""
import sys
import tensorflow_datasets as tfds
from absl import flags
import train
from depthlab import cli
cli.define_flags()
sys.argv = ["train.py", "--config=configs/resnet20.py", "--config.model.depth=8", "--config.batch_size=16",
            "--config.total_steps=2", "--config.log_every_steps=1", "--config.wandb.mode=disabled",
            "--config.dataset.cache_dir=", "--config.num_devices=1", "--workdir={tmp_path}"]
flags.FLAGS(sys.argv)
with tfds.testing.mock_data(num_examples=64):
  train.main(["train.py"])
assert "tensorflow" not in sys.modules, "training imported TensorFlow"
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Done: resnet8" in result.stdout and len(read_metrics(tmp_path)) == 2


@requires_cifar10
def test_a_resnet_learns_real_cifar10(tmp_path, real_cache_dir):
  """200 steps on the real data bring the train error well below chance (90%). ResNet-8
  (the paper's net at n = 1): the data, augmentation, net and optimizer of every depth, at 2/5
  of ResNet-20's cost."""
  config = parse_flags("--config=configs/resnet20.py", "--config.model.depth=8")
  config.dataset.data_dir, config.dataset.cache_dir = real_cifar10_dir(), real_cache_dir
  config.batch_size, config.total_steps, config.num_devices = 64, 200, 1
  config.log_every_steps, config.eval_every_steps, config.wandb.mode = 100, 200, "disabled"
  final = loop.train_and_evaluate(config, str(tmp_path))
  assert final["train_error"] < 0.75
  assert final["test_examples"] == 10_000 and final["test_error"] < 0.85


def test_a_profile_of_the_steps_the_config_names_is_written_to_the_workdir(tiny_config, tmp_path):
  """Whole run: train.py with --config.profile_first_step traces those steps with jax.profiler."""
  tiny_config.profile_first_step, tiny_config.profile_steps = 2, 2
  result = subprocess.run(
    train_py(tiny_config, tmp_path), cwd=REPO, env=process_env(1), capture_output=True, text=True, check=True
  )
  assert f"Profile of steps 2-3 written to {tmp_path / 'profile'}" in result.stdout
  assert list((tmp_path / "profile").rglob("*.xplane.pb"))
