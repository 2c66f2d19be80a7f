"""The periodic actions of the training loop: what happens after a dispatch, at the steps a
config names. Each is a small callable `action(tick)` that reads and fills the step's `Tick`;
the loop runs them in order after every dispatch (depthlab/loop.py, `periodic_actions`):

    TrainingMetrics   the steps' metrics: means since the last line, throughput, rate; progress 10 steps in
    SaveLast          the last step's checkpoint, before its evaluation (a signal then loses no training)
    Evaluation        the evaluation splits, at eval steps, the first log step and the end
    WriteLine         the step's line to metrics.jsonl, wandb and the console
    WatchCollapse     the dead-run alarm, and the stop it asks for (config.stop_on_collapse)
    Profile           a jax.profiler trace of config.profile_steps steps (off by default)
    AgreeOnSignal     a SIGTERM/SIGINT, agreed by all processes at the same step
    Checkpoint        the state at checkpoint steps, and before a stop
    Stop              the stop: a collapse or a signal, saying where the run can resume
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import dataclasses
import json
import math
import os
import time
from typing import TYPE_CHECKING

import jax
import ml_collections
import numpy as np

from depthlab import checkpoints, distributed, errors, parallel, writers
from depthlab.collapse import CollapseWatch, collapse_message
from depthlab.evaluation import per_seed_metrics
from depthlab.state import learning_rate_schedule

if TYPE_CHECKING:  # the loop passes the Trainer in; importing it would put actions above it
  from depthlab.trainer import Trainer

# The host dispatches at most this many dispatches ahead of the device: a signal then waits for
# a few steps, not for a queue of them (76 steps, nearly 4 minutes, seen on ResNet-56 on a CPU).
DISPATCHES_AHEAD = 2
# A run's first progress line comes this many steps in (and then every log_every_steps).
EARLY_PROGRESS_STEPS = 10


@dataclasses.dataclass
class Tick:
  """What the actions of one dispatch share: the step it ended at, its metrics (on the devices),
  the line the step logs (empty: none) and whether, and why, the run stops after it."""

  step: int
  last: bool  # the run's last step
  metrics: dict[str, jax.Array]
  line: dict[str, float] = dataclasses.field(default_factory=dict)
  collapsed: bool = False  # every seed at chance, and config.stop_on_collapse: stop
  signum: int = 0  # a signal that stops the run after this step


def every(steps: int, step: int) -> bool:
  return step % steps == 0


def window_means(
  window: list[dict[str, jax.Array]], data_parallel: parallel.DataParallel, step: int, config: ml_collections.ConfigDict
) -> dict[str, float]:
  """Means of the metrics of the steps since the last line (per seed: see per_seed_metrics);
  a non-finite one stops the run."""
  values = [data_parallel.to_host(metrics) for metrics in window]  # each [steps] or [steps, seeds]
  means = per_seed_metrics({k: np.concatenate([v[k] for v in values]).mean(axis=0) for k in values[0]}, config)
  if not all(math.isfinite(v) for v in means.values()):
    bad = sorted({k.split("/")[0] for k, v in means.items() if not math.isfinite(v) and k.startswith("seed")})
    raise FloatingPointError(
      f"Training diverged: non-finite loss by step {step}{' in ' + ', '.join(bad) if bad else ''} "
      f"({means}). The last checkpoint before it is kept. Lower --config.learning_rate or check the data."
    )
  return means


class Throughput:
  """Seconds per training step over the steps since the last line, leaving out the dispatch
  that compiles (timed alone, and announced) and the evaluations (`paused`)."""

  def __init__(self, run_start: float, announce: bool):
    self.run_start, self.announce = run_start, announce
    self.loop_start = time.perf_counter()
    self.start, self.first_step = 0.0, None  # the window's start, and its first timed step
    self.seconds_per_step = 0.0  # the last measured; 0 until a step past the compiling one

  def dispatched(self, step: int, metrics: dict[str, jax.Array]) -> None:
    if self.first_step is None:  # the first dispatch compiles: wait for it, time the steps after it
      jax.block_until_ready(metrics)
      self.start, self.first_step = time.perf_counter(), step + 1
      if self.announce:
        print(
          f"Step {step} done {self.start - self.run_start:.1f}s after start; it took "
          f"{self.start - self.loop_start:.1f}s, compilation included.",
          flush=True,
        )

  def measure(self, step: int) -> float | None:
    """Seconds per step of the window up to `step`, kept as seconds_per_step; None (and the last
    measure kept) where the window holds no timed step."""
    if step < self.first_step:
      return None
    self.seconds_per_step = (time.perf_counter() - self.start) / (step - self.first_step + 1)
    return self.seconds_per_step

  def new_window(self, step: int) -> None:
    self.start, self.first_step = time.perf_counter(), step + 1

  @contextlib.contextmanager
  def paused(self):
    start = time.perf_counter()
    yield
    self.start += time.perf_counter() - start


class TrainingMetrics:
  """Keeps each dispatch's metrics on the devices, and the host at most DISPATCHES_AHEAD
  dispatches ahead of them; at log steps and the last, puts their means since the last line in
  the step's line, with the throughput and the learning rate. A run's first progress line
  comes EARLY_PROGRESS_STEPS steps in, on the console only."""

  def __init__(self, trainer: Trainer, throughput: Throughput, writer: writers.MetricWriter, first_step: int):
    self.config, self.data_parallel = trainer.config, trainer.data_parallel
    self.throughput, self.writer, self.first_step = throughput, writer, first_step
    self.schedule = learning_rate_schedule(trainer.config)
    self.window = []

  def _means(self, step: int) -> dict[str, float]:
    """The window's means, then (once they are on the host, so the device's work is in it) the
    throughput where the window holds a timed step, and the step's learning rate."""
    means = window_means(self.window, self.data_parallel, step, self.config)
    seconds_per_step = self.throughput.measure(step)
    if seconds_per_step:
      means["images_per_sec"] = self.config.batch_size * self.config.num_seeds / seconds_per_step
    means["lr"] = float(self.schedule(step - 1))
    return means

  def __call__(self, tick: Tick) -> None:
    self.window.append(tick.metrics)
    if len(self.window) > DISPATCHES_AHEAD:  # the host waits for the device rather than queue up a signal's wait
      jax.block_until_ready(self.window[-1 - DISPATCHES_AHEAD])
    self.throughput.dispatched(tick.step, tick.metrics)
    step, config = tick.step, self.config
    if step == self.first_step + EARLY_PROGRESS_STEPS and not every(config.log_every_steps, step) and not tick.last:
      if self.writer.active:  # on the console only; the window goes on
        self.writer.progress(step, self._means(step), self.throughput.seconds_per_step)
    if every(config.log_every_steps, step) or tick.last:
      tick.line.update(self._means(step))
      self.window = []
      self.throughput.new_window(step)


