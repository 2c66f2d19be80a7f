"""depthlab/collapse.py: when a net is at chance, when the dead-run alarm goes off, and what a
run does then (stops keeping its checkpoint, or trains on when told to)."""

import os

import numpy as np
import pytest

from configs import default
from depthlab import collapse, errors, loop
from depthlab.run_files import read_metrics


@pytest.mark.parametrize(
  "loss, error, dead",
  [
    (2.3026, 0.90, True),  # uniform predictions
    (2.31, 0.895, True),  # one class for every image, a little noise
    (2.20, 0.90, False),  # learning: the loss is below chance
    (2.30, 0.80, False),  # learning: the error is below chance
    (7.44, 0.90, False),  # blowing up, not (yet) dead
  ],
)
def test_a_net_is_at_chance_when_loss_and_error_are_those_of_uniform_predictions(loss, error, dead):
  assert collapse.at_chance(loss, error, num_classes=10) == dead


def collapse_watch(**fields):
  config = default.get_config()
  config.warmup_steps, config.log_every_steps, config.collapse_steps = 400, 100, 300
  config.update(fields)
  return collapse.CollapseWatch(config, num_classes=10)


DEAD, ALIVE = {"train_loss": 2.3026, "train_error": 0.9}, {"train_loss": 1.9, "train_error": 0.7}


def test_the_alarm_needs_collapse_steps_at_chance_in_a_row_after_the_warm_up():
  watch = collapse_watch()
  assert [watch.update(step, DEAD) for step in (100, 200, 300, 400)] == [[]] * 4  # warm-up windows
  assert watch.update(500, DEAD) == [] and watch.update(600, DEAD) == []
  assert watch.update(700, DEAD) == [""] and watch.since("") == 401  # steps 401-700: 300 at chance
  assert watch.update(800, DEAD) == [] and watch.all_dead()  # raised once
  watch = collapse_watch()
  for step, line in [(500, DEAD), (600, DEAD), (700, ALIVE), (800, DEAD), (900, DEAD)]:
    assert watch.update(step, line) == []  # a learning window starts the count again


def test_the_alarm_watches_each_seed_of_a_several_seed_run():
  watch = collapse_watch(num_seeds=2, seed=3)
  line = {"seed3/train_loss": 2.3026, "seed3/train_error": 0.9, "seed4/train_loss": 1.9, "seed4/train_error": 0.7}
  assert [watch.update(step, line) for step in (500, 600, 700)] == [[], [], ["seed3/"]]
  assert not watch.all_dead()


def collapsing_config(config):
  """A run forced to collapse: weight decay this strong shrinks every weight to zero in a few
  steps, and the net then gives every image the same (uniform) prediction."""
  config.weight_decay, config.warmup_steps = 5.0, 0
  config.batch_size, config.total_steps, config.log_every_steps = 64, 40, 5
  config.checkpoint_every_steps, config.eval_every_steps, config.collapse_steps = 1000, 1000, 10
  return config


def test_a_run_at_chance_raises_the_alarm_and_stops_keeping_its_checkpoint(mock_cifar10, tiny_config, tmp_path, capfd):
  config = collapsing_config(tiny_config)
  with pytest.raises(errors.TrainingCollapsed, match=r"Stopped at step (\d+) .*stop_on_collapse=False"):
    loop.train_and_evaluate(config, str(tmp_path))
  lines = read_metrics(tmp_path)
  stopped = lines[-1]["step"]
  assert stopped < config.total_steps
  assert all(collapse.at_chance(line["train_loss"], line["train_error"], 10) for line in lines[-2:])
  assert "resnet8 is at chance" in capfd.readouterr().err
  assert os.path.isdir(tmp_path / "checkpoints" / str(stopped))


def test_a_run_at_chance_trains_on_when_told_not_to_stop(mock_cifar10, tiny_config, tmp_path, capfd):
  config = collapsing_config(tiny_config)
  config.stop_on_collapse = False
  final = loop.train_and_evaluate(config, str(tmp_path))
  assert read_metrics(tmp_path)[-1]["step"] == config.total_steps and np.isfinite(final["train_loss"])
  assert "resnet8 is at chance" in capfd.readouterr().err
