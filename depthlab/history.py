"""Runs as they were logged: each run's config and metrics lines (RunHistory), read from
workdirs or a wandb sweep, one-seed runs split out of several-seed ones, grouped by net,
and their curves."""

from collections.abc import Sequence
import dataclasses
import os
import re
from typing import Any

import ml_collections
import numpy as np

from depthlab import errors, run_files
from depthlab.naming import net_name
from depthlab.run_files import load_run_config, read_config_json
from depthlab.state import seeds


@dataclasses.dataclass
class RunHistory:
  """One run's config and metrics lines, from its workdir or from wandb."""

  config: ml_collections.ConfigDict
  lines: list[dict[str, float]]  # ordered by step
  num_params: int | None = None
  source: str = ""

  @property
  def net(self) -> str:
    """Runs of the same net (seed aside) are averaged into one curve and one table row."""
    return net_name(self.config)

  @property
  def panel(self) -> str:
    """Plain and residual CIFAR nets side by side, as in the paper; other nets by name."""
    if self.config.model.name == "cifar_resnet":
      return "residual" if self.config.model.residual else "plain"
    return self.config.model.name

  def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the lines that hold `key`."""
    points = [(line["step"], line[key]) for line in self.lines if key in line]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def split_seeds(run: RunHistory) -> list[RunHistory]:
  """A run of config.num_seeds = K as K one-seed runs (from its seed<s>/<key> metrics), so
  that the seeds of one run and the seeds of separate runs are compared alike."""
  config = run.config
  if config.num_seeds == 1:
    return [run]
  runs = []
  for seed in seeds(config):
    prefix = f"seed{seed}/"
    one = ml_collections.ConfigDict(config.to_dict())
    one.seed, one.num_seeds = seed, 1
    lines = [
      {"step": line["step"], **{k[len(prefix) :]: v for k, v in line.items() if k.startswith(prefix)}}
      for line in run.lines
    ]
    runs.append(RunHistory(one, lines, run.num_params, f"{run.source} ({prefix[:-1]})"))
  return runs


def load_local_runs(path: str) -> tuple[list[RunHistory], list[str]]:
  """Every run in `path` (a workdir, or a folder holding workdirs at any depth: each folder with
  a config.json or a metrics.jsonl), and 'folder: why' for each that cannot be read."""
  runs, skipped = [], []
  for folder, subfolders, files in os.walk(path):
    subfolders[:] = sorted(d for d in subfolders if d not in ("checkpoints", "wandb", "unreadable_checkpoints"))
    if "metrics.jsonl" in files or "config.json" in files:
      try:
        runs.append(load_local_run(folder))
      except (FileNotFoundError, errors.RunFileError, errors.MetricsFileError) as e:
        skipped.append(f"{folder}: {e}")
  return runs, skipped


def load_local_run(workdir: str) -> RunHistory:
  """The run in `workdir`; FileNotFoundError, errors.RunFileError or MetricsFileError naming the file
  that is missing or damaged."""
  config = load_run_config(workdir)
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    raise FileNotFoundError("no metrics.jsonl (nothing logged yet, or it was removed).")
  num_params = read_config_json(workdir).get("num_params")
  return RunHistory(config, run_files.read_metrics(workdir), num_params, workdir)


def load_wandb_sweep(sweep_path: str) -> list[RunHistory]:
  """The runs of a wandb sweep ('entity/project/sweep_id'), read through the public API."""
  import wandb

  runs = []
  for run in wandb.Api().sweep(sweep_path).runs:
    config = train_config_of(run.config)
    lines = [
      {k: v for k, v in row.items() if isinstance(v, (int, float)) and not k.startswith("_")} | {"step": row["_step"]}
      for row in run.scan_history()
    ]
    runs.append(
      RunHistory(
        config, sorted(lines, key=lambda line: line["step"]), run.summary.get("num_params"), f"wandb:{run.path}"
      )
    )
  return runs


def train_config_of(wandb_config: dict[str, Any]) -> ml_collections.ConfigDict:
  """A run's config from its wandb config (flat 'config.model.depth' keys), the fields it lacks
  filled in as a saved config's are (run_files.with_defaults)."""
  saved = {}
  for key, value in wandb_config.items():
    if key.startswith("config.") and not isinstance(value, dict):
      *parents, name = key[len("config.") :].split(".")
      fields = saved
      for parent in parents:
        fields = fields.setdefault(parent, {})
      fields[name] = value
  return ml_collections.ConfigDict(run_files.with_defaults(saved))


def load_runs(sources: Sequence[str]) -> tuple[list[RunHistory], list[str]]:
  """The runs under each local path, or of each wandb sweep path (entity/project/sweep_id),
  and 'folder: why' for each local run that cannot be read (see load_local_runs)."""
  runs, skipped = [], []
  for source in sources:
    found, left_out = [], []
    if os.path.exists(source):
      found, left_out = load_local_runs(source)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+/\w+", source):
      found = load_wandb_sweep(source)
    else:
      raise FileNotFoundError(f"{source} is neither a folder nor a wandb sweep path (entity/project/sweep_id).")
    if not found and not left_out:
      raise FileNotFoundError(f"No runs (metrics.jsonl with config.json) in {source}.")
    runs += [one for run in found for one in split_seeds(run)]
    skipped += left_out
  return runs, skipped


def group_by_net(runs: Sequence[RunHistory]) -> dict[str, list[RunHistory]]:
  """Runs of each net (its seeds), nets ordered by panel, then depth, then name."""
  groups = {}
  for run in runs:
    groups.setdefault(run.net, []).append(run)
  order = lambda net: (groups[net][0].panel, groups[net][0].config.model.get("depth", 0), net)
  return {net: groups[net] for net in sorted(groups, key=order)}


def common_curves(runs: Sequence[RunHistory], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values [runs, steps]) of `key` at the steps every run logged it."""
  curves = [run.curve(key) for run in runs]
  steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
  values = [[dict(zip(s.tolist(), v.tolist()))[t] for t in steps] for s, v in curves]
  return np.array(steps), np.array(values).reshape(len(runs), len(steps))


def mean_curve(runs: Sequence[RunHistory], key: str) -> tuple[np.ndarray, np.ndarray]:
  """The mean over runs of `key` at the steps every run logged it."""
  steps, values = common_curves(runs, key)
  return steps, values.mean(axis=0)


def running_mean(steps: np.ndarray, values: np.ndarray, window_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """(the steps that end a full window, the mean of the values over the `window_steps` steps
  that end at each). ValueError if the lines are not evenly spaced in steps that tile the window."""
  every = int(steps[1] - steps[0]) if len(steps) > 1 else window_steps
  if window_steps % every or np.any(np.diff(steps) != every):
    raise ValueError(f"logged every {every} steps; a {window_steps}-step mean needs lines that tile it.")
  lines = window_steps // every
  if len(values) < lines:
    raise ValueError(f"{len(values)} lines, fewer than one {window_steps}-step window.")
  return steps[lines - 1 :], np.convolve(values, np.ones(lines) / lines, mode="valid")


def up_to_step(run: RunHistory, step: int | None) -> RunHistory:
  """The run as it stood after `step` steps (to compare runs of different lengths at equal steps)."""
  return run if step is None else dataclasses.replace(run, lines=[line for line in run.lines if line["step"] <= step])