class Saver:
  """Saves the trainer's state with the run's record (its config and wall time so far), and
  counts how long the saves held training up (the writing goes on behind them)."""

  def __init__(self, trainer: Trainer, ckpts: checkpoints.Checkpoints, wall_time: Callable[[], float]):
    self.trainer, self.ckpts, self.wall_time = trainer, ckpts, wall_time
    self.seconds = []

  def __call__(self) -> None:
    record = {"config": self.trainer.config.to_dict(), "wall_time_sec": self.wall_time()}
    start = time.perf_counter()
    self.trainer.save(self.ckpts, json.loads(json.dumps(record, default=list)))
    self.seconds.append(time.perf_counter() - start)


class SaveLast:
  """The last step's checkpoint, before the final evaluation: a signal during it loses no training."""

  def __init__(self, save: Saver):
    self.save = save

  def __call__(self, tick: Tick) -> None:
    if tick.last:
      self.save()


class Evaluation:
  """Evaluates at eval steps, at the end, and at the first log step, so that a new run shows a
  test error within minutes; the time it takes is not training time."""

  def __init__(self, trainer: Trainer, throughput: Throughput):
    self.trainer, self.throughput = trainer, throughput
    self.results = {}  # the latest evaluation's, "<split>_examples" included

  def __call__(self, tick: Tick) -> None:
    config = self.trainer.config
    if every(config.eval_every_steps, tick.step) or tick.last or tick.step == config.log_every_steps:
      with self.throughput.paused():
        self.results = self.trainer.evaluate()
      tick.line.update({k: v for k, v in self.results.items() if not k.endswith("_examples")})


class WriteLine:
  """The step's line, where it has one, to metrics.jsonl, wandb and the console."""

  def __init__(self, writer: writers.MetricWriter, throughput: Throughput):
    self.writer, self.throughput = writer, throughput

  def __call__(self, tick: Tick) -> None:
    if tick.line:
      self.writer.write(tick.step, tick.line)
      self.writer.progress(tick.step, tick.line, self.throughput.seconds_per_step)


