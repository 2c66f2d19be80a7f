"""Where a run's metrics go: the console, `metrics.jsonl` in the workdir, and wandb.

Only process 0 writes; the others get a `MetricWriter` that does nothing. A wandb
failure is reported once and never stops training.
"""

from collections.abc import Mapping
import errno
import json
import netrc
import os
import sys
from typing import Any
from urllib.parse import urlparse
import uuid

import ml_collections

WANDB_MODES = ("auto", "online", "offline", "disabled")


class StorageError(OSError):
  """A run's files cannot be written (out of space, an unwritable or vanished folder): one
  message that names the path and the cause, for the user rather than a traceback."""


def storage_error(what: str, path: str, error: BaseException, saved: str = "") -> StorageError:
  """A StorageError saying that `what` could not be written to `path`, and why; `saved`: what
  is safe on disk, as a sentence."""
  cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
  return StorageError(
    f"Cannot write {what} to {path}: {cause}. {saved}Free space there, make it writable, "
    "or use another --workdir; then run the same command again to resume."
  )


def check_writable(folder: str) -> None:
  """Creates `folder` and writes a probe file in it, or raises a StorageError: a run finds
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
    raise storage_error("the run's files", folder, e) from e


def flatten_config(config: ml_collections.ConfigDict, prefix: str = "config.") -> dict[str, Any]:
  """{'config.model.depth': 56, ...}: the names sweeps use for the same fields."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(flatten_config(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
  return flat


