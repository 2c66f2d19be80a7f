"""train.py and the loop: the recipe's schedule, what a run writes, and the same result on any device layout."""

import functools
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from configs import default
from depthlab import cli, input_pipeline, loop, naming, parallel, steps
from depthlab import state as state_lib
from depthlab.writers import read_metrics
from tests.conftest import real_cifar10_dir, requires_cifar10, requires_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_flags(*argv):
  """The config that `python train.py <argv>` trains with."""
  return cli.parse_command_line(list(argv))[0]


# ----------------------------------------------------------------------------------- recipe


def test_learning_rate_is_divided_by_10_at_32k_and_48k():
  schedule = state_lib.learning_rate_schedule(default.get_config())
  expected = {400: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001, 64_000: 0.001}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr), step


@pytest.mark.parametrize("config_file", ["resnet20", "plain56", "resnet56", "resnet110", "plain110"])
def test_every_depth_plain_or_residual_warms_up_at_0_01_for_400_steps(config_file):
  schedule = state_lib.learning_rate_schedule(parse_flags(f"--config=configs/{config_file}.py"))
  expected = {0: 0.01, 399: 0.01, 400: 0.1, 31_999: 0.1, 32_000: 0.01, 48_000: 0.001, 64_000: 0.001}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr), step


def test_the_papers_exact_recipe_is_one_override_away():
  schedule = state_lib.learning_rate_schedule(parse_flags("--config=configs/resnet56.py", "--config.warmup_steps=0"))
  expected = {0: 0.1, 31_999: 0.1, 32_000: 0.01, 48_000: 0.001}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr), step


def test_command_line_overrides_any_field():
  config = parse_flags(
    "--config=configs/plain56.py",
    "--config.model.depth=110",
    "--config.dataset.data_dir=/data",
    "--config.wandb.mode=disabled",
  )
  assert (config.model.depth, config.model.residual) == (110, False)
  assert config.dataset.data_dir == "/data" and config.wandb.mode == "disabled"


def test_run_names_say_what_is_trained():
  config = parse_flags("--config=configs/resnet32.py", "--config.model.shortcut=B", "--config.seed=3")
  assert naming.run_name(config) == "resnet32-B-seed3"
  assert naming.run_name(parse_flags("--config=configs/plain20.py")) == "plain20"
  assert naming.run_name(parse_flags("--config=configs/vgg16.py")) == "vgg16"
  assert naming.run_name(parse_flags("--config=configs/preact_resnet164.py")) == "preact_resnet164"
  assert naming.run_name(parse_flags("--config=configs/resnet56.py", "--config.num_seeds=4")) == "resnet56-seeds0-3"


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


def test_workdir_follows_from_the_experiment_and_run_name_unless_given():
  assert cli.parse_command_line(["--config=configs/plain20.py"])[1] == "runs/plain20"
  assert (
    cli.parse_command_line(["--config=configs/resnet56.py", "--config.experiment=fig6", "--config.seed=2"])[1]
    == "runs/fig6/resnet56-seed2"
  )
  assert cli.parse_command_line(["--config=configs/resnet56.py", "--workdir=/tmp/x"])[1] == "/tmp/x"


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
  assert {"test_loss", "test_error"} <= set(lines[1]) and "test_loss" not in lines[0]
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


def test_the_conv_weight_gradient_by_patches_trains_as_lax_s(mock_cifar10, tiny_config, tmp_path):
  for mode in ("lax", "patches"):  # the model is created with the config's mode
    tiny_config.conv_weight_grad = mode
    assert state_lib.create_model(tiny_config, num_classes=10).conv_weight_grad == mode
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


def test_an_unknown_seed_batching_is_an_error_naming_the_choices():
  config = default.get_config()
  config.num_seeds, config.seed_batching = 2, "pmap"
  with pytest.raises(ValueError, match="seed_batching must be auto, vmap or loop"):
    steps.over_seeds(lambda x: x, config, (0,))


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
def test_resnet20_learns_real_cifar10(tmp_path, real_cache_dir):
  """About 300 steps on the real data bring the train error well below chance (90%)."""
  config = parse_flags("--config=configs/resnet20.py")
  config.dataset.data_dir, config.dataset.cache_dir = real_cifar10_dir(), real_cache_dir
  config.batch_size, config.total_steps, config.num_devices = 64, 300, 1
  config.log_every_steps, config.eval_every_steps, config.wandb.mode = 100, 300, "disabled"
  final = loop.train_and_evaluate(config, str(tmp_path))
  assert final["train_error"] < 0.75
  assert final["test_examples"] == 10_000 and final["test_error"] < 0.85