class WatchCollapse:
  """The dead-run alarm (collapse.CollapseWatch) on each line with a training loss; with
  config.stop_on_collapse, the run stops once every seed is at chance."""

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int, writer: writers.MetricWriter):
    self.config, self.num_classes, self.writer = config, num_classes, writer
    self.watch = CollapseWatch(config, num_classes)

  def __call__(self, tick: Tick) -> None:
    collapsed = self.watch.update(tick.step, tick.line) if "train_loss" in tick.line else []
    if collapsed:
      since = self.watch.since(collapsed[0])
      self.writer.alert(*collapse_message(self.config, collapsed, since, tick.step, tick.line, self.num_classes))
      self.writer.summarize({"collapsed_at_step": tick.step})
    tick.collapsed = bool(self.config.stop_on_collapse and collapsed and self.watch.all_dead() and not tick.last)


class Profile:
  """A jax.profiler trace of config.profile_steps steps from config.profile_first_step (0: off)
  into <workdir>/profile, for TensorBoard's profile plugin or Perfetto. The trace starts
  after a dispatch, so a first step of 1 (the one that compiles) is traced from step 2."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, announce: bool):
    self.first = config.profile_first_step
    self.end = self.first + config.profile_steps  # the step after the last one traced
    self.directory, self.announce, self.tracing = os.path.join(workdir, "profile"), announce, False

  def __call__(self, tick: Tick) -> None:
    if not self.first:
      return
    if not self.tracing and self.first - 1 <= tick.step < self.end - 1:  # the next dispatch is traced
      jax.block_until_ready(tick.metrics)
      jax.profiler.start_trace(self.directory)
      self.tracing, self.first = True, tick.step + 1
    elif self.tracing and (tick.step >= self.end - 1 or tick.last):
      jax.block_until_ready(tick.metrics)
      jax.profiler.stop_trace()
      if self.announce:
        print(f"Profile of steps {self.first}-{tick.step} written to {self.directory}.", flush=True)
      self.tracing, self.first = False, 0


class AgreeOnSignal:
  """The signal that stops the run after this step (tick.signum; 0 to go on).

  A single process stops at once. Several processes must stop at the same step (one that
  left the step's collectives would leave the others waiting), so they compare at log and
  checkpoint steps only, which keeps the host sync out of the other steps.
  """

  def __init__(self, config: ml_collections.ConfigDict, preemption: checkpoints.PreemptionSignal):
    self.config, self.preemption = config, preemption

  def __call__(self, tick: Tick) -> None:
    if jax.process_count() == 1:
      tick.signum = self.preemption.signum
    elif every(self.config.log_every_steps, tick.step) or every(self.config.checkpoint_every_steps, tick.step):
      tick.signum = distributed.max_over_processes(self.preemption.signum)


class Checkpoint:
  """Saves at checkpoint steps, and before a stop (the last step is SaveLast's)."""

  def __init__(self, config: ml_collections.ConfigDict, save: Saver):
    self.config, self.save = config, save

  def __call__(self, tick: Tick) -> None:
    due = every(self.config.checkpoint_every_steps, tick.step) or tick.signum or tick.collapsed
    if due and not tick.last:
      self.save()


class Stop:
  """Stops the run after a collapse or a signal, once its checkpoint is on disk, saying where it
  is and how to go on. At the last step a signal stops nothing: the run is saved and finishes."""

  def __init__(self, ckpts: checkpoints.Checkpoints, writer: writers.MetricWriter):
    self.ckpts, self.writer = ckpts, writer

  def __call__(self, tick: Tick) -> None:
    if tick.collapsed:
      self.ckpts.wait()
      raise errors.TrainingCollapsed(
        f"Stopped at step {tick.step} (config.stop_on_collapse): the net is at chance. The checkpoint of step "
        f"{tick.step} is in {self.ckpts.directory}; rerun with --config.stop_on_collapse=False to train it on, or "
        "--config.restart=True with a longer warm-up or a lower learning rate."
      )
    if tick.signum and not tick.last:
      self.ckpts.wait()  # raises if the checkpoint did not reach the disk: no message claims it did
      self.writer.mark_preempted()
      if self.writer.active:
        print(
          f"Stopped by signal {tick.signum} at step {tick.step}; the checkpoint of step {tick.step} is saved in "
          f"{self.ckpts.directory}. Run the same command again to resume.",
          flush=True,
        )
      raise SystemExit(128 + tick.signum)
