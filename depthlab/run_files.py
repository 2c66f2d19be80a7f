"""A run's files in its workdir, read and written without any of the training side: config.json,
metrics.jsonl (and other JSON-lines files), and the errors of storage that a user can fix.

Plotting (`eval.py compare`), the sweep runner and the checkpoints all read runs through here,
so none of them loads JAX's step or orbax to read a finished run's history.
"""

import errno
import json
import os
import sys
from typing import Any

import ml_collections

from configs import default
from depthlab import errors


def check_writable(folder: str) -> None:
  """Creates `folder` and writes a probe file in it, or raises a errors.StorageError: a run finds
  out at start, not at its first checkpoint, that it cannot write."""
  probe = os.path.join(folder, f".write_test_{os.getpid()}")
  try:
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise NotADirectoryError(errno.ENOTDIR, "it is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise errors.storage_error("the run's files", folder, e) from e


def flatten_config(config: ml_collections.ConfigDict, prefix: str = "config.") -> dict[str, Any]:
  """{'config.model.depth': 56, ...}: the names sweeps use for the same fields."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flatten_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return flat


def read_metrics_file(path: str) -> list[dict[str, float]]:
  """The lines of a metrics.jsonl, in order (see `read_json_lines`)."""
  return read_json_lines(path, "step", "metrics line")


def read_json_lines(path: str, key: str, what: str) -> list[dict[str, Any]]:
  """The lines of a file of JSON objects, one a line, each holding `key`, appended to as work is
  done (metrics.jsonl, a benchmark's results).

  A crash or a full disk during a write leaves at most one incomplete last line: it is
  skipped with a warning naming the file and the line. A bad line anywhere else is a
  errors.MetricsFileError naming them.
  """
  with open(path, "rb") as f:
    raw_lines = f.read().split(b"\n")
  numbered = [(number, raw) for number, raw in enumerate(raw_lines, 1) if raw.strip()]
  lines = []
  for i, (number, raw) in enumerate(numbered):
    try:
      line = json.loads(raw)
      if not isinstance(line, dict) or key not in line:
        raise ValueError(f"not a {what}")
    except ValueError as e:  # UnicodeDecodeError and json's errors are ValueErrors
      if i == len(numbered) - 1:
        print(f"{path}: line {number} is incomplete (a write cut short); skipping it.", file=sys.stderr, flush=True)
        break
      raise errors.MetricsFileError(
        f"{path}: line {number} is not a {what} ({e}: {raw[:80]!r}); "
        "only the last line may be incomplete. Remove or repair that line."
      ) from e
    lines.append(line)
  return lines


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The lines of a run's metrics.jsonl, in order (see read_metrics_file)."""
  return read_metrics_file(os.path.join(workdir, "metrics.jsonl"))


def keep_lines_up_to(path: str, step: int) -> None:
  """Drops the lines of a metrics.jsonl after `step` (a resumed run writes them again) and an
  incomplete last line (so that the next append starts a line of its own)."""
  if not os.path.exists(path):
    if step:
      print(
        f"Warning: {path} is missing: the metrics of steps 1-{step} are lost (the checkpoint of step {step} "
        f"holds the model, not its history). The run goes on and logs from step {step + 1}.",
        file=sys.stderr,
        flush=True,
      )
    return
  write_json_lines(path, [line for line in read_metrics_file(path) if line["step"] <= step])


def write_json_lines(path: str, lines: list[dict[str, Any]]) -> None:
  """Replaces the file with these lines, all or nothing (a torn tail goes with the old file)."""
  with open(f"{path}.tmp", "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  os.replace(f"{path}.tmp", path)


def read_config_json(workdir: str) -> dict[str, Any]:
  """A run's config.json as train.py wrote it (the config's fields and num_params).

  FileNotFoundError if there is none; a errors.RunFileError naming it if it is damaged.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} the workdir of a run?")
  try:
    with open(path) as f:
      saved = json.load(f)
    if not isinstance(saved, dict):
      raise ValueError(f"a JSON {type(saved).__name__}, not an object")
  except ValueError as e:  # json's errors and UnicodeDecodeError are ValueErrors
    raise errors.RunFileError(
      f"{path} is damaged ({e}): put back a good copy of the run's config "
      "(train.py writes it again when it resumes an unfinished run)."
    ) from e
  return saved


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, from its config.json (fields it lacks, at any depth: the defaults)."""
  saved = read_config_json(workdir)
  saved.pop("num_params", None)
  return ml_collections.ConfigDict(with_defaults(saved))


# Fields whose default has changed since they were added: a config saved before the field existed
# was trained with the value here, not with today's default.
BEFORE_THE_FIELD_EXISTED = {"warmup_shape": "constant"}


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config with the fields it lacks, at every depth, set to their defaults: a run
  saved before a field existed was trained as its default says (or as BEFORE_THE_FIELD_EXISTED
  says, where the default has changed since). The model's defaults are those of the default net,
  so they fill in only a saved model of that net."""
  defaults = {**default.get_config().to_dict(), **BEFORE_THE_FIELD_EXISTED}
  if saved.get("model", {}).get("name", defaults["model"]["name"]) != defaults["model"]["name"]:
    del defaults["model"]
  return _merged(defaults, saved)


def _merged(defaults: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
  return {
    **defaults,
    **{
      k: _merged(defaults[k], v) if isinstance(v, dict) and isinstance(defaults.get(k), dict) else v
      for k, v in saved.items()
    },
  }
