"""A user's mistakes, caught before anything heavy starts and told as one message.

`validate_config` checks a parsed config in one pass (field names against configs/default.py,
none missing; types, ranges and the relations between fields) and raises a errors.ConfigError listing
every problem with its fix; cli.user_errors_as_messages turns it (and the other errors that are
the user's to fix: a full disk, a damaged file) into that message and an exit code, without
a Python traceback.
"""

import dataclasses
import difflib
import math
import os
from typing import Any

import ml_collections

from configs import default
from depthlab import batches, errors, parallel, run_files
import nets
from nets import cifar_resnet, cpu_conv, preact_resnet

DTYPES = ("float32", "bfloat16", "float16")
SEED_BATCHING = ("auto", "vmap", "loop")
WARMUP_SHAPES = ("constant", "linear")
WANDB_MODES = ("auto", "online", "offline", "disabled")

# Fields that must be at least 1, at least 0, and choices: what each may be.
AT_LEAST_ONE = (
  "batch_size",
  "total_steps",
  "log_every_steps",
  "eval_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_batch_size",
  "steps_per_dispatch",
  "num_seeds",
  "collapse_steps",
  "profile_steps",
)
AT_LEAST_ZERO = (
  "warmup_steps",
  "num_devices",
  "profile_first_step",
  "seed",
  "weight_decay",
  "aux_loss_weight",
  "dataset.validation_size",
  "dataset.crop_padding",
  "dataset.image_size",
)
CHOICES = {
  "dtype": DTYPES,
  "parallelism": parallel.MODES,
  "conv_weight_grad": cpu_conv.MODES,
  "seed_batching": SEED_BATCHING,
  "warmup_shape": WARMUP_SHAPES,
  "wandb.mode": WANDB_MODES,
  "dataset.augmentation": batches.AUGMENTATIONS,
}


def did_you_mean(name: str, known: list[str]) -> str:
  """' Did you mean "x"?' for the closest known name, or ''."""
  close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
  return f' Did you mean "{close[0]}"?' if close else ""


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return run_files.flatten_config(config, prefix="")


def _net_fields(name: str) -> dict[str, dataclasses.Field]:
  """The constructor fields of a registered net, those train.py sets itself left out."""
  module = nets._REGISTRY[name]
  module = getattr(module, "func", module)  # vgg16, resnet50, ...: partials with the depth bound
  return {
    f.name: f
    for f in dataclasses.fields(module)
    if f.init
    and f.name not in ("parent", "name", "num_classes", "dtype", "axis_name", "conv_weight_grad", "depth")
    or f.name == "depth"
    and name in ("cifar_resnet", "preact_resnet")
  }


def unknown_field_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Fields the code never reads (typos, mostly): configs/default.py's names, and for
  model.* the fields of the net config.model.name names."""
  known = list(_flat(default.get_config()))
  problems = []
  for key in _flat(config):
    if key.startswith("model."):
      continue
    if key not in known:
      problems.append(f"{key}: no such field.{did_you_mean(key, known)} The fields are those of configs/default.py.")
  name = config.get("model", {}).get("name")
  if name in nets.names():
    fields = list(_net_fields(name))
    for key in config.model:
      if key != "name" and key not in fields:
        problems.append(
          f"model.{key}: {name} has no such field.{did_you_mean(key, fields)} Its fields: "
          f"{', '.join(fields) or 'none'}."
        )
  return problems


def missing_field_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Fields of configs/default.py the config lacks (the model's aside: each net has its own).
  The code reads every field as an attribute: configs/default.py states each default once."""
  flat = _flat(config)
  return [
    f"{key}: missing; a config file starts from configs/default.py's get_config() and changes fields"
    for key in _flat(default.get_config())
    if not key.startswith("model.") and key not in flat
  ]


