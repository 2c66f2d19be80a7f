"""depthlab/trainer.py: a run built once on its devices, trained, evaluated, saved and restored;
the devices it picks; the compilation cache; the epochs' example orders."""

import functools
import subprocess

import jax
import numpy as np
import pytest

from depthlab import batches, checkpoints, errors, parallel, trainer
from depthlab import state as state_lib
from depthlab.steps import data_keys
from tests.conftest import REPO, make_tiny_config, process_env, train_py


def test_a_trainer_starts_at_step_0_with_its_state_on_the_devices_and_trains_n_steps_a_dispatch(
  mock_cifar10, tiny_config
):
  tiny_config.num_devices = 2
  run = trainer.Trainer(tiny_config, trainer.training_devices(tiny_config))
  assert run.data_parallel.count == 2 and run.step == 0
  assert run.num_params > 0 and run.dataset.num_classes == 10
  metrics = run.train(3)
  assert run.step == 3 and state_lib.step_count(run.data_parallel.single_copy(run.state)) == 3
  assert run.training_data[0]["image"].shape == (2, *run.dataset.train.images.shape)  # pmap: a copy per device
  losses = run.data_parallel.to_host(metrics)["train_loss"]
  assert losses.shape == (3,) and np.isfinite(losses).all()


def test_training_n_steps_in_one_dispatch_equals_n_dispatches_of_one(mock_cifar10, tiny_config):
  one_by_one, together = (trainer.Trainer(tiny_config, trainer.training_devices(tiny_config)) for _ in range(2))
  losses = [float(one_by_one.data_parallel.to_host(one_by_one.train(1))["train_loss"][0]) for _ in range(3)]
  np.testing.assert_allclose(together.data_parallel.to_host(together.train(3))["train_loss"], losses, rtol=1e-5)


def test_an_evaluation_needs_no_training_data_on_the_devices(mock_cifar10, tiny_config):
  run = trainer.Trainer(tiny_config, trainer.training_devices(tiny_config))
  results = run.evaluate(include_train=True)
  assert "training_data" not in vars(run)  # the cached property was never asked for
  assert results["test_examples"] == 256 and results["train_examples"] == 256
  assert 0 <= results["test_error"] <= 1 and np.isfinite(results["train_loss"])


def test_a_saved_state_restores_into_a_new_trainer_at_its_step(mock_cifar10, tiny_config, tmp_path):
  run = trainer.Trainer(tiny_config, trainer.training_devices(tiny_config))
  run.train(2)
  ckpts = checkpoints.Checkpoints(str(tmp_path))
  run.save(ckpts, {"wall_time_sec": 1.0})
  ckpts.wait()
  again = trainer.Trainer(tiny_config, trainer.training_devices(tiny_config))
  assert again.restore(ckpts)["wall_time_sec"] == 1.0 and again.step == 2
  ckpts.close()
  np.testing.assert_array_equal(
    run.data_parallel.to_host(run.train(1))["train_loss"], again.data_parallel.to_host(again.train(1))["train_loss"]
  )


def test_restoring_from_a_workdir_without_checkpoints_leaves_the_fresh_state(mock_cifar10, tiny_config, tmp_path):
  run = trainer.Trainer(tiny_config, trainer.training_devices(tiny_config))
  ckpts = checkpoints.Checkpoints(str(tmp_path))
  assert run.restore(ckpts) is None and run.step == 0
  ckpts.close()


def test_a_state_that_is_no_longer_finite_is_never_saved(mock_cifar10, tiny_config, tmp_path):
  run = trainer.Trainer(tiny_config, trainer.training_devices(tiny_config))
  run.state = run.state.replace(params=jax.tree_util.tree_map(lambda p: p * np.nan, run.state.params))
  ckpts = checkpoints.Checkpoints(str(tmp_path))
  with pytest.raises(FloatingPointError, match="non-finite parameters after step 0"):
    run.save(ckpts, {})
  assert ckpts.steps() == []
  ckpts.close()


def test_training_devices_check_the_batch_against_them(tiny_config):
  tiny_config.batch_size, tiny_config.num_devices = 10, 4
  with pytest.raises(errors.ConfigError, match="batch_size 10 does not divide over 4 devices"):
    trainer.training_devices(tiny_config)


def test_a_second_start_of_a_run_loads_its_compiled_step_from_the_cache(tmp_path):
  config = make_tiny_config()
  config.compilation_cache_dir = str(tmp_path / "cache")
  env = {k: v for k, v in process_env(1, JAX_LOG_COMPILES="1").items() if not k.startswith("JAX_PERSISTENT")}
  del env["JAX_COMPILATION_CACHE_DIR"]  # the tests' own cache would win over the config's
  log = tmp_path / "run" / "library.log"
  hits = []
  for total_steps in (2, 4):  # a run, then its resume
    config.total_steps = config.eval_every_steps = total_steps
    result = subprocess.run(train_py(config, tmp_path / "run"), cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    hits.append(log.read_text().count("Persistent compilation cache hit") - sum(hits))
  assert hits[0] == 0 and hits[1] > 0, hits
  assert any((tmp_path / "cache").iterdir())


def test_an_empty_cache_dir_turns_the_compilation_cache_off():
  before = jax.config.jax_enable_compilation_cache
  try:
    trainer.use_compilation_cache("")
    assert jax.config.jax_enable_compilation_cache is False
  finally:
    jax.config.update("jax_enable_compilation_cache", before)


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_dispatches_read_each_seed_s_batches_from_orders_computed_once_per_epoch(tiny_config, num_seeds):
  # 40 examples in batches of 16: 2 steps an epoch; dispatches of 5 steps reach 3 epochs.
  tiny_config.num_seeds, tiny_config.steps_per_dispatch = num_seeds, 5
  data_parallel = parallel.data_parallel("pmap", num_devices=1)
  _, data_key = state_lib.run_keys(tiny_config)
  orders = trainer.EpochOrders(tiny_config, data_parallel, data_key, num_examples=40)
  computed = []
  orders._orders = functools.partial(lambda compute, *args: computed.append(args[1]) or compute(*args), orders._orders)
  seed_keys = [data_key] if num_seeds == 1 else list(data_key)
  read = jax.jit(batches.batch_indices, static_argnums=2)
  for first_step in range(0, 20, 5):
    held = data_parallel.to_host(orders.for_dispatch_after(first_step))
    for seed, key in enumerate(seed_keys):
      order_key = data_keys(jax.random.key_data(key))[0]
      for step in range(first_step, first_step + 5):
        np.testing.assert_array_equal(
          read(held if num_seeds == 1 else held[seed], step, 16),
          batches.global_batch_indices(order_key, step, 40, 16),
        )
  assert computed == [0, 2, 5, 7]  # on entering a new epoch only
  orders.for_dispatch_after(19)
  orders.for_dispatch_after(18)  # the same epoch: the same orders
  assert computed == [0, 2, 5, 7, 9]
