"""The training loop: a Trainer, restored from the workdir's newest checkpoint or fresh, trained
to config.total_steps in dispatches of steps, with the periodic actions of depthlab/actions.py
after each (log lines, evaluations, checkpoints, the dead-run alarm, a profile, stops); then
the final evaluation, recorded with the last checkpoint."""

from collections.abc import Callable
import os
import shutil
import time

import jax
import ml_collections

from depthlab import actions, checkpoints, distributed, errors, parallel, run_files, writers
from depthlab.naming import run_name
from depthlab.trainer import Trainer, training_devices


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, data_parallel: parallel.DataParallel | None = None
) -> dict[str, float]:
  """Trains until config.total_steps, resuming from the workdir's checkpoints; returns the final metrics.

  `data_parallel`: the devices, as trainer.training_devices chose them (by default, here).
  A multi-process run must have started JAX's runtime first (train.py does:
  distributed.maybe_initialize_distributed), and holds the workdir (workdir_lock.hold).
  """
  run_start = time.perf_counter()
  data_parallel = data_parallel or training_devices(config, workdir)
  if config.restart and jax.process_index() == 0:  # a new run: new checkpoints, metrics and wandb run
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    for name in ("metrics.jsonl", "wandb_run_id"):
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
  distributed.sync_processes("restart")  # no process may find the checkpoints process 0 is deleting

  # From here a signal stops the run at a step boundary; a KeyboardInterrupt inside XLA's
  # compiler could end the process in a segmentation fault.
  with checkpoints.PreemptionSignal(workdir, jax.process_count() > 1, announce=jax.process_index() == 0) as preemption:
    ckpts = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
    try:
      trainer = Trainer(config, data_parallel)
      check = lambda record: checkpoints.check_same_model_and_data(record, config, ckpts.directory)
      record = trainer.restore(ckpts, check=check) or {}
      if trainer.step >= config.total_steps and "final" in record:
        return report_finished(workdir, trainer.step, record["final"])
      if trainer.step > config.total_steps:
        raise errors.ConfigError(
          [
            f"total_steps {config.total_steps}: {workdir} has a checkpoint at step {trainer.step}, beyond it; "
            "raise --config.total_steps or use another --workdir."
          ]
        )
      wall_time = lambda: record.get("wall_time_sec", 0.0) + time.perf_counter() - run_start
      return train_to_the_end(trainer, workdir, ckpts, preemption, wall_time, run_start)
    finally:
      ckpts.wait()
      ckpts.close()


def report_finished(workdir: str, step: int, final: dict[str, float]) -> dict[str, float]:
  """A finished run is reported, not trained again."""
  if jax.process_index() == 0:
    print(
      f"{workdir} holds a finished run ({step} steps, test error "
      f"{100 * final.get('test_error', float('nan')):.2f}%); nothing to do. "
      f"--config.restart=True trains it again.",
      flush=True,
    )
  return final


def periodic_actions(
  trainer: Trainer,
  workdir: str,
  ckpts: checkpoints.Checkpoints,
  preemption: checkpoints.PreemptionSignal,
  writer: writers.MetricWriter,
  throughput: actions.Throughput,
  save: actions.Saver,
) -> list:
  """What runs after each dispatch, in this order (see depthlab/actions.py)."""
  config = trainer.config
  return [
    actions.TrainingMetrics(trainer, throughput, writer, trainer.step),
    actions.SaveLast(save),
    actions.Evaluation(trainer, throughput),
    actions.WriteLine(writer, throughput),
    actions.WatchCollapse(config, trainer.dataset.num_classes, writer),
    actions.Profile(config, workdir, announce=writer.active),
    actions.AgreeOnSignal(config, preemption),
    actions.Checkpoint(config, save),
    actions.Stop(ckpts, writer),
  ]


def train_to_the_end(
  trainer: Trainer,
  workdir: str,
  ckpts: checkpoints.Checkpoints,
  preemption: checkpoints.PreemptionSignal,
  wall_time: Callable[[], float],
  run_start: float,
) -> dict[str, float]:
  """The loop: dispatches of steps from trainer.step to config.total_steps, each followed by
  the periodic actions; then the final evaluation, recorded with the last checkpoint."""
  config, first_step = trainer.config, trainer.step
  writer = writers.MetricWriter(
    workdir, config, run_name(config), trainer.num_params, first_step, active=jax.process_index() == 0
  )
  throughput, save = actions.Throughput(run_start, announce=writer.active), actions.Saver(trainer, ckpts, wall_time)
  with writer:
    schedule = periodic_actions(trainer, workdir, ckpts, preemption, writer, throughput, save)
    evaluation = next(a for a in schedule if isinstance(a, actions.Evaluation))
    line = {}
    while trainer.step < config.total_steps:
      metrics = trainer.train(dispatch_size(trainer.step, config))
      preemption.step = trainer.step
      tick = actions.Tick(trainer.step, trainer.step == config.total_steps, metrics)
      for action in schedule:
        action(tick)
      line = tick.line
    if first_step == config.total_steps:  # resumed after the final checkpoint, before its evaluation was recorded
      evaluation(actions.Tick(trainer.step, True, {}))
      line = {k: v for k, v in evaluation.results.items() if not k.endswith("_examples")}
      if writer.active and all(logged["step"] < trainer.step for logged in run_files.read_metrics(workdir)):
        writer.write(trainer.step, line)
    examples = {k: v for k, v in evaluation.results.items() if k.endswith("_examples")}
    final = {**line, "wall_time_sec": wall_time(), "num_params": trainer.num_params, **examples}
    ckpts.save_final(trainer.step, final)  # once the final checkpoint is on disk
    writer.check_on_disk()
    writer.summarize(final)
  if writer.active:
    print(
      f"Done: {run_name(config)} after {trainer.step} steps: test error "
      f"{100 * final.get('test_error', float('nan')):.2f}%, wall time "
      f"{writers.format_duration(final['wall_time_sec'])}; {len(save.seconds)} checkpoint saves held "
      f"training up {sum(save.seconds):.2f}s in all.",
      flush=True,
    )
  return final


def dispatch_size(step: int, config: ml_collections.ConfigDict) -> int:
  """How many steps the dispatch after `step` runs: config.steps_per_dispatch, or 1 where
  a log, evaluation or checkpoint step (or the end) falls inside those steps."""
  n = config.steps_per_dispatch
  if n == 1 or step + n > config.total_steps:
    return 1
  for every in (config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps):
    if (step // every + 1) * every < step + n:
      return 1
  return n
