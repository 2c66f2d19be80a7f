"""depthlab/workdir_lock.py: one process trains in a workdir; a second is refused naming the
first; a lock left by a killed process is taken over, and eval.py sees a run in progress.

The processes are train.py itself on mock data (tests/mock_data_run.py), started as a user
starts them.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from depthlab import workdir_lock
from depthlab.run_files import read_metrics
from tests.conftest import HOLD_LOCK, REPO, make_tiny_config, process_env, train_py


def long_config():
  """A run that takes a while after it has taken the lock: ResNet-8, 60 steps, a checkpoint every 10."""
  config = make_tiny_config()
  config.total_steps, config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 60, 10, 60, 10
  return config


def start(config, workdir, **kwargs) -> subprocess.Popen:
  return subprocess.Popen(
    train_py(config, workdir, **kwargs),
    cwd=REPO,
    env=process_env(1),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def wait_until(condition, what: str, timeout: float = 120) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    if time.monotonic() > deadline:
      pytest.fail(f"waited {timeout}s for {what}")
    time.sleep(0.2)


def lock_is_taken(workdir) -> bool:
  path = os.path.join(workdir, workdir_lock.LOCK_FILE)
  return os.path.exists(path) and os.path.getsize(path) > 0


@pytest.fixture
def holder_process(tmp_path):
  """Another process that holds the lock of tmp_path / "run"."""
  workdir = tmp_path / "run"
  process = subprocess.Popen(
    [sys.executable, "-c", HOLD_LOCK, str(workdir)], cwd=REPO, env=process_env(1), stdout=subprocess.PIPE, text=True
  )
  assert process.stdout.readline().strip() == "holding"
  yield workdir, process
  process.kill()
  process.wait()


def test_a_second_train_py_on_a_held_workdir_is_refused_at_once_naming_the_holder(holder_process):
  workdir, holder = holder_process
  started = time.monotonic()
  result = subprocess.run(
    train_py(make_tiny_config(), workdir), cwd=REPO, env=process_env(1), capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 1
  assert f"Error: {workdir} is in use by another run: PID {holder.pid} on host" in result.stderr
  assert "train in another --workdir" in result.stderr and "Traceback" not in result.stderr
  assert sorted(os.listdir(workdir)) == [workdir_lock.LOCK_FILE], "the refused run wrote nothing"
  assert time.monotonic() - started < 60  # start-up only: no data loaded, nothing compiled


def test_the_same_command_twice_at_once_trains_once_and_loses_nothing(tmp_path):
  workdir, config = tmp_path / "run", long_config()
  first = start(config, workdir)
  wait_until(lambda: lock_is_taken(workdir), "the first run to take the lock")
  second = subprocess.run(
    train_py(config, workdir), cwd=REPO, env=process_env(1), capture_output=True, text=True, timeout=120
  )
  out, err = first.communicate(timeout=300)
  assert second.returncode == 1 and f"PID {first.pid}" in second.stderr, second.stderr[-2000:]
  assert first.returncode == 0, err[-3000:]
  assert "Done: resnet8 after 60 steps" in out
  assert [line["step"] for line in read_metrics(workdir)] == list(range(10, 61, 10))


def test_a_lock_left_by_a_killed_run_is_taken_over_and_the_run_resumes(tmp_path):
  workdir, config = tmp_path / "run", long_config()
  first = start(config, workdir)
  wait_until(lambda: os.path.isdir(workdir / "checkpoints" / "10"), "the first checkpoint")
  first.send_signal(signal.SIGKILL)
  first.wait()
  holder = json.loads((workdir / workdir_lock.LOCK_FILE).read_text())
  assert holder["pid"] == first.pid, "a killed run cannot empty its lock file"
  result = subprocess.run(
    train_py(config, workdir), cwd=REPO, env=process_env(1), capture_output=True, text=True, timeout=300
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"taking over the lock of PID {first.pid} on host" in result.stderr
  assert "resuming at step" in result.stdout and "Done: resnet8 after 60 steps" in result.stdout
  assert (workdir / workdir_lock.LOCK_FILE).read_text() == "", "released at the end"


def test_holder_names_the_process_that_holds_the_lock_and_none_once_it_is_gone(holder_process):
  workdir, holder = holder_process
  assert workdir_lock.holder(str(workdir))["pid"] == holder.pid
  holder.kill()
  holder.wait()
  assert workdir_lock.holder(str(workdir)) is None
  assert workdir_lock.holder(str(workdir / "nowhere")) is None
