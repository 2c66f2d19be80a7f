"""Evaluation over whole splits, and the statistics of several seeds: `make_evaluator` gives
the function state -> loss and error per split that the Trainer calls; `per_seed_metrics`
turns values of every seed into their mean, std and each seed's own, for evaluations and
the loop's training metrics alike."""

from collections.abc import Callable
import functools
import math
from typing import Any

import ml_collections
import numpy as np

from depthlab import input_pipeline, parallel
from depthlab.state import TrainState, seeds
from depthlab.steps import eval_on_device, over_seeds


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


def shard_for_eval(split: input_pipeline.Split, num_devices: int, batch_size: int) -> dict[str, np.ndarray]:
  """Lays a split out as [devices, chunks, chunk_size, ...], padded and masked to fit."""
  chunk = math.ceil(batch_size / num_devices)
  per_device = math.ceil(len(split) / (num_devices * chunk)) * chunk
  pad = num_devices * per_device - len(split)
  arrays = {"image": split.images, "label": split.labels, "mask": np.ones(len(split), np.float32)}
  return {
    k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]).reshape(
      num_devices, per_device // chunk, chunk, *v.shape[1:]
    )
    for k, v in arrays.items()
  }
