"""Evaluates a run's checkpoint on the test split (and, if asked, the train split).

    python eval.py --workdir=runs/resnet56               # the newest checkpoint
    python eval.py --workdir=runs/resnet56 --step=32000 --train

Reads the run's config.json, restores the checkpoint onto this machine's devices (any
number of them), prints loss and error, and writes them to <workdir>/eval_<step>.json.
"""

import json
import os
from typing import Any

import jax
import ml_collections
from absl import app, flags

import checkpoints
import input_pipeline
import parallel
import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's workdir (holds config.json and checkpoints/).")
flags.DEFINE_integer("step", None, "The checkpoint's step; default: the newest.")
flags.DEFINE_bool("train", False, "Also evaluate the train split (no augmentation).")
flags.DEFINE_integer("num_devices", 0, "Local devices to evaluate on; 0: all.")
flags.DEFINE_string("data_dir", None, "TFDS data dir; default: the run's, else $TFDS_DATA_DIR.")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, from its config.json."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} the workdir of a run?")
  with open(path) as f:
    saved = json.load(f)
  saved.pop("num_params", None)
  return ml_collections.ConfigDict(saved)


def evaluate_checkpoint(workdir: str, step: int | None = None, include_train: bool = False,
                        num_devices: int = 0, data_dir: str | None = None) -> dict[str, Any]:
  """Loss and error of a checkpoint on the test split (and the train split), as a dict."""
  config = load_run_config(workdir)
  if data_dir:
    config.dataset.data_dir = data_dir
  replicas = parallel.Replicas(config.parallelism, num_devices)
  dataset = input_pipeline.load_dataset(config.dataset)
  model = train.create_model(config, dataset.num_classes)
  template = train.create_train_state(config, model, jax.random.key(0), dataset.train.images.shape[1:])
  ckpts = checkpoints.Checkpoints(workdir)
  try:
    restored = ckpts.restore(jax.device_get(template), step)
  finally:
    ckpts.close()
  if restored is None:
    raise FileNotFoundError(f"No readable checkpoint in {ckpts.directory}.")
  step, state, _ = restored
  splits = dict(dataset.eval_splits, **({"train": dataset.train} if include_train else {}))
  evaluate = train.make_evaluator(replicas, splits, dataset.mean_image, config.eval_batch_size)
  results = {"step": step, "devices": replicas.count, **evaluate(replicas.replicate(state))}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_{step}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  results = evaluate_checkpoint(FLAGS.workdir, FLAGS.step, FLAGS.train, FLAGS.num_devices, FLAGS.data_dir)
  print(f"{FLAGS.workdir} at step {results['step']} on {results['devices']} device(s):")
  for name in [k[:-len("_error")] for k in results if k.endswith("_error")]:
    print(f"  {name:5s} loss {results[f'{name}_loss']:.4f}  error {100 * results[f'{name}_error']:.2f}%"
          f"  ({results[f'{name}_examples']} images)")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
