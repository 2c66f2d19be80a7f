"""depthlab/run_setup.py: the one setup path that train.py, eval.py and the benchmark share."""

import jax
import numpy as np
import pytest

from depthlab import run_setup, validation
from depthlab.state import step_count


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
