"""Runs that survive: orbax checkpoints in <workdir>/checkpoints, resuming, and preemption.

A checkpoint holds one copy of the train state (no device axis, so it restores on any
number of devices) and a small JSON record: the config it was trained with and a
fingerprint of the state, checked when it is restored. The last one of a run gets its
final metrics (final.json) once the final evaluation is done. Everything else a resumed
run needs is a function of the step: the data order, the augmentation and the learning rate.
"""

from collections.abc import Callable
import hashlib
import json
import os
import shutil
import signal
import sys
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from depthlab import distributed, errors, run_files

# The fields a run cannot change when it resumes: they change the model or the data.
MUST_MATCH = (
  "model.",
  "dataset.name",
  "dataset.validation_size",
  "dataset.crop_padding",
  "dataset.random_flip",
  "dataset.augmentation",
  "dataset.image_size",
  "batch_size",
  "seed",
  "num_seeds",
  "dtype",
)


def _host_array(x: Any) -> np.ndarray:
  """A leaf as numpy: this process's copy of a replicated array that spans several processes."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_shards[0].data
  return np.asarray(x)


def fingerprint(state: Any) -> str:
  """A SHA-256 of every leaf's place in the tree, dtype, shape and bytes.

  Orbax checks no checksum when it reads (changed bytes in a data file read back as other
  numbers), so each checkpoint's record carries this, and a restore compares.
  """
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    array = np.ascontiguousarray(_host_array(leaf))
    digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape};".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def verify(state: Any, record: dict[str, Any]) -> None:
  """Raises errors.CorruptCheckpointError if a restored state is not the one saved with `record`."""
  saved = record.get("fingerprint")  # None: saved before checkpoints carried one
  if saved is not None and fingerprint(state) != saved:
    raise errors.CorruptCheckpointError("its contents differ from the fingerprint saved with it")
  bad = [
    jax.tree_util.keystr(path)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state)
    if np.issubdtype(np.asarray(leaf).dtype, np.floating) and not np.isfinite(leaf).all()
  ]
  if bad:  # training saves only finite states (Trainer.save checks before each save)
    raise errors.CorruptCheckpointError(f"it holds NaN or infinite values in {', '.join(bad[:3])}")


def config_differences(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
  """'field: saved -> now' for each MUST_MATCH field that differs."""
  before = run_files.flatten_config(ml_collections.ConfigDict(run_files.with_defaults(saved)), prefix="")
  now = run_files.flatten_config(config, prefix="")
  fields = sorted(k for k in set(before) | set(now) if k.startswith(MUST_MATCH))
  return [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in fields if before.get(k) != now.get(k)]


def check_same_model_and_data(record: dict[str, Any], config: ml_collections.ConfigDict, directory: str) -> None:
  """Raises errors.ConfigMismatchError if the checkpoint saved with `record` (in `directory`) was
  trained with another model or data than `config` (a MUST_MATCH field differs)."""
  differences = config_differences(record["config"], config)
  if differences:
    raise errors.ConfigMismatchError(
      [
        f"{directory} holds a run with another model or data; differing fields:\n      "
        + "\n      ".join(differences)
        + "\n    Use another --workdir, or --config.restart=True to start over there."
      ]
    )


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Before the data loads: the newest readable checkpoint record of `workdir`, if any, against
  `config` (check_same_model_and_data). Reads records only; the restore checks again the
  checkpoint it takes."""
  if config.restart or not has_checkpoints(workdir):
    return
  ckpts = Checkpoints(workdir)
  try:
    for step in ckpts.steps()[::-1]:
      try:
        record = ckpts.record(step)
      except Exception:
        continue  # an unreadable record: the restore reports it and tries the one before
      check_same_model_and_data(record, config, ckpts.directory)
      return
  finally:
    ckpts.close()


def steps_on_disk(workdir: str) -> list[int]:
  """The steps whose checkpoints `workdir` holds whole (from the folders' names: cheap, no orbax;
  orbax names a checkpoint's folder by its step once it is complete)."""
  try:
    return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints")) if name.isdigit())
  except OSError:
    return []


