"""One run per workdir: the lock a run holds on its workdir while it trains.

A second process started on a workdir that a run holds (the same command twice, a sweep
started twice, a job resubmitted while its first copy still runs) is refused at once,
told which process holds it. The lock is a POSIX record lock (`fcntl.lockf`) on
<workdir>/run.lock: the kernel, or on NFS the server once the holder's lease lapses,
releases it when the holder dies however it dies (kill -9, a lost node), so a dead run
never blocks the next one. The file names the holder (host, PID, since when, command) for
the refusal; a run that ends empties it, so a next run that finds it filled knows its
holder died without releasing it, takes the lock over and says so. In a multi-host run
process 0 alone takes the lock, and every process learns whether it got it.
"""

from collections.abc import Iterator
import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import time
from typing import Any

import jax

from depthlab import distributed, errors, run_files

LOCK_FILE = "run.lock"
HELD = (errno.EACCES, errno.EAGAIN)  # what lockf raises when another process holds the lock


def _holder(fd: int) -> dict[str, Any]:
  """Who the lock file names ({} when it is empty or unreadable)."""
  try:
    return json.loads(os.pread(fd, 65536, 0).decode() or "{}")
  except (OSError, ValueError):
    return {}


def describe(holder: dict[str, Any]) -> str:
  """'PID 123 on host h since 2026-12-06 21:10:04 (python train.py ...)'."""
  if not holder:
    return "a process that has not written its name yet"
  return f"PID {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')} ({holder.get('command')})"


def _lock(fd: int, wait_seconds: float) -> bool:
  """Takes the lock on `fd`, retrying for `wait_seconds` (eval.py may be looking); False if it stays held."""
  deadline = time.monotonic() + wait_seconds
  while True:
    try:
      fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except OSError as e:
      if e.errno not in HELD:
        raise
      if time.monotonic() > deadline:
        return False
      time.sleep(0.1)


def _refusal(workdir: str, holder: dict[str, Any]) -> str:
  return (
    f"{workdir} is in use by another run: {describe(holder)}. Only one process may train in a workdir. "
    f"Wait for that run to end (or stop it), or train in another --workdir. eval.py can read the workdir meanwhile."
  )


@contextlib.contextmanager
def hold(workdir: str, wait_seconds: float = 2.0) -> Iterator[None]:
  """Holds the workdir's lock for the `with` block (process 0 takes it for all processes), or
  raises errors.WorkdirInUseError naming the holder. Creates the workdir (a StorageError if it cannot)."""
  fd, refusal = None, ""
  if jax.process_index() == 0:
    run_files.check_writable(workdir)
    path = os.path.join(workdir, LOCK_FILE)
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
      if _lock(fd, wait_seconds):
        _take_over(fd, workdir)
      else:
        refusal = _refusal(workdir, _holder(fd))
    except OSError as e:
      if fd is not None:
        os.close(fd)
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise errors.storage_error("the workdir's lock", path, e) from e
      fd = None  # a filesystem without locks: warn, and train unlocked
      print(
        f"Warning: {workdir} is on a filesystem that cannot lock files ({e.strerror}); nothing stops a "
        "second process from training there at the same time.",
        file=sys.stderr,
        flush=True,
      )
    if refusal:
      os.close(fd)
  if distributed.max_over_processes(int(bool(refusal))):
    raise errors.WorkdirInUseError(refusal or f"{workdir} is in use by another run (process 0 says which).")
  try:
    yield
  finally:
    if fd is not None:
      _release(fd)


def _take_over(fd: int, workdir: str) -> None:
  """Writes this process's name into the lock it holds; says whose lock it takes over, if any."""
  previous = _holder(fd)
  if previous:
    print(
      f"{workdir}: taking over the lock of {describe(previous)}, which ended without releasing it "
      "(killed, crashed or lost with its host). Its last checkpoint is where this run resumes.",
      file=sys.stderr,
      flush=True,
    )
  me = {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "since": datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
    "command": " ".join(["python", *sys.argv]),
  }
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(me).encode(), 0)
  os.fsync(fd)


def _release(fd: int) -> None:
  """Empties the lock file (the run ended and released it), then unlocks."""
  try:
    os.ftruncate(fd, 0)
  except OSError:
    pass  # a full or vanished disk: the next run only says it takes the lock over
  finally:
    fcntl.lockf(fd, fcntl.LOCK_UN)
    os.close(fd)


def holder(workdir: str) -> dict[str, Any] | None:
  """Who holds the workdir's lock while a run trains there, else None. Only reads: for eval.py."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    fcntl.lockf(fd, fcntl.LOCK_UN)
    return None
  except OSError as e:
    return _holder(fd) if e.errno in HELD else None
  finally:
    os.close(fd)