def has_wandb_credentials(environ: Mapping[str, str] = os.environ, netrc_path: str | None = None) -> bool:
  """True if $WANDB_API_KEY is set or the netrc file has an entry for the wandb host."""
  if environ.get("WANDB_API_KEY"):
    return True
  host = urlparse(environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
  try:
    return netrc.netrc(netrc_path).authenticators(host) is not None
  except (FileNotFoundError, netrc.NetrcParseError):
    return False


def resolve_wandb_mode(mode: str, environ: Mapping[str, str] = os.environ, netrc_path: str | None = None) -> str:
  """The wandb mode a run uses: never one that would stop at wandb's interactive login prompt."""
  if mode not in WANDB_MODES:
    raise ValueError(f"wandb.mode must be one of {WANDB_MODES}; got {mode!r}.")
  if mode == "auto":
    mode = environ.get("WANDB_MODE") or "online"
  if mode == "online" and not has_wandb_credentials(environ, netrc_path):
    print(
      "wandb: no credentials (WANDB_API_KEY or `wandb login`); logging offline, `wandb sync` uploads later.", flush=True
    )
    mode = "offline"
  return mode


def format_duration(seconds: float) -> str:
  seconds = int(seconds)
  hours, rest = divmod(seconds, 3600)
  return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class MetricsFileError(ValueError):
  """A metrics.jsonl that is damaged beyond a torn last line."""


def read_metrics_file(path: str) -> list[dict[str, float]]:
  """The lines of a metrics.jsonl, in order (see `read_json_lines`)."""
  return read_json_lines(path, "step", "metrics line")


def read_json_lines(path: str, key: str, what: str) -> list[dict[str, Any]]:
  """The lines of a file of JSON objects, one a line, each holding `key`, appended to as work is
  done (metrics.jsonl, a benchmark's results).

  A crash or a full disk during a write leaves at most one incomplete last line: it is
  skipped with a warning naming the file and the line. A bad line anywhere else is a
  MetricsFileError naming them.
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
      raise MetricsFileError(
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


class MetricWriter:
  """Writes metrics lines to metrics.jsonl, the console and wandb (a context manager)."""

  def __init__(
    self,
    workdir: str,
    config: ml_collections.ConfigDict,
    run_name: str,
    num_params: int,
    first_step: int = 0,
    active: bool = True,
  ):
    self.active = active
    self.total_steps = config.total_steps
    self._workdir, self._wandb_mode = workdir, "disabled"
    self._wandb_run = None
    if not active:
      return
    self._paths = [os.path.join(workdir, "config.json"), os.path.join(workdir, "metrics.jsonl")]
    try:
      os.makedirs(workdir, exist_ok=True)
      with open(f"{self._paths[0]}.tmp", "w") as f:
        json.dump({**config.to_dict(), "num_params": num_params}, f, indent=2, default=str)
      os.replace(f"{self._paths[0]}.tmp", self._paths[0])
      keep_lines_up_to(self._paths[1], first_step)
      # One os.write per line on an O_APPEND descriptor: a crash or full disk can cut
      # only the line being written, never interleave or reorder lines.
      self._jsonl = os.open(self._paths[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
      raise storage_error("config.json and metrics.jsonl", workdir, e) from e
    resumed = f" (resuming at step {first_step})" if first_step else ""
    print(f"{run_name}: {num_params:,} parameters; writing to {workdir}{resumed}", flush=True)
    self._start_wandb(workdir, config, run_name, num_params)

  def _start_wandb(self, workdir, config, run_name, num_params):
    mode = self._wandb_mode = resolve_wandb_mode(config.wandb.mode)
    if mode == "disabled":
      return
    try:
      import wandb  # pylint: disable=g-import-not-at-top

      if os.environ.get("WANDB_SWEEP_ID"):
        # In a sweep the agent sets the run's id (a requeued run gets its old one back),
        # project and entity; wandb would ignore ours with a warning.
        where = {}
      else:
        # The run id lives in the workdir, so that a resumed run continues the same wandb run.
        where = {"project": config.wandb.project, "entity": config.wandb.entity, "id": self._run_id(workdir)}
      self._wandb_run = wandb.init(
        name=run_name,
        group=config.wandb.group or config.experiment or None,
        resume="allow",
        config=flatten_config(config),
        mode=mode,
        dir=workdir,
        **where,
      )
      self._wandb_run.summary["num_params"] = num_params
    except Exception as e:  # pylint: disable=broad-except
      print(f"wandb: could not start ({e}); training goes on without it.", file=sys.stderr, flush=True)
      self._wandb_run = None

  @staticmethod
  def _run_id(workdir: str) -> str:
    path = os.path.join(workdir, "wandb_run_id")
    if not os.path.exists(path):
      with open(path, "w") as f:
        f.write(uuid.uuid4().hex[:12])
    with open(path) as f:
      return f.read().strip()

  def mark_preempted(self) -> None:
    """Tells wandb the run was stopped from outside: a sweep then requeues it."""
    if self._wandb_run is not None:
      try:
        self._wandb_run.mark_preempting()
      except Exception as e:  # pylint: disable=broad-except
        print(f"wandb: mark_preempting failed ({e}).", file=sys.stderr, flush=True)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    """Records one line of metrics at `step` (the number of steps done)."""
    if not self.active:
      return
    line = {"step": step, **{k: float(v) for k, v in metrics.items()}}
    data = (json.dumps(line) + "\n").encode()
    try:
      if os.fstat(self._jsonl).st_nlink == 0:  # writes to a deleted file succeed, and are lost
        raise FileNotFoundError(errno.ENOENT, "the file (or its folder) was deleted during the run")
      if os.write(self._jsonl, data) < len(data):
        raise OSError(errno.ENOSPC, "a write was cut short (is the disk full?)")
    except OSError as e:
      raise storage_error(f"the metrics of step {step}", self._paths[1], e) from e
    if self._wandb_run is not None:
      try:
        self._wandb_run.log(dict(metrics), step=step)
      except Exception as e:  # pylint: disable=broad-except
        print(f"wandb: log failed ({e}); stopping wandb, training goes on.", file=sys.stderr, flush=True)
        self._wandb_run = None

  def progress(self, step: int, metrics: Mapping[str, float], seconds_per_step: float) -> None:
    """Prints one console line: step, loss, error, rate, throughput, ETA."""
    if not self.active:
      return
    eta = format_duration((self.total_steps - step) * seconds_per_step)
    parts = [f"step {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%)"]
    # Per-block metrics (grad_norm/<block>, ...) go to the files, not the console line.
    parts += [f"{k} {v:.4g}" for k, v in metrics.items() if k != "images_per_sec" and "/" not in k]
    if "images_per_sec" in metrics:
      parts.append(f"{metrics['images_per_sec']:.0f} img/s")
    if seconds_per_step:  # unknown until a step past the compiling one has been timed
      parts.append(f"ETA {eta}")
    print(" | ".join(parts), flush=True)

  def alert(self, title: str, text: str) -> None:
    """A warning on the console and, where wandb runs, as a wandb alert (mail or Slack, as the
    user's wandb settings say) and in the run's summary."""
    if not self.active:
      return
    print(f"WARNING: {title}. {text}", file=sys.stderr, flush=True)
    if self._wandb_run is not None:
      try:
        self._wandb_run.summary["alert"] = title
        self._wandb_run.alert(title=title, text=text)
      except Exception as e:  # pylint: disable=broad-except
        print(f"wandb: alert failed ({e}).", file=sys.stderr, flush=True)

  def check_on_disk(self) -> None:
    """Raises a StorageError unless config.json and metrics.jsonl are still there: a run is
    not reported done without its files."""
    if not self.active:
      return
    for path in self._paths:
      if not os.path.exists(path):
        raise storage_error(
          os.path.basename(path),
          os.path.dirname(path),
          FileNotFoundError(errno.ENOENT, "it was deleted during the run"),
        )

  def summarize(self, summary: Mapping[str, Any]) -> None:
    """The run's final numbers, for wandb's summary."""
    if self._wandb_run is not None:
      try:
        self._wandb_run.summary.update(dict(summary))
      except Exception as e:  # pylint: disable=broad-except
        print(f"wandb: summary failed ({e}).", file=sys.stderr, flush=True)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    if not self.active:
      return False
    os.close(self._jsonl)
    if self._wandb_run is not None:
      try:
        self._wandb_run.finish(exit_code=1 if exc[0] else 0)
      except Exception as e:  # pylint: disable=broad-except
        print(f"wandb: finish failed ({e}).", file=sys.stderr, flush=True)
      if (
        self._wandb_mode == "offline"
      ):  # every segment of a resumed run is a folder of its own, all with the run's one id
        folders = os.path.join(self._workdir, "wandb", "offline-run-*")
        print(
          f"wandb is offline: upload this run (all its segments, as one run) with: wandb sync {folders}", flush=True
        )
    return False
