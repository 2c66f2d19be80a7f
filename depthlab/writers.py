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

from depthlab import errors, run_files


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
      run_files.keep_lines_up_to(self._paths[1], first_step)
      # One os.write per line on an O_APPEND descriptor: a crash or full disk can cut
      # only the line being written, never interleave or reorder lines.
      self._jsonl = os.open(self._paths[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
      raise errors.storage_error("config.json and metrics.jsonl", workdir, e) from e
    resumed = f" (resuming at step {first_step})" if first_step else ""
    print(f"{run_name}: {num_params:,} parameters; writing to {workdir}{resumed}", flush=True)
    self._start_wandb(workdir, config, run_name, num_params)

  def _start_wandb(self, workdir, config, run_name, num_params):
    mode = self._wandb_mode = resolve_wandb_mode(config.wandb.mode)
    if mode == "disabled":
      return
    try:
      import wandb

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
        config=run_files.flatten_config(config),
        mode=mode,
        dir=workdir,
        **where,
      )
      self._wandb_run.summary["num_params"] = num_params
    except Exception as e:
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
      except Exception as e:
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
      raise errors.storage_error(f"the metrics of step {step}", self._paths[1], e) from e
    if self._wandb_run is not None:
      try:
        self._wandb_run.log(dict(metrics), step=step)
      except Exception as e:
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
      except Exception as e:
        print(f"wandb: alert failed ({e}).", file=sys.stderr, flush=True)

  def check_on_disk(self) -> None:
    """Raises a StorageError unless config.json and metrics.jsonl are still there: a run is
    not reported done without its files."""
    if not self.active:
      return
    for path in self._paths:
      if not os.path.exists(path):
        raise errors.storage_error(
          os.path.basename(path),
          os.path.dirname(path),
          FileNotFoundError(errno.ENOENT, "it was deleted during the run"),
        )

  def summarize(self, summary: Mapping[str, Any]) -> None:
    """The run's final numbers, for wandb's summary."""
    if self._wandb_run is not None:
      try:
        self._wandb_run.summary.update(dict(summary))
      except Exception as e:
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
      except Exception as e:
        print(f"wandb: finish failed ({e}).", file=sys.stderr, flush=True)
      if (
        self._wandb_mode == "offline"
      ):  # every segment of a resumed run is a folder of its own, all with the run's one id
        folders = os.path.join(self._workdir, "wandb", "offline-run-*")
        print(
          f"wandb is offline: upload this run (all its segments, as one run) with: wandb sync {folders}", flush=True
        )
    return False
