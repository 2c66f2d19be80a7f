"""Runs that survive: orbax checkpoints in <workdir>/checkpoints, resuming, and preemption.

A checkpoint holds one copy of the train state (no device axis, so it restores on any
number of devices) and a small JSON record: the config it was trained with and, for the
last one of a run, the final metrics. Everything else a resumed run needs is a function
of the step: the data order, the augmentation and the learning rate.
"""

import os
import shutil
import signal
import sys
from typing import Any, Callable

import jax
import ml_collections
import orbax.checkpoint as ocp

import parallel
import writers
from configs import default

# The fields a run cannot change when it resumes: they change the model or the data.
MUST_MATCH = ("model.", "dataset.name", "dataset.validation_size", "dataset.crop_padding",
              "dataset.random_flip", "batch_size", "seed", "num_seeds", "dtype")


class ConfigMismatchError(ValueError):
  """A workdir's checkpoints were trained with another model or data."""


def with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
  """A saved config with the fields it lacks, at every depth, set to their defaults: a run
  saved before a field existed was trained as its default says. The model's defaults are
  those of the default net, so they fill in only a saved model of that net."""
  defaults = default.get_config().to_dict()
  if saved.get("model", {}).get("name", defaults["model"]["name"]) != defaults["model"]["name"]:
    del defaults["model"]
  return _merged(defaults, saved)


def _merged(defaults: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
  return {**defaults, **{k: _merged(defaults[k], v) if isinstance(v, dict) and isinstance(defaults.get(k), dict)
                         else v for k, v in saved.items()}}


def config_differences(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> now' for each MUST_MATCH field that differs."""
  before = writers.flatten_config(ml_collections.ConfigDict(with_defaults(saved)), prefix="")
  now = writers.flatten_config(config, prefix="")
  fields = sorted(k for k in set(before) | set(now) if k.startswith(MUST_MATCH))
  return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in fields if before.get(k) != now.get(k)]


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def record(self, step: int) -> dict[str, Any]:
    """The JSON record saved with the state of `step` (config, and final metrics at the end)."""
    return self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]

  def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
    """Starts writing `state` in the background; the arrays are copied before it returns."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True)

  def restore(self, template: Any, step: int | None = None,
              check: Callable[[dict[str, Any]], None] = lambda record: None,
              ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, record) of `step`, else of the newest checkpoint that reads back.

    `template` is a state of numpy arrays with the right structure; the result is numpy
    too. `check(record)` runs before the state is read and may raise (say, for another
    model). A checkpoint that cannot be read is reported and the one before it is tried.
    """
    steps = [step] if step is not None else self.steps()[::-1]
    if step is not None and step not in self.steps():
      raise FileNotFoundError(f"No checkpoint of step {step} in {self.directory}; there are {self.steps()}.")
    for candidate in steps:
      try:
        record = self.record(candidate)
        check(record)
        state = self._manager.restore(
            candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(template)))["state"]
        return candidate, state, record
      except ConfigMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise
        aside = self._move_aside(candidate)
        print(f"Checkpoint of step {candidate} in {self.directory} is unreadable "
              f"({type(e).__name__}: {str(e)[:200]}); moved to {aside}, trying the one before.",
              file=sys.stderr, flush=True)
    return None

  def _move_aside(self, step: int) -> str:
    """Moves an unreadable checkpoint out of the way (kept for a look), so its step can be saved again."""
    aside = os.path.join(os.path.dirname(self.directory), "unreadable_checkpoints", str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.rmtree(aside, ignore_errors=True)
      os.replace(os.path.join(self.directory, str(step)), aside)
    parallel.sync_processes(f"move_aside_{step}")  # the others reload only once it is gone
    self._manager.reload()
    return aside

  def wait(self) -> None:
    """Blocks until the saves in flight are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def final_metrics(workdir: str) -> dict[str, Any] | None:
  """The final metrics and "step" of the run in `workdir` if it has finished, else None.

  Reads the newest checkpoint's record only, not the state: cheap enough to ask of every
  run of a sweep.
  """
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  ckpts = Checkpoints(workdir)
  try:
    steps = ckpts.steps()
    final = ckpts.record(steps[-1]).get("final") if steps else None
    return {"step": steps[-1], **final} if final else None
  except Exception:  # pylint: disable=broad-except
    return None  # an unreadable record: train.py sorts it out when the run resumes
  finally:
    ckpts.close()


class PreemptionSignal:
  """Within `with`, SIGTERM and SIGINT set `.signum` instead of killing the process."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum = 0
    self._previous = {}

  def __enter__(self):
    for s in self.SIGNALS:
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.signum = signum

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    return False
