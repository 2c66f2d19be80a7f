"""depthlab/parallel.py: several processes train as one, fail clearly, and stop together.

The multi-process tests start real processes on localhost (tests/multiprocess_child.py),
joined by jax.distributed with CPU collectives, each with its own fake CPU devices.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from depthlab import checkpoints, loop, parallel, run_setup
from tests.conftest import make_tiny_config
from tests.test_train import REPO, read_metrics

CHILD = os.path.join(REPO, "tests", "multiprocess_child.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def write_config(config, workdir) -> str:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config_in.json")
  with open(path, "w") as f:
    f.write(config.to_json())
  return path


def child_argv(config_path, workdir, devices, num_processes, process_id, coordinator):
  return [
    sys.executable,
    CHILD,
    config_path,
    str(workdir),
    f"--devices={devices}",
    f"--num_processes={num_processes}",
    f"--process_id={process_id}",
    f"--coordinator={coordinator}",
  ]


def child_env():
  """The environment with the test session's compilation cache (tests/conftest.py)."""
  return {
    **os.environ,
    "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(jax.config.jax_persistent_cache_min_compile_time_secs),
  }


def launch(config, workdir, num_processes, devices_per_process, timeout=150, sigterm=None):
  """Runs the config in `num_processes` processes; returns each one's (exit status, output).

  `sigterm` = (process id, step): that process alone is sent SIGTERM at that step. A
  process still running after `timeout` seconds fails the test (a hang is a failure).
  """
  config_path = write_config(config, workdir)
  coordinator = f"localhost:{free_port()}"
  processes = []
  for i in range(num_processes):
    argv = child_argv(config_path, workdir, devices_per_process, num_processes, i, coordinator)
    if sigterm and sigterm[0] == i:
      argv.append(f"--sigterm_at_step={sigterm[1]}")
    processes.append(
      subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
  deadline, results = time.monotonic() + timeout, []
  try:
    for p in processes:
      out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
      results.append((p.returncode, out))
  except subprocess.TimeoutExpired:
    for p in processes:
      p.kill()
    pytest.fail(
      f"{num_processes} processes still running after {timeout}s: a hang; "
      f"output so far: {[p.communicate()[0][-2000:] for p in processes]}"
    )
  return results


def losses(workdir):
  """(step, train_loss, test_loss or 0) of each metrics line."""
  return [(m["step"], m["train_loss"], m.get("test_loss", 0.0)) for m in read_metrics(workdir)]


def checkpoint_params(workdir):
  ckpts = checkpoints.Checkpoints(str(workdir))
  try:
    restored = ckpts._manager.restore(ckpts.steps()[-1])  # pylint: disable=protected-access
  finally:
    ckpts.close()
  return jax.tree_util.tree_leaves(restored["state"]["params"])


def shared_config():
  """Cross-replica batch norm: the result depends on the global batch only, not on its split."""
  config = make_tiny_config()
  config.cross_replica_bn, config.log_every_steps = True, 1
  config.total_steps, config.eval_every_steps, config.checkpoint_every_steps = 6, 3, 3
  return config


STOP_STEP = 4  # process 1 alone gets SIGTERM here


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs and outputs of one 6-step run on 1 process x 4 devices and on 2 processes x 2 devices.

  The 2-process run is stopped by a SIGTERM to process 1 at step 4 and resumed to step 6
  in a single process of 4 devices. One 2-process launch serves all the tests below (it
  takes most of their time).
  """
  if jax.device_count() < 4:  # the children run on fake CPUs, but the one-process runs here on our devices
    pytest.skip(f"needs 4 devices; the {jax.default_backend()} backend has {jax.device_count()}")
  root = tmp_path_factory.mktemp("runs")
  config = shared_config()
  with tfds.testing.mock_data(num_examples=256):  # what mock_cifar10 gives
    config.num_devices = 4
    loop.train_and_evaluate(config, str(root / "one"))
    config.num_devices = 0
    outputs = launch(config, root / "two", num_processes=2, devices_per_process=2, sigterm=(1, STOP_STEP))
    stopped = losses(root / "two")
    config.num_devices = 4
    loop.train_and_evaluate(config, str(root / "two"))
  return {"one": root / "one", "two": root / "two", "outputs": outputs, "stopped": stopped}


# --------------------------------------------------------------- two processes, one run


def test_two_processes_of_two_devices_train_like_one_process_of_four(runs):
  one = losses(runs["one"])
  assert [step for step, *_ in runs["stopped"]] == [1, 2, 3, 4]
  # Same global batches, batch norm over all 4 devices: only the order of float sums differs.
  np.testing.assert_allclose(runs["stopped"], one[:STOP_STEP], rtol=1e-5)


def test_only_process_0_writes_to_the_console(runs):
  (_, first), (_, second) = runs["outputs"]
  assert "resnet8: 75,290 parameters" in first and "step 2/6" in first
  assert "parameters" not in second and "step 2/6" not in second and "Stopped" not in second


def test_sigterm_to_one_process_stops_all_at_the_same_step_with_a_checkpoint(runs):
  for rc, out in runs["outputs"]:
    assert rc == 128 + signal.SIGTERM, out[-3000:]
  assert f"Stopped by signal {int(signal.SIGTERM)} at step {STOP_STEP}" in runs["outputs"][0][1]


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
  # Six SGD steps amplify the different summation order: ~1e-5 relative in the late losses,
  # a few 1e-4 of parameters of size ~1.
  np.testing.assert_allclose(losses(runs["two"]), losses(runs["one"]), rtol=1e-4)
  for a, b in zip(checkpoint_params(runs["two"]), checkpoint_params(runs["one"])):
    np.testing.assert_allclose(a, b, rtol=0, atol=5e-4)  # 2.2e-4 seen


# ------------------------------------------------------------------------- start-up


def test_a_process_that_cannot_reach_the_coordinator_fails_naming_it(tmp_path):
  config = shared_config()
  config.distributed.initialization_timeout = 2
  config_path = write_config(config, tmp_path)
  address = f"localhost:{free_port()}"  # nobody listens there
  start = time.monotonic()
  result = subprocess.run(
    child_argv(config_path, tmp_path, 1, num_processes=2, process_id=1, coordinator=address),
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert f"CoordinatorUnreachableError: Could not reach the coordinator at {address} within 2s" in result.stderr
  assert "process 0 has started" in result.stderr
  assert time.monotonic() - start < 60


def test_a_single_process_run_does_not_start_jax_distributed(tiny_config):
  parallel.maybe_initialize_distributed(tiny_config.distributed, environ={})
  assert jax.distributed.is_initialized() is False and jax.process_count() == 1


@pytest.mark.parametrize(
  "environ, several",
  [
    ({}, False),
    ({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "1"}, False),  # a batch script: one process
    ({"SLURM_STEP_NUM_TASKS": "8"}, True),  # srun with 8 tasks
    ({"SLURM_STEP_NUM_TASKS": "1"}, False),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, True),  # mpirun -np 4
  ],
)
def test_srun_and_mpirun_with_several_tasks_start_jax_distributed(environ, several):
  assert parallel.launched_as_several_processes(environ) is several


def test_a_global_batch_that_does_not_divide_over_all_processes_devices_is_an_error(tiny_config):
  tiny_config.batch_size = 18
  with pytest.raises(
    ValueError,
    match=r"batch_size 18 does not divide over 4 devices \(2 processes\); "
    r"use a multiple of 4",
  ):
    run_setup.check_batch_size(tiny_config, num_devices=4, num_processes=2)
