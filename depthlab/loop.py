"""The training loop: from a set-up run (run_setup.set_up) to config.total_steps, with its
log lines, evaluations, checkpoints, collapse watch and stops; then the final evaluation."""

from collections.abc import Callable
import functools
import json
import math
import os
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from depthlab import checkpoints, input_pipeline, parallel, run_files, run_setup, validation, writers
from depthlab.collapse import CollapseWatch, TrainingCollapsed, collapse_message
from depthlab.naming import run_name
from depthlab.state import TrainState, learning_rate_schedule, seeds
from depthlab.steps import dispatch_size, eval_on_device, over_seeds, shard_for_eval


def per_seed_metrics(values: dict[str, Any], config: ml_collections.ConfigDict) -> dict[str, float]:
  """Metrics of one value per seed as floats: alone for one seed; for several, their mean,
  their sample std (`<key>_std`) and each seed's own (`seed<s>/<key>`)."""
  if config.num_seeds == 1:
    return {k: float(v) for k, v in values.items()}
  metrics = {}
  for key, per_seed in values.items():
    per_seed = np.asarray(per_seed, np.float64)
    if "/" not in key:  # per-block metrics: per seed only
      metrics[key] = float(per_seed.mean())
      metrics[f"{key}_std"] = float(per_seed.std(ddof=1))
    metrics.update({f"seed{s}/{key}": float(v) for s, v in zip(seeds(config), per_seed)})
  return metrics


def make_evaluator(
  data_parallel: parallel.DataParallel,
  splits: dict[str, input_pipeline.Split],
  mean_image: np.ndarray,
  config: ml_collections.ConfigDict,
) -> Callable[[TrainState], dict[str, float]]:
  """A function state -> {"<split>_loss", "<split>_error", "<split>_examples"} over whole splits
  (with several seeds, also per seed and the std: see per_seed_metrics).

  The splits go to the devices once, each device holding its share.
  """
  on_device = over_seeds(
    functools.partial(eval_on_device, image_size=config.dataset.image_size), config, in_axes=(0, None, None)
  )
  eval_fn = data_parallel.parallelize(on_device, sharded_argnums=(1,))
  data = {
    name: data_parallel.shard(shard_for_eval(split, data_parallel.count, config.eval_batch_size))
    for name, split in splits.items()
  }
  mean = data_parallel.replicate(mean_image)

  def evaluate(state: TrainState) -> dict[str, float]:
    results = {}
    for name, split in data.items():
      sums = data_parallel.to_host(eval_fn(state, split, mean))
      results.update(
        per_seed_metrics(
          {f"{name}_loss": sums["loss"] / sums["count"], f"{name}_error": sums["errors"] / sums["count"]}, config
        )
      )
      results[f"{name}_examples"] = int(np.ravel(sums["count"])[0])
    return results

  return evaluate


# The host dispatches at most this many dispatches ahead of the device: a signal then waits for
# a few steps, not for a queue of them (76 steps, nearly 4 minutes, seen on ResNet-56 on a CPU).
DISPATCHES_AHEAD = 2
# A run's first progress line comes this many steps in (and then every log_every_steps).
EARLY_PROGRESS_STEPS = 10


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