def has_checkpoints(workdir: str) -> bool:
  """Whether `workdir` holds saved steps."""
  return bool(steps_on_disk(workdir))


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    try:
      self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
      )
    except OSError as e:
      raise errors.storage_error("checkpoints", self.directory, e) from e

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def record(self, step: int) -> dict[str, Any]:
    """The JSON record saved with the state of `step` (config, fingerprint), with "final"
    (the final metrics) once the run's final evaluation is recorded."""
    record = self._manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]
    final_path = self._final_path(step)
    if os.path.exists(final_path):
      with open(final_path) as f:
        record["final"] = json.load(f)
    return record

  def _final_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step), "final.json")

  def save(self, step: int, state: Any, record: dict[str, Any]) -> None:
    """Starts writing `state` in the background; the arrays are copied before it returns."""
    record = {**record, "fingerprint": fingerprint(state)}
    try:
      self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)), force=True
      )
    except Exception as e:
      raise self._storage_error(step, e) from e

  def save_final(self, step: int, final: dict[str, Any]) -> None:
    """Records the final metrics with the (committed) checkpoint of `step`: the run is finished."""
    self.wait()
    if jax.process_index() == 0:
      path = self._final_path(step)
      try:
        with open(f"{path}.tmp", "w") as f:
          json.dump(final, f, default=list)
          f.flush()
          os.fsync(f.fileno())
        os.replace(f"{path}.tmp", path)  # all or nothing: a torn final.json would read as no result
      except OSError as e:
        raise errors.storage_error(f"the final metrics of step {step}", path, e) from e
    distributed.sync_processes(f"final_{step}")

  def restore(
    self,
    template: Any,
    step: int | None = None,
    check: Callable[[dict[str, Any]], None] = lambda record: None,
    set_aside: bool = True,
  ) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, record) of `step`, else of the newest checkpoint that reads back intact.

    `template` is a state of numpy arrays with the right structure; the result is numpy
    too. `check(record)` runs before the state is read and may raise (say, for another
    model). A checkpoint that cannot be read, or reads back other than it was saved
    (fingerprint, non-finite values), is reported and the one before it is tried; with
    `set_aside` it is also moved out of the way (a training run does; an evaluator, which
    must not change a run, does not).
    """
    steps = [step] if step is not None else self.steps()[::-1]
    if step is not None and step not in self.steps():
      raise FileNotFoundError(f"No checkpoint of step {step} in {self.directory}; there are {self.steps()}.")
    for candidate in steps:
      try:
        record = self.record(candidate)
        check(record)
        state = self._manager.restore(candidate, args=ocp.args.Composite(state=ocp.args.StandardRestore(template)))[
          "state"
        ]
        verify(state, record)
        return candidate, state, record
      except errors.ConfigMismatchError:
        raise
      except Exception as e:
        if step is not None:
          raise errors.CorruptCheckpointError(
            f"Checkpoint of step {step} in {self.directory} is unreadable or "
            f"corrupt: {type(e).__name__}: {str(e)[:300]}"
          ) from e
        problem = ("is corrupt" if isinstance(e, errors.CorruptCheckpointError) else "is unreadable") + (
          f" ({type(e).__name__}: {str(e)[:200]})"
        )
        if set_aside:
          problem += f"; moved to {self._move_aside(candidate)}"
        print(
          f"Checkpoint of step {candidate} in {self.directory} {problem}; trying the one before.",
          file=sys.stderr,
          flush=True,
        )
    return None

  def _move_aside(self, step: int) -> str:
    """Moves an unreadable checkpoint out of the way (kept for a look), so its step can be saved again."""
    aside = os.path.join(os.path.dirname(self.directory), "unreadable_checkpoints", str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(aside), exist_ok=True)
      shutil.rmtree(aside, ignore_errors=True)
      os.replace(os.path.join(self.directory, str(step)), aside)
    distributed.sync_processes(f"move_aside_{step}")  # the others reload only once it is gone
    self._manager.reload()
    return aside

  def wait(self) -> None:
    """Blocks until the saves in flight are on disk."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._storage_error(None, e) from e

  def _storage_error(self, step: int | None, error: BaseException) -> errors.StorageError:
    """What a failed save says: the folder and the cause, in one line (the cause of an
    OSError deep in orbax is found in the exception's chain)."""
    cause = error
    while cause is not None and not isinstance(cause, OSError):
      cause = cause.__cause__ or cause.__context__
    # A background save's failure surfaces at the next save or wait: the step is when it was noticed.
    what = f"checkpoints (noticed saving step {step})" if step is not None else "checkpoints"
    saved = steps_on_disk(os.path.dirname(self.directory))
    last = f"The newest checkpoint on disk is step {saved[-1]}" if saved else "No checkpoint is on disk yet"
    return errors.storage_error(what, self.directory, cause or error, saved=f"{last}. ")

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
  except Exception:
    return None  # an unreadable record: train.py sorts it out when the run resumes
  finally:
    ckpts.close()


