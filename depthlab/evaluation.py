"""Evaluates a run's checkpoint: reads the run's config.json (load_run_config), restores the
checkpoint onto this machine's devices (any number of them) and measures loss and error
over whole splits (evaluate_checkpoint). It writes nothing but eval_<step>.json: a workdir
without a checkpoint, or with a damaged config.json, is one message naming the file."""

import json
import os
from typing import Any

import jax

from depthlab import checkpoints, parallel, run_files, run_setup
from depthlab.loop import make_evaluator
from depthlab.state import TrainState


def evaluate_checkpoint(
  workdir: str, step: int | None = None, include_train: bool = False, num_devices: int = 0, data_dir: str | None = None
) -> dict[str, Any]:
  """Loss and error of a checkpoint on the test split (and the train split), as a dict."""
  config = run_files.load_run_config(workdir)
  if not checkpoints.has_checkpoints(workdir):  # before orbax, which would create the folder
    raise FileNotFoundError(
      f"{workdir} holds no checkpoint (nothing in {os.path.join(workdir, 'checkpoints')}): "
      "train it first, or give the workdir of a run that has saved one."
    )
  if data_dir:
    config.dataset.data_dir = data_dir
  run_setup.use_compilation_cache(config.compilation_cache_dir)

  def restore(template: TrainState) -> tuple[TrainState, dict[str, Any]]:
    ckpts = checkpoints.Checkpoints(workdir)
    try:
      restored = ckpts.restore(jax.device_get(template), step, set_aside=False)  # an evaluator leaves the run as it is
    finally:
      ckpts.close()
    if restored is None:
      raise checkpoints.CorruptCheckpointError(
        f"No checkpoint in {ckpts.directory} reads back intact (each is reported above); nothing was evaluated."
      )
    restored_step, state, record = restored
    return state, {**record, "step": restored_step}

  run = run_setup.set_up(
    config, parallel.DataParallel(config.parallelism, num_devices), restore=restore, for_training=False
  )
  step, dataset = run.record["step"], run.dataset
  splits = dict(dataset.eval_splits, **({"train": dataset.train} if include_train else {}))
  evaluate = make_evaluator(run.data_parallel, splits, dataset.mean_image, config)
  results = {"step": step, "devices": run.data_parallel.count, **evaluate(run.state)}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_{step}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results