@jax.jit
def all_finite(tree: Any) -> jax.Array:
  """True if no float leaf of `tree` holds a NaN or an infinity."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves))


def restore_or_start(
  config: ml_collections.ConfigDict, ckpts: checkpoints.Checkpoints, state: TrainState
) -> tuple[TrainState, dict[str, Any]]:
  """The newest readable checkpoint of the workdir if there is one (same model and data only)."""
  restored = ckpts.restore(
    jax.device_get(state), check=lambda record: checkpoints.check_same_model_and_data(record, config, ckpts.directory)
  )
  if restored is None:
    return state, {}
  _, state, record = restored
  return state, record


def agreed_stop_signal(preemption: checkpoints.PreemptionSignal, at_boundary: bool) -> int:
  """The signal that stops the run after this step, 0 to go on.

  A single process stops at once. Several processes must stop at the same step (one that
  left the step's collectives would leave the others waiting), so they compare at log and
  checkpoint steps only, which keeps the host sync out of the other steps.
  """
  if jax.process_count() == 1:
    return preemption.signum
  return parallel.max_over_processes(preemption.signum) if at_boundary else 0


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, data_parallel: parallel.DataParallel | None = None
) -> dict[str, float]:
  """Trains until config.total_steps, resuming from the workdir's checkpoints; returns the final metrics.

  `data_parallel`: the devices, as run_setup.training_devices chose them (by default, here).
  A multi-process run must have started JAX's runtime first (train.py does:
  parallel.maybe_initialize_distributed).
  """
  run_start = time.perf_counter()
  data_parallel = data_parallel or run_setup.training_devices(config, workdir)
  is_main = jax.process_index() == 0
  if is_main:
    run_files.check_writable(workdir)  # fail now, not after loading the data and compiling
  if config.restart and is_main:  # a new run: new checkpoints, metrics and wandb run
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    for name in ("metrics.jsonl", "wandb_run_id"):
      if os.path.exists(os.path.join(workdir, name)):
        os.remove(os.path.join(workdir, name))
  parallel.sync_processes("restart")  # no process may find the checkpoints process 0 is deleting

  # From here a signal stops the run at a step boundary; a KeyboardInterrupt inside XLA's
  # compiler could end the process in a segmentation fault.
  with checkpoints.PreemptionSignal(workdir, jax.process_count() > 1, announce=is_main) as preemption:
    ckpts = checkpoints.Checkpoints(workdir, config.keep_checkpoints)
    try:
      return resume_and_train(config, workdir, data_parallel, ckpts, run_start, preemption)
    finally:
      ckpts.wait()
      ckpts.close()


def resume_and_train(
  config: ml_collections.ConfigDict,
  workdir: str,
  data_parallel: parallel.DataParallel,
  ckpts: checkpoints.Checkpoints,
  run_start: float,
  preemption: checkpoints.PreemptionSignal,
) -> dict[str, float]:
  """Restores the newest checkpoint (or starts afresh) and trains to the end; a finished run
  is reported, not trained again."""
  run = run_setup.set_up(
    config, data_parallel, restore=functools.partial(restore_or_start, config, ckpts), for_training=False
  )
  first_step, record = run.first_step, run.record
  if first_step >= config.total_steps and "final" in record:
    if jax.process_index() == 0:
      print(
        f"{workdir} holds a finished run ({first_step} steps, test error "
        f"{100 * record['final'].get('test_error', float('nan')):.2f}%); nothing to do. "
        f"--config.restart=True trains it again.",
        flush=True,
      )
    return record["final"]
  if first_step > config.total_steps:
    raise validation.ConfigError(
      [
        f"total_steps {config.total_steps}: {workdir} has a checkpoint at step {first_step}, beyond it; "
        "raise --config.total_steps or use another --workdir."
      ]
    )
  run_setup.put_training_data(run)  # only now: a finished run needs none
  return train_loop(config, workdir, run, ckpts, run_start, preemption, seconds_before=record.get("wall_time_sec", 0.0))


def train_loop(
  config: ml_collections.ConfigDict,
  workdir: str,
  run: run_setup.RunSetup,
  ckpts: checkpoints.Checkpoints,
  run_start: float,
  preemption: checkpoints.PreemptionSignal,
  seconds_before: float = 0.0,
) -> dict[str, float]:
  """The training loop, from run.first_step to config.total_steps, then the final evaluation.

  `seconds_before`: the wall time of the run's earlier segments (it resumes).
  """
  is_main = jax.process_index() == 0
  data_parallel, dataset, state, first_step, num_params = (
    run.data_parallel,
    run.dataset,
    run.state,
    run.first_step,
    run.num_params,
  )
  train_data, key_data, orders = run.train_data, run.key_data, run.orders
  writer = writers.MetricWriter(workdir, config, run_name(config), num_params, first_step, active=is_main)
  schedule = learning_rate_schedule(config)
  dispatch = {n: run.train_dispatch(n) for n in {1, config.steps_per_dispatch}}  # jax compiles each on its first call
  evaluate = make_evaluator(data_parallel, dataset.eval_splits, dataset.mean_image, config)

  def save(step: int) -> None:
    copy = data_parallel.single_copy(state)
    if not all_finite(copy):  # the loss of a step is finite even when its update was not
      raise FloatingPointError(
        f"Training diverged: non-finite parameters after step {step}; the "
        "last checkpoint before it is kept. Lower --config.learning_rate."
      )
    record = {"config": config.to_dict(), "wall_time_sec": seconds_before + time.perf_counter() - run_start}
    save_start = time.perf_counter()
    ckpts.save(step, copy, json.loads(json.dumps(record, default=list)))
    save_seconds.append(time.perf_counter() - save_start)

  collapse = CollapseWatch(config, dataset.num_classes)
  save_seconds = []  # how long each save held up training (the writing goes on behind it)
  window = []  # the metrics of the steps since the last line, still on the devices
  window_start, window_first_step, seconds_per_step = 0.0, None, 0.0
  loop_start, line, step, evaluated = time.perf_counter(), {}, first_step, {}
  with writer:
    while step < config.total_steps:
      steps = dispatch_size(step, config)
      state, metrics = dispatch[steps](state, train_data, key_data, orders.for_dispatch_after(step))
      step += steps
      preemption.step = step
      window.append(metrics)
      if len(window) > DISPATCHES_AHEAD:  # the host waits for the device rather than queue up a signal's wait
        jax.block_until_ready(window[-1 - DISPATCHES_AHEAD])
      if window_first_step is None:  # this dispatch compiles; time it alone, leave it out of throughput
        jax.block_until_ready(metrics)
        window_start, window_first_step = time.perf_counter(), step + 1
        if is_main:
          print(
            f"Step {step} done {window_start - run_start:.1f}s after start; it took "
            f"{window_start - loop_start:.1f}s, compilation included.",
            flush=True,
          )
      last = step == config.total_steps
      line = {}
      if step == first_step + EARLY_PROGRESS_STEPS and step % config.log_every_steps and not last and is_main:
        early = window_means(window, data_parallel, step, config)  # on the console only; the window goes on
        seconds_per_step = (time.perf_counter() - window_start) / (step - window_first_step + 1)
        early["images_per_sec"] = config.batch_size * config.num_seeds / seconds_per_step
        early["lr"] = float(schedule(step - 1))
        writer.progress(step, early, seconds_per_step)
      if step % config.log_every_steps == 0 or last:
        line = window_means(window, data_parallel, step, config)
        now = time.perf_counter()
        if step >= window_first_step:
          seconds_per_step = (now - window_start) / (step - window_first_step + 1)
          line["images_per_sec"] = config.batch_size * config.num_seeds / seconds_per_step
        line["lr"] = float(schedule(step - 1))
        window, window_start, window_first_step = [], now, step + 1
      if last:  # saved before the final evaluation, so that a signal during it loses no training
        save(step)
      # Also at the first log step, so that a new run shows a test error within minutes.
      if step % config.eval_every_steps == 0 or last or step == config.log_every_steps:
        eval_start = time.perf_counter()
        evaluated = evaluate(state)
        line.update({k: v for k, v in evaluated.items() if not k.endswith("_examples")})
        window_start += time.perf_counter() - eval_start  # evaluation is not training time
      if line:
        writer.write(step, line)
        writer.progress(step, line, seconds_per_step)
      collapsed = collapse.update(step, line) if "train_loss" in line else []
      if collapsed:
        writer.alert(
          *collapse_message(config, collapsed, collapse.since(collapsed[0]), step, line, dataset.num_classes)
        )
        writer.summarize({"collapsed_at_step": step})
      stop_collapsed = config.stop_on_collapse and collapsed and collapse.all_dead() and not last
      signum = agreed_stop_signal(
        preemption, step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0
      )
      if (step % config.checkpoint_every_steps == 0 or signum or stop_collapsed) and not last:
        save(step)
      if stop_collapsed:
        ckpts.wait()
        raise TrainingCollapsed(
          f"Stopped at step {step} (config.stop_on_collapse): the net is at chance. The checkpoint of step "
          f"{step} is in {ckpts.directory}; rerun with --config.stop_on_collapse=False to train it on, or "
          "--config.restart=True with a longer warm-up or a lower learning rate."
        )
      if signum and not last:  # at the last step the run is saved and evaluated: it finishes
        ckpts.wait()  # raises if the checkpoint did not reach the disk: no message claims it did
        writer.mark_preempted()
        if is_main:
          print(
            f"Stopped by signal {signum} at step {step}; the checkpoint of step {step} is saved in "
            f"{ckpts.directory}. Run the same command again to resume.",
            flush=True,
          )
        raise SystemExit(128 + signum)

    if first_step == config.total_steps:  # resumed after the final checkpoint, before its evaluation was recorded
      evaluated = evaluate(state)
      line = {k: v for k, v in evaluated.items() if not k.endswith("_examples")}
      if writer.active and all(logged["step"] < step for logged in run_files.read_metrics(workdir)):
        writer.write(step, line)
    final = {
      **line,
      "wall_time_sec": seconds_before + time.perf_counter() - run_start,
      "num_params": num_params,
      **{k: v for k, v in evaluated.items() if k.endswith("_examples")},
    }
    ckpts.save_final(step, final)  # once the final checkpoint is on disk
    writer.check_on_disk()
    writer.summarize(final)
  if is_main:
    print(
      f"Done: {run_name(config)} after {step} steps: test error "
      f"{100 * final.get('test_error', float('nan')):.2f}%, wall time "
      f"{writers.format_duration(final['wall_time_sec'])}; {len(save_seconds)} checkpoint saves held "
      f"training up {sum(save_seconds):.2f}s in all.",
      flush=True,
    )
  return final
