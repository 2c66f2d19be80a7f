"""depthlab/parallel.py: several processes train as one, fail clearly, and stop together.

The multi-process tests run train.py itself, as a user or a cluster starts it: one process
per host on localhost, joined by jax.distributed with CPU collectives, each with its own fake
CPU devices, on mock data (tests/mock_data_run.py).
"""

import signal
import socket
import subprocess
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from depthlab import checkpoints, distributed, loop, validation
from depthlab.run_files import read_metrics
from tests.conftest import REPO, make_tiny_config, process_env, train_py


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(config, workdir, num_processes, devices_per_process, how="environment", timeout=150, sigterm=None):
  """Runs train.py for `config` as `num_processes` processes; returns each one's (exit status, output).

  `how`: "environment" gives each process the coordinator, process count and id as
  $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and $JAX_PROCESS_ID; "flags" as
  --config.distributed.* (the two ways docs/hosts.md shows). `sigterm` = (process id, step):
  that process alone is sent SIGTERM at that step. A process still running after `timeout`
  seconds fails the test (a hang is a failure).
  """
  coordinator = f"localhost:{free_port()}"
  processes = []
  for i in range(num_processes):
    step = sigterm[1] if sigterm and sigterm[0] == i else 0
    if how == "environment":
      flags, env = (
        [],
        {
          "JAX_COORDINATOR_ADDRESS": coordinator,
          "JAX_NUM_PROCESSES": str(num_processes),
          "JAX_PROCESS_ID": str(i),
        },
      )
    else:
      flags, env = (
        [
          f"--config.distributed.coordinator_address={coordinator}",
          f"--config.distributed.num_processes={num_processes}",
          f"--config.distributed.process_id={i}",
        ],
        {},
      )
    processes.append(
      subprocess.Popen(
        train_py(config, workdir, *flags, sigterm_at_step=step),
        cwd=REPO,
        env=process_env(devices_per_process, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
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
    restored = ckpts._manager.restore(ckpts.steps()[-1])
  finally:
    ckpts.close()
  return jax.tree_util.tree_leaves(restored["state"]["params"])


def shared_config():
  """Cross-replica batch norm: the result depends on the global batch only, not on its split."""
  config = make_tiny_config()
  config.cross_replica_bn, config.log_every_steps = True, 1
  config.total_steps, config.eval_every_steps, config.checkpoint_every_steps = 6, 3, 3
  config.num_devices = 0  # several processes train on all their devices
  return config


STOP_STEP = 4  # process 1 alone gets SIGTERM here


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs and outputs of 6-step runs of train.py on 1 process x 4 devices and on 2 processes x 2 devices.

  "one": the reference, in this process. "two": 2 processes started with the environment
  variables, stopped by a SIGTERM to process 1 at step 4, then resumed to step 6 by train.py
  as a single process of 4 devices. "flags": 2 processes started with the
  --config.distributed.* flags, trained through.
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
  resumed = subprocess.run(
    train_py(config, root / "two"), cwd=REPO, env=process_env(4), capture_output=True, text=True, timeout=150
  )
  flags = launch(config, root / "flags", num_processes=2, devices_per_process=2, how="flags")
  return {
    "one": root / "one",
    "two": root / "two",
    "flags": root / "flags",
    "outputs": outputs,
    "stopped": stopped,
    "resumed": resumed,
    "flags_outputs": flags,
  }


# --------------------------------------------------------------- two processes, one run


def test_two_processes_of_two_devices_train_like_one_process_of_four(runs):
  one = losses(runs["one"])
  assert [step for step, *_ in runs["stopped"]] == [1, 2, 3, 4]
  # Same global batches, batch norm over all 4 devices: only the order of float sums differs.
  np.testing.assert_allclose(runs["stopped"], one[:STOP_STEP], rtol=1e-5)


def test_two_processes_started_with_the_distributed_flags_train_like_one_process_of_four(runs):
  for rc, out in runs["flags_outputs"]:
    assert rc == 0, out[-3000:]
  assert "Done: resnet8 after 6 steps" in runs["flags_outputs"][0][1]
  np.testing.assert_allclose(losses(runs["flags"]), losses(runs["one"]), rtol=1e-4)
  assert (runs["flags"] / "run.lock").read_text() == "", "process 0 released the workdir's one lock"


def test_only_process_0_writes_to_the_console(runs):
  (_, first), (_, second) = runs["outputs"]
  assert "resnet8: 75,290 parameters" in first and "step 2/6" in first
  assert "parameters" not in second and "step 2/6" not in second and "Stopped" not in second


def test_sigterm_to_one_process_stops_all_at_the_same_step_with_a_checkpoint(runs):
  for rc, out in runs["outputs"]:
    assert rc == 128 + signal.SIGTERM, out[-3000:]
  assert f"Stopped by signal {int(signal.SIGTERM)} at step {STOP_STEP}" in runs["outputs"][0][1]


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
  assert runs["resumed"].returncode == 0, runs["resumed"].stderr[-3000:]
  assert f"resuming at step {STOP_STEP}" in runs["resumed"].stdout
  # Six SGD steps amplify the different summation order: ~1e-5 relative in the late losses,
  # a few 1e-4 of parameters of size ~1.
  np.testing.assert_allclose(losses(runs["two"]), losses(runs["one"]), rtol=1e-4)
  for a, b in zip(checkpoint_params(runs["two"]), checkpoint_params(runs["one"])):
    np.testing.assert_allclose(a, b, rtol=0, atol=5e-4)  # 2.2e-4 seen


# ------------------------------------------------------------------------- start-up


def test_a_process_that_cannot_reach_the_coordinator_fails_naming_it(tmp_path):
  config = shared_config()
  config.distributed.initialization_timeout = 2
  address = f"localhost:{free_port()}"  # nobody listens there
  start = time.monotonic()
  flags = [f"--config.distributed.coordinator_address={address}", "--config.distributed.num_processes=2"]
  result = subprocess.run(
    train_py(config, tmp_path / "run", *flags, "--config.distributed.process_id=1"),
    cwd=REPO,
    env=process_env(1),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert f"Error: Could not reach the coordinator at {address} within 2s" in result.stderr
  assert "process 0 has started" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists(), "a run that never started leaves no workdir"
  assert time.monotonic() - start < 60


def test_a_single_process_run_does_not_start_jax_distributed(tiny_config):
  distributed.maybe_initialize_distributed(tiny_config.distributed, environ={})
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
  assert distributed.launched_as_several_processes(environ) is several


def test_a_global_batch_that_does_not_divide_over_all_processes_devices_is_an_error(tiny_config):
  tiny_config.batch_size, tiny_config.num_devices = 18, 0
  assert validation.device_problems(tiny_config, available=4, num_processes=2) == [
    "batch_size 18 does not divide over 4 devices (2 processes); use a multiple of 4 (--config.batch_size=...) "
    "or another number of processes or devices per process."
  ]


def test_num_devices_cannot_leave_devices_out_of_a_multi_process_run(tiny_config):
  tiny_config.num_devices = 2
  (problem,) = validation.device_problems(tiny_config, available=4, num_processes=2)
  assert "only a single-process run can leave devices out; set --config.num_devices=0" in problem