def _type_ok(value: Any, like: Any) -> bool:
  if isinstance(like, bool):
    return isinstance(value, bool)
  if isinstance(like, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(like, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(like, (list, tuple)):
    return isinstance(value, (list, tuple))
  return isinstance(value, type(like))


def type_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Fields whose value is not of their default's type (a config file can set any)."""
  defaults, problems = _flat(default.get_config()), []
  for key, value in _flat(config).items():
    like = defaults.get(key)
    if like is not None and value is not None and not _type_ok(value, like):
      problems.append(f"{key} = {value!r}: must be a {type(like).__name__} like the default {like!r}.")
  return problems


def range_problems(config: ml_collections.ConfigDict) -> list[str]:
  """Values out of range, unknown choices and fields that contradict each other."""
  flat, problems = _flat(config), []

  def bad(key, rule, fix):
    problems.append(f"{key} = {flat.get(key)!r}: {rule}; {fix}.")

  for key in AT_LEAST_ONE:
    if key in flat and flat[key] < 1:
      bad(key, "must be at least 1", f"set --config.{key} to 1 or more")
  for key in AT_LEAST_ZERO:
    if key in flat and flat[key] < 0:
      bad(key, "must not be negative", f"set --config.{key} to 0 or more")
  for key, choices in CHOICES.items():
    if key in flat and flat[key] not in choices:
      bad(key, "unknown choice", f"set --config.{key} to one of {', '.join(map(str, choices))}")
  for key in ("learning_rate", "warmup_learning_rate", "lr_decay"):
    rate = flat.get(key)
    if rate is not None and not (math.isfinite(rate) and rate > 0):
      bad(key, "must be a positive number", f"set --config.{key}, e.g. to the default {default.get_config()[key]}")
  if "momentum" in flat and not 0 <= flat["momentum"] < 1:
    bad("momentum", "must be in [0, 1)", "set --config.momentum, e.g. to 0.9")
  boundaries = list(flat.get("lr_boundaries", ()))
  if any(b < 1 for b in boundaries) or boundaries != sorted(set(boundaries)):
    bad("lr_boundaries", "must be increasing steps of at least 1", "set --config.lr_boundaries, e.g. '(32000, 48000)'")
  augmentation, image_size = flat.get("dataset.augmentation"), flat.get("dataset.image_size")
  if augmentation == "random_resized_crop" and not image_size:
    bad("dataset.augmentation", "random_resized_crop needs an image size", "set --config.dataset.image_size, e.g. 224")
  if augmentation == "pad_crop_flip" and image_size:
    bad(
      "dataset.image_size",
      "pad_crop_flip crops the images as stored",
      "set --config.dataset.image_size=0, or --config.dataset.augmentation=random_resized_crop",
    )
  problems += model_problems(config)
  return problems


def model_problems(config: ml_collections.ConfigDict) -> list[str]:
  """A known model, and a depth (and shortcut) that net can be built with."""
  model = config.get("model")
  if model is None or model.get("name") not in nets.names():
    return [
      f"model.name = {model and model.get('name')!r}: unknown model; set --config.model.name to one of "
      f"{', '.join(nets.names())}."
    ]
  problems = []
  try:
    if model.name == "cifar_resnet":
      fields = _net_fields("cifar_resnet")
      cifar_resnet.check_options(
        *(model.get(k, fields[k].default) for k in ("depth", "residual", "shortcut", "zero_init_residual"))
      )
    elif model.name == "preact_resnet":
      fields = _net_fields("preact_resnet")
      preact_resnet.units_per_stage(
        model.get("depth", fields["depth"].default), model.get("bottleneck", fields["bottleneck"].default)
      )
  except ValueError as e:
    problems.append(str(e))
  return problems


def device_problems(
  config: ml_collections.ConfigDict, available: int, num_processes: int = 1, resuming: bool = False
) -> list[str]:
  """config.num_devices against the `available` devices (of all processes), and the global
  batch, which must split evenly over the devices the run uses. A resumed run must keep its
  batch_size (see checkpoints.MUST_MATCH): only the devices can change."""
  if config.num_devices and num_processes > 1:
    return [
      f"num_devices = {config.num_devices}: only a single-process run can leave devices out; "
      f"set --config.num_devices=0 to train on all {available} devices of the {num_processes} processes."
    ]
  if config.num_devices > available:
    return [
      f"num_devices = {config.num_devices}: only {available} devices here; "
      "set --config.num_devices to at most that (0: all)."
    ]
  num_devices = config.num_devices or available
  if config.batch_size < 1 or config.batch_size % num_devices == 0:
    return []
  devices = (
    "fewer devices (--config.num_devices=...)"
    if num_processes == 1
    else "another number of processes or devices per process"
  )
  fix = (
    f"this run resumes with batch_size {config.batch_size}, so use {devices}, dividing it"
    if resuming
    else f"use a multiple of {num_devices} (--config.batch_size=...) or {devices}"
  )
  return [
    f"batch_size {config.batch_size} does not divide over {num_devices} devices"
    + (f" ({num_processes} processes)" if num_processes > 1 else "")
    + f"; {fix}."
  ]


def validate_config(
  config: ml_collections.ConfigDict, workdir: str | None = None, num_devices: int | None = None
) -> None:
  """Raises a errors.ConfigError listing every problem of `config` (and of `workdir`: it must not
  be a file); `num_devices`, when known, must divide the batch."""
  problems = unknown_field_problems(config) + missing_field_problems(config) + type_problems(config)
  if not problems:  # ranges of values of the wrong type would only repeat the type problem
    problems += range_problems(config)
    if num_devices:
      problems += device_problems(config, num_devices)
  if workdir and os.path.exists(workdir) and not os.path.isdir(workdir):
    problems.append(f"--workdir={workdir}: is a file; give a folder (it is created if missing).")
  if problems:
    raise errors.ConfigError(problems)
