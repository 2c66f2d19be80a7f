"""depthlab/actions.py: the periodic actions of the loop, each run on made-up ticks, without
training a net: when each acts, and what it puts in the step's line or raises."""

import types

import jax
import numpy as np
import pytest

from configs import default
from depthlab import actions, errors, parallel


class Writer:
  """A MetricWriter that keeps what it is given."""

  active = True

  def __init__(self):
    self.lines, self.progress_lines, self.alerts, self.preempted = [], [], [], False

  def write(self, step, line):
    self.lines.append((step, dict(line)))

  def progress(self, step, line, seconds_per_step):
    self.progress_lines.append((step, dict(line), seconds_per_step))

  def alert(self, title, text):
    self.alerts.append(title)

  def summarize(self, summary):
    pass

  def mark_preempted(self):
    self.preempted = True


@pytest.fixture
def config():
  config = default.get_config()
  config.total_steps, config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 100, 20, 50, 40
  config.warmup_steps, config.batch_size = 0, 8
  return config


def fake_trainer(config, evaluations=None):
  data_parallel = parallel.data_parallel("pmap", num_devices=1)
  evaluate = lambda: (
    (evaluations.append(1) if evaluations is not None else None) or {"test_error": 0.5, "test_examples": 9}
  )
  return types.SimpleNamespace(config=config, data_parallel=data_parallel, evaluate=evaluate)


def tick(trainer, step, losses=(1.0,), last=False):
  losses = np.asarray(losses, np.float32)
  metrics = trainer.data_parallel.replicate({"train_loss": losses, "train_error": losses / 4})
  return actions.Tick(step, last or step == trainer.config.total_steps, metrics)


def test_training_metrics_log_the_means_since_the_last_line_at_log_steps_with_rate_and_throughput(config):
  trainer, writer = fake_trainer(config), Writer()
  metrics = actions.TrainingMetrics(trainer, actions.Throughput(0.0, announce=False), writer, first_step=0)
  lines = {}
  for step in range(1, 41):
    t = tick(trainer, step, [float(step)])
    metrics(t)
    lines[step] = t.line
  assert lines[19] == {} and lines[39] == {}
  assert lines[20]["train_loss"] == pytest.approx(np.mean(range(1, 21)))
  assert lines[40]["train_loss"] == pytest.approx(np.mean(range(21, 41)))  # a new window after each line
  assert lines[40]["lr"] == pytest.approx(0.1) and lines[40]["images_per_sec"] > 0
  assert [step for step, *_ in writer.progress_lines] == [10]  # the early line, on the console only
  assert writer.lines == []


def test_a_non_finite_training_loss_stops_the_run_at_its_log_step(config):
  trainer = fake_trainer(config)
  metrics = actions.TrainingMetrics(trainer, actions.Throughput(0.0, announce=False), Writer(), first_step=0)
  metrics(tick(trainer, 19, [np.nan]))
  with pytest.raises(FloatingPointError, match="non-finite loss by step 20"):
    metrics(tick(trainer, 20))


def test_evaluation_comes_at_eval_steps_the_first_log_step_and_the_end(config):
  evaluations = []
  trainer = fake_trainer(config, evaluations)
  evaluate = actions.Evaluation(trainer, actions.Throughput(0.0, announce=False))
  evaluated_at = []
  for step in range(1, 101):
    t = tick(trainer, step)
    evaluate(t)
    if t.line:
      evaluated_at.append(step)
      assert t.line == {"test_error": 0.5}  # the example counts stay out of the line
  assert evaluated_at == [20, 50, 100] and len(evaluations) == 3
  assert evaluate.results["test_examples"] == 9


def test_the_time_an_evaluation_takes_is_not_training_time():
  throughput = actions.Throughput(0.0, announce=False)
  throughput.new_window(0)
  start = throughput.start
  with throughput.paused():
    pass
  assert throughput.start > start


def test_checkpoints_come_at_checkpoint_steps_and_before_a_stop_but_not_at_the_last_step(config):
  trainer, saved = fake_trainer(config), []
  checkpoint = actions.Checkpoint(config, lambda: saved.append(step))
  save_last = actions.SaveLast(lambda: saved.append(step))
  for step in range(1, 101):
    t = tick(trainer, step)
    t.signum = 15 if step == 55 else 0
    t.collapsed = step == 63
    save_last(t)
    checkpoint(t)
  assert saved == [40, 55, 63, 80, 100]


def test_a_signal_stops_the_run_once_saved_naming_the_checkpoint_and_the_exit_code(config, capsys):
  trainer, writer = fake_trainer(config), Writer()
  ckpts = types.SimpleNamespace(directory="/w/checkpoints", wait=lambda: None)
  stop = actions.Stop(ckpts, writer)
  stop(tick(trainer, 54))  # no signal: nothing happens
  t = tick(trainer, 55)
  t.signum = 15
  with pytest.raises(SystemExit) as exited:
    stop(t)
  assert exited.value.code == 128 + 15 and writer.preempted
  assert (
    "Stopped by signal 15 at step 55; the checkpoint of step 55 is saved in /w/checkpoints" in capsys.readouterr().out
  )
  last = tick(trainer, 100)
  last.signum = 15
  stop(last)  # at the last step the run finishes instead


def test_a_collapse_stops_the_run_saying_how_to_go_on(config):
  trainer = fake_trainer(config)
  stop = actions.Stop(types.SimpleNamespace(directory="/w/checkpoints", wait=lambda: None), Writer())
  t = tick(trainer, 63)
  t.collapsed = True
  with pytest.raises(errors.TrainingCollapsed, match="--config.stop_on_collapse=False"):
    stop(t)


def test_watch_collapse_asks_for_a_stop_when_every_seed_has_been_at_chance_collapse_steps_in_a_row(config):
  config.collapse_steps, writer = 40, Writer()
  watch = actions.WatchCollapse(config, num_classes=10, writer=writer)
  stops = []
  for step in (20, 40, 60, 80):
    t = actions.Tick(step, False, {}, line={"train_loss": float(np.log(10)), "train_error": 0.9})
    watch(t)
    stops.append(t.collapsed)
  assert stops == [False, True, False, False] and len(writer.alerts) == 1  # steps 1-40 at chance


def test_a_profile_traces_the_steps_the_config_names(config, monkeypatch, tmp_path, capsys):
  calls = []
  monkeypatch.setattr(jax.profiler, "start_trace", lambda d: calls.append(("start", d)))
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
  config.profile_first_step, config.profile_steps = 5, 3
  trainer = fake_trainer(config)
  profile = actions.Profile(config, str(tmp_path), announce=True)
  for step in range(1, 20):
    calls.append(step)
    profile(tick(trainer, step))
  directory = str(tmp_path / "profile")
  assert calls[calls.index(("start", directory)) - 1] == 4  # after step 4: steps 5, 6, 7 traced
  assert calls[calls.index(("stop",)) - 1] == 7 and calls.count(("stop",)) == 1
  assert f"Profile of steps 5-7 written to {directory}" in capsys.readouterr().out


def test_no_profile_by_default(config, monkeypatch, tmp_path):
  monkeypatch.setattr(jax.profiler, "start_trace", lambda d: pytest.fail("traced"))
  trainer = fake_trainer(config)
  profile = actions.Profile(config, str(tmp_path), announce=True)
  for step in range(1, 20):
    profile(tick(trainer, step))