class PreemptionSignal:
  """Within `with`, SIGTERM and SIGINT set `.signum` instead of killing the process: the loop
  then saves a checkpoint at a step boundary and stops.

  A thread woken by the signal itself (signal.set_wakeup_fd), not by the main thread, which may
  be waiting on the devices, says at once at which step the run stops (`.step` is the loop's
  latest step; with several processes they agree on the next log or checkpoint step). A second
  signal ends the process at once, naming the newest checkpoint on disk of `workdir`.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, workdir: str = "", several_processes: bool = False, announce: bool = True):
    self.signum = 0
    self.step = 0
    self._workdir, self._several, self._announce = workdir, several_processes, announce
    self._previous, self._pipe, self._previous_wakeup, self._watcher = {}, None, -1, None

  def __enter__(self):
    for s in self.SIGNALS:
      self._previous[s] = signal.signal(s, self._handle)
    self._pipe = os.pipe()
    os.set_blocking(self._pipe[1], False)
    self._previous_wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
    self._watcher = threading.Thread(target=self._watch, args=(self._pipe[0],), daemon=True, name="signal-watch")
    self._watcher.start()
    return self

  def _handle(self, signum, frame):
    self.signum = self.signum or signum

  def _watch(self, read_fd: int) -> None:
    """Runs in a thread: reacts to each signal as it arrives."""
    received = 0
    while True:
      try:
        data = os.read(read_fd, 64)
      except OSError:
        return
      if not data:
        return  # the pipe was closed: the `with` block ended
      for signum in data:
        if signum not in self.SIGNALS:
          continue
        received += 1
        if received == 1:
          self._say_where_it_stops(signum)
        else:
          self._exit_now(signum)

  def _say_where_it_stops(self, signum: int) -> None:
    if not self._announce:
      return
    where = "at the next log or checkpoint step" if self._several else f"after step {self.step}, its step in progress"
    print(
      f"Signal {signum} received: the run stops {where}, saving a checkpoint there "
      "(a second signal, e.g. Ctrl-C again, exits at once without saving).",
      file=sys.__stderr__,  # the console itself: sys.stderr sends other threads' writes to library.log
      flush=True,
    )

  def _exit_now(self, signum: int) -> None:
    saved = steps_on_disk(self._workdir) if self._workdir else []
    where = (
      f"the newest checkpoint on disk is step {saved[-1]} in {os.path.join(self._workdir, 'checkpoints')}; "
      "the same command resumes from there"
      if saved
      else "no checkpoint was saved; the same command starts over"
    )
    if self._announce:
      print(f"Second signal {signum}: exiting now, without saving; {where}.", file=sys.__stderr__, flush=True)
    os._exit(128 + signum)

  def __exit__(self, *exc):
    signal.set_wakeup_fd(self._previous_wakeup)
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    os.close(self._pipe[1])  # the watching thread reads the end of the pipe and returns
    self._watcher.join(timeout=5)
    os.close(self._pipe[0])
    return False
