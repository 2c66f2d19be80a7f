"""depthlab/run_setup.py: the one setup path that train.py, eval.py and the benchmark share."""

import subprocess

import jax
import numpy as np
import pytest

from depthlab import run_setup, validation
from depthlab.state import step_count
from tests.conftest import REPO, make_tiny_config, process_env, train_py


def test_set_up_puts_the_state_and_the_training_data_on_the_devices(mock_cifar10, tiny_config):
  tiny_config.num_devices = 2
  run = run_setup.set_up(tiny_config, run_setup.training_devices(tiny_config))
  assert run.data_parallel.count == 2 and run.first_step == 0 and run.record == {}
  assert run.num_params > 0 and run.dataset.num_classes == 10
  assert run.train_data["image"].shape == (2, *run.dataset.train.images.shape)  # pmap: a copy per device
  state, metrics = run.train_dispatch(1)(run.state, run.train_data, run.key_data, run.orders.for_dispatch_after(0))
  assert step_count(run.data_parallel.single_copy(state)) == 1
  assert np.isfinite(run.data_parallel.to_host(metrics)["train_loss"]).all()


def test_set_up_starts_from_what_restore_gives_and_evaluating_leaves_the_training_data_off(mock_cifar10, tiny_config):
  def restore(template):
    return template.replace(step=template.step + 7), {"wall_time_sec": 1.0}

  run = run_setup.set_up(tiny_config, run_setup.training_devices(tiny_config), restore=restore, for_training=False)
  assert run.first_step == 7 and run.record == {"wall_time_sec": 1.0}
  assert run.train_data is None and run.key_data is None and run.orders is None
  assert int(np.ravel(jax.device_get(run.state.step))[0]) == 7


def test_training_devices_check_the_batch_against_them(tiny_config):
  tiny_config.batch_size, tiny_config.num_devices = 10, 4
  with pytest.raises(validation.ConfigError, match="batch_size 10 does not divide over 4 devices"):
    run_setup.training_devices(tiny_config)


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
    run_setup.use_compilation_cache("")
    assert jax.config.jax_enable_compilation_cache is False
  finally:
    jax.config.update("jax_enable_compilation_cache", before)
