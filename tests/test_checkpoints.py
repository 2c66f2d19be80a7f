"""Runs that survive: resume equals an uninterrupted run, preemption, faults, refusals."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import default
from depthlab import checkpoints, cli, errors, evaluation, loop, run_files
from depthlab import state as state_lib
from depthlab.run_files import read_metrics
from tests.conftest import REPO, make_tiny_config, process_env, requires_cpu, train_py


def final_params(workdir):
  """The parameters of a workdir's newest checkpoint, as a flat list of arrays."""
  ckpts = checkpoints.Checkpoints(str(workdir))
  try:
    step = ckpts.steps()[-1]
    restored = ckpts._manager.restore(step)
  finally:
    ckpts.close()
  return step, jax.tree_util.tree_leaves(restored["state"]["params"])


def comparable(lines):
  return [{k: v for k, v in line.items() if k != "images_per_sec"} for line in lines]


@pytest.fixture
def resumable_config(tiny_config):
  tiny_config.total_steps, tiny_config.log_every_steps = 8, 2
  tiny_config.eval_every_steps, tiny_config.checkpoint_every_steps = 4, 2
  tiny_config.num_devices = min(2, jax.device_count())  # 2 of the fake CPUs; a lone GPU alone
  return tiny_config


@requires_cpu  # bitwise: an accelerator's reductions need not sum in the same order twice
def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(mock_cifar10, resumable_config, tmp_path):
  loop.train_and_evaluate(resumable_config, str(tmp_path / "whole"))
  resumable_config.total_steps = 4  # stops half way, as a kill after the step-4 checkpoint would
  loop.train_and_evaluate(resumable_config, str(tmp_path / "halves"))
  resumable_config.total_steps = 8
  loop.train_and_evaluate(resumable_config, str(tmp_path / "halves"))

  assert comparable(read_metrics(tmp_path / "halves")) == comparable(read_metrics(tmp_path / "whole"))
  (step_a, whole), (step_b, halves) = final_params(tmp_path / "whole"), final_params(tmp_path / "halves")
  assert step_a == step_b == 8
  for a, b in zip(whole, halves):
    np.testing.assert_array_equal(a, b)  # bitwise on CPU


def test_resume_drops_metrics_lines_written_after_the_checkpoint(mock_cifar10, resumable_config, tmp_path):
  resumable_config.total_steps = 4
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  with open(tmp_path / "metrics.jsonl", "a") as f:  # a line of a run killed after its checkpoint
    f.write('{"step": 6, "train_loss": 1.0}\n')
  resumable_config.total_steps = 8
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  steps = [line["step"] for line in read_metrics(tmp_path)]
  assert steps == [2, 4, 6, 8]


def test_finished_run_is_not_trained_again_unless_restarted(mock_cifar10, tiny_config, tmp_path, capsys):
  first = loop.train_and_evaluate(tiny_config, str(tmp_path))
  again = loop.train_and_evaluate(tiny_config, str(tmp_path))
  assert "holds a finished run" in capsys.readouterr().out
  assert again["test_error"] == first["test_error"] and len(read_metrics(tmp_path)) == 2
  tiny_config.restart = True
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  assert [line["step"] for line in read_metrics(tmp_path)] == [2, 4]


def test_resuming_with_another_model_is_refused_naming_the_fields(mock_cifar10, tiny_config, tmp_path):
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.model.depth, tiny_config.total_steps = 14, 6
  with pytest.raises(errors.ConfigMismatchError, match=r"model\.depth: 8 -> 14"):
    loop.train_and_evaluate(tiny_config, str(tmp_path))
  result = subprocess.run(
    train_py(tiny_config, tmp_path), cwd=REPO, env=process_env(1), capture_output=True, text=True, timeout=120
  )
  assert result.returncode == cli.EXIT_CONFIG and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "model.depth: 8 -> 14" in result.stderr and "Use another --workdir" in result.stderr
  assert "Loaded" not in result.stdout and not (tmp_path / "library.log").exists()  # refused before the data loads


def test_corrupt_latest_checkpoint_is_reported_and_the_previous_one_used(
  mock_cifar10, resumable_config, tmp_path, capsys
):
  resumable_config.total_steps = 4
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  for path in glob.glob(str(tmp_path / "checkpoints" / "4" / "state" / "**" / "d" / "*"), recursive=True):
    with open(path, "wb") as f:
      f.write(b"not a checkpoint")
  resumable_config.total_steps = 6
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  out, err = capsys.readouterr()
  assert "Checkpoint of step 4" in err and "unreadable" in err
  assert "resuming at step 2" in out
  assert [line["step"] for line in read_metrics(tmp_path)] == [2, 4, 6]


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(mock_cifar10, resumable_config, tmp_path):
  resumable_config.total_steps = 4
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  resumable_config.total_steps, resumable_config.learning_rate = 8, float("nan")
  with pytest.raises(FloatingPointError, match="step 6"):
    loop.train_and_evaluate(resumable_config, str(tmp_path))
  step, params = final_params(tmp_path)
  assert step == 4 and all(np.isfinite(p).all() for p in params)


def test_config_differences_ignore_fields_that_do_not_change_the_model_or_data(tiny_config):
  saved = tiny_config.to_dict()
  tiny_config.total_steps, tiny_config.log_every_steps, tiny_config.learning_rate = 100, 7, 0.5
  assert checkpoints.config_differences(saved, tiny_config) == []
  tiny_config.dataset.validation_size, tiny_config.model.residual = 5000, False
  assert checkpoints.config_differences(saved, tiny_config) == [
    "dataset.validation_size: 0 -> 5000",
    "model.residual: True -> False",
  ]


def test_a_checkpoint_saved_before_a_field_existed_counts_as_its_default(tiny_config):
  saved = tiny_config.to_dict()
  del saved["num_seeds"]  # a run from before several seeds per run
  assert checkpoints.config_differences(saved, tiny_config) == []
  tiny_config.num_seeds = 2
  assert checkpoints.config_differences(saved, tiny_config) == ["num_seeds: 1 -> 2"]


def test_a_config_saved_before_a_nested_field_existed_gets_default_py_s_value(tiny_config):
  saved = tiny_config.to_dict()
  for section, field in (
    ("dataset", "image_size"),
    ("dataset", "augmentation"),
    ("dataset", "test_split"),
    ("model", "zero_init_residual"),
  ):
    del saved[section][field]
  filled = run_files.with_defaults(saved)
  defaults = default.get_config()
  assert filled["dataset"] == {
    **saved["dataset"],
    "image_size": defaults.dataset.image_size,
    "augmentation": defaults.dataset.augmentation,
    "test_split": defaults.dataset.test_split,
  }
  assert filled["model"]["zero_init_residual"] == defaults.model.zero_init_residual
  # Another net's model fields are its own: none of the default net's are added.
  lenet = {**saved, "model": {"name": "lenet5", "sparse_c3": True}}
  assert run_files.with_defaults(lenet)["model"] == {"name": "lenet5", "sparse_c3": True}


def test_a_config_saved_before_warmup_shape_existed_was_trained_with_the_constant_warm_up(tiny_config):
  """The default became "linear" after the field was added with "constant", the only warm-up
  before it: an older run reads back as what it trained with, not as today's default."""
  saved = tiny_config.to_dict()
  del saved["warmup_shape"]
  assert default.get_config().warmup_shape == "linear"
  assert run_files.with_defaults(saved)["warmup_shape"] == "constant"
  assert run_files.with_defaults({**saved, "warmup_shape": "linear"})["warmup_shape"] == "linear"


TRAIN_IN_SUBPROCESS = """
import sys
import tensorflow_datasets as tfds
from absl import flags
import train
from depthlab import cli
cli.define_flags()
sys.argv = ["train.py", "--config=configs/resnet20.py", "--config.model.depth=8", "--config.batch_size=16",
            "--config.total_steps={steps}", "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000",
            "--config.wandb.mode=disabled", "--config.dataset.cache_dir=", "--config.num_devices=1",
            "--workdir={workdir}"]
flags.FLAGS(sys.argv)
with tfds.testing.mock_data(num_examples=64):
  train.main(["train.py"])
"""


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
  process = subprocess.Popen(
    [sys.executable, "-c", TRAIN_IN_SUBPROCESS.format(steps=100_000, workdir=tmp_path)],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  deadline = time.time() + 240
  while time.time() < deadline and not os.path.exists(tmp_path / "metrics.jsonl"):
    time.sleep(0.5)
  while time.time() < deadline and len(read_metrics(tmp_path)) < 3:
    time.sleep(0.5)
  process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, out[-3000:]
  assert "Run the same command again to resume" in out
  ckpts = checkpoints.Checkpoints(str(tmp_path))
  saved = ckpts.steps()
  ckpts.close()
  assert len(saved) == 1 and saved[0] >= 3

  resumed = subprocess.run(
    [sys.executable, "-c", TRAIN_IN_SUBPROCESS.format(steps=saved[0] + 2, workdir=tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming at step {saved[0]}" in resumed.stdout
  assert [line["step"] for line in read_metrics(tmp_path)] == list(range(1, saved[0] + 3))


def test_changed_checkpoint_bytes_are_reported_as_corrupt_and_the_previous_checkpoint_used(
  mock_cifar10, resumable_config, tmp_path, capsys
):
  resumable_config.total_steps = 4
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  # Step 2's data under step 4's record: bytes that read back fine, as other numbers.
  shutil.rmtree(tmp_path / "checkpoints" / "4" / "state")
  shutil.copytree(tmp_path / "checkpoints" / "2" / "state", tmp_path / "checkpoints" / "4" / "state")
  resumable_config.total_steps = 6
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  out, err = capsys.readouterr()
  assert "Checkpoint of step 4" in err and "is corrupt" in err and "fingerprint" in err
  assert "resuming at step 2" in out
  assert os.path.isdir(tmp_path / "unreadable_checkpoints" / "4")


def test_non_finite_values_in_a_restored_state_are_corruption_not_divergence():
  state = {"w": np.array([1.0, np.nan], np.float32), "step": np.array(3)}
  with pytest.raises(errors.CorruptCheckpointError, match=r"NaN or infinite values in \['w'\]"):
    checkpoints.verify(state, {})
  with pytest.raises(errors.CorruptCheckpointError, match="fingerprint"):
    checkpoints.verify({"w": np.zeros(2)}, {"fingerprint": checkpoints.fingerprint({"w": np.ones(2)})})


def evaluator_that(monkeypatch, at_final):
  """evaluation.make_evaluator whose evaluation of the final step first calls `at_final()`."""
  make = evaluation.make_evaluator

  def make_evaluator(data_parallel, splits, mean_image, config):
    evaluate = make(data_parallel, splits, mean_image, config)

    def evaluate_and_act(state):
      if state_lib.step_count(data_parallel.single_copy(state)) == config.total_steps:
        at_final()
      return evaluate(state)

    return evaluate_and_act

  monkeypatch.setattr(evaluation, "make_evaluator", make_evaluator)


def test_a_signal_during_the_final_evaluation_leaves_the_final_checkpoint_and_a_finished_run(
  mock_cifar10, resumable_config, tmp_path, monkeypatch, capsys
):
  resumable_config.total_steps, resumable_config.checkpoint_every_steps = 4, 3
  evaluator_that(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  out = capsys.readouterr().out
  assert "checkpoint saved" not in out and "Done: " in out
  assert checkpoints.final_metrics(str(tmp_path))["step"] == 4


def test_a_run_killed_during_its_final_evaluation_resumes_to_evaluate_only(
  mock_cifar10, resumable_config, tmp_path, monkeypatch, capsys
):
  resumable_config.total_steps, resumable_config.checkpoint_every_steps = 4, 3

  def killed():
    raise KeyboardInterrupt  # as a kill -9 would end it: no chance to clean up

  evaluator_that(monkeypatch, killed)
  with pytest.raises(KeyboardInterrupt):
    loop.train_and_evaluate(resumable_config, str(tmp_path))
  assert final_params(tmp_path)[0] == 4 and checkpoints.final_metrics(str(tmp_path)) is None
  monkeypatch.undo()
  final = loop.train_and_evaluate(resumable_config, str(tmp_path))
  assert "resuming at step 4" in capsys.readouterr().out
  assert checkpoints.final_metrics(str(tmp_path))["test_error"] == final["test_error"]
  assert read_metrics(tmp_path)[-1] == {"step": 4, "test_loss": final["test_loss"], "test_error": final["test_error"]}


def test_wall_time_counts_every_segment_of_a_resumed_run(mock_cifar10, resumable_config, tmp_path):
  resumable_config.total_steps = 4
  first = loop.train_and_evaluate(resumable_config, str(tmp_path))["wall_time_sec"]
  resumable_config.total_steps = 6
  assert loop.train_and_evaluate(resumable_config, str(tmp_path))["wall_time_sec"] > first


STORAGE_FAILS_IN_SUBPROCESS = """
import os, sys
import tensorflow_datasets as tfds
from absl import app, flags
import train
from depthlab import cli
from depthlab import writers
write = writers.MetricWriter.write
def write_then_block_checkpoints(self, step, metrics):
  write(self, step, metrics)
  if step == 2:  # the checkpoints folder becomes unwritable: a file stands where it was
    os.rename("{workdir}/checkpoints", "{workdir}/checkpoints_away")
    open("{workdir}/checkpoints", "w").close()
writers.MetricWriter.write = write_then_block_checkpoints
cli.define_flags()
sys.argv = ["train.py", "--config=configs/resnet20.py", "--config.model.depth=8", "--config.batch_size=16",
            "--config.total_steps=8", "--config.log_every_steps=2", "--config.checkpoint_every_steps=2",
            "--config.wandb.mode=disabled", "--config.dataset.cache_dir=", "--config.num_devices=1",
            "--workdir={workdir}"]
with tfds.testing.mock_data(num_examples=64):
  app.run(train.main, flags_parser=cli.parse_flags_or_exit)
"""


def test_an_unwritable_checkpoints_folder_fails_fast_with_one_message(tmp_path):
  start = time.time()
  result = subprocess.run(
    [sys.executable, "-c", STORAGE_FAILS_IN_SUBPROCESS.format(workdir=tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert time.time() - start < 120  # not orbax's 300 s wait for the failed save
  assert (
    f"Error: Cannot write checkpoints (noticed saving step 4) to {tmp_path / 'checkpoints'}: Not a directory"
    in result.stderr
  )
  assert "Traceback" not in result.stderr and "Done" not in result.stdout
  assert "Not a directory" in (tmp_path / "library.log").read_text()  # orbax's own account, kept off the console


def test_a_resume_without_metrics_jsonl_says_which_history_is_lost_and_goes_on(
  mock_cifar10, resumable_config, tmp_path, capsys
):
  resumable_config.total_steps = 4
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  os.remove(tmp_path / "metrics.jsonl")
  resumable_config.total_steps = 6
  loop.train_and_evaluate(resumable_config, str(tmp_path))
  assert "metrics.jsonl is missing: the metrics of steps 1-4 are lost" in capsys.readouterr().err
  assert [line["step"] for line in read_metrics(tmp_path)] == [6]


@pytest.fixture
def small_disk(tmp_path):
  """A 3 MB filesystem, which a few checkpoints of ResNet-8 fill (skips where mounting is not allowed)."""
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
    pytest.skip("mounting a small tmpfs needs root")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_during_a_save_is_one_line_naming_the_last_checkpoint_and_loses_nothing(
  small_disk, resumable_config, tmp_path
):
  resumable_config.total_steps, resumable_config.keep_checkpoints, resumable_config.num_devices = 40, 20, 1
  result = subprocess.run(
    train_py(resumable_config, small_disk / "run"), cwd=REPO, env=process_env(1), capture_output=True, text=True
  )
  assert result.returncode == 1
  (line,) = result.stderr.strip().splitlines()  # the saver's threads' tracebacks went to library.log
  assert line.startswith("Error: Cannot write checkpoints (noticed saving step ") and "No space left" in line
  last = checkpoints.steps_on_disk(small_disk / "run")[-1]
  assert f"The newest checkpoint on disk is step {last}. Free space there" in line
  shutil.copytree(small_disk / "run", tmp_path / "freed")  # space freed: the same command resumes
  again = subprocess.run(
    train_py(resumable_config, tmp_path / "freed"), cwd=REPO, env=process_env(1), capture_output=True, text=True
  )
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resuming at step {last}" in again.stdout and "Done: resnet8 after 40 steps" in again.stdout


def read_until(process, marker: str) -> tuple[str, float]:
  """The first output line of `process` that holds `marker`, and when it came."""
  for line in process.stdout:
    if marker in line:
      return line, time.perf_counter()
  pytest.fail(f"the run ended without printing {marker!r}")


def signal_at_first_progress_line(config, workdir):
  """Starts train.py, waits for its first progress line (10 steps in) and 4 steps more, and sends
  SIGINT: (process, seconds a step takes, when sent). Meanwhile the host would have queued every
  step up to the next log step, had nothing bounded it."""
  process = subprocess.Popen(
    train_py(config, workdir), cwd=REPO, env=process_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  line, _ = read_until(process, f"/{config.total_steps} (")
  step_seconds = config.batch_size / float(line.split(" img/s")[0].split("| ")[-1])
  time.sleep(4 * step_seconds)
  process.send_signal(signal.SIGINT)
  return process, step_seconds, time.perf_counter()


def test_ctrl_c_is_answered_at_once_and_stops_the_run_within_a_few_steps(tmp_path):
  config = make_tiny_config()
  config.batch_size = 256  # steps slow enough to count the stop in them; ResNet-8 compiles fast
  config.total_steps, config.log_every_steps, config.eval_every_steps = 1000, 50, 1000
  process, step_seconds, sent = signal_at_first_progress_line(config, tmp_path)
  answer, answered = read_until(process, "Signal 2 received")
  stopped, ended = read_until(process, "Stopped by signal 2 at step")
  process.wait(timeout=120)
  assert process.returncode == 128 + signal.SIGINT
  assert "the run stops after step" in answer and (answered - sent) / step_seconds < 1
  # Without a bound on how far the host dispatches ahead, the device would be some 30 steps behind.
  assert (ended - sent) / step_seconds < 6, f"{(ended - sent) / step_seconds:.1f} steps to stop"
  step = int(stopped.split("at step ")[1].split(";")[0])
  assert checkpoints.steps_on_disk(tmp_path) == [step]

  process, _, _ = signal_at_first_progress_line(config, tmp_path)  # resumed; Ctrl-C twice
  read_until(process, "Signal 2 received")  # two signals at once would merge into one
  process.send_signal(signal.SIGINT)
  out, _ = process.communicate(timeout=60)
  assert process.returncode == 128 + signal.SIGINT
  assert f"Second signal 2: exiting now, without saving; the newest checkpoint on disk is step {step}" in out
  assert "Stopped by signal" not in out and checkpoints.steps_on_disk(tmp_path) == [step]


FIXTURE = os.path.join(REPO, "tests", "fixtures", "resume")


@requires_cpu
def test_a_checkpoint_written_by_an_older_version_resumes_to_the_steps_it_would_have_taken(tmp_path):
  """tests/fixtures/resume holds step 2 of a tiny run, written by the code before the Trainer
  (tests/record_resume_fixture.py), and what that run logged at step 4: train.py resumes it
  today and logs the same step 4."""
  workdir = str(tmp_path / "run")
  shutil.copytree(FIXTURE, workdir)
  with open(os.path.join(workdir, "step4_metrics.json")) as f:
    recorded = json.load(f)
  config = make_tiny_config()
  config.checkpoint_every_steps = 2
  config.keep_checkpoints = 5
  subprocess.run(train_py(config, workdir), cwd=REPO, env=process_env(1), check=True, capture_output=True)
  assert [line["step"] for line in read_metrics(workdir)] == [4]  # resumed at step 2, not trained afresh
  resumed = read_metrics(workdir)[-1]
  for key in ("train_loss", "train_error", "test_loss", "test_error", "lr"):
    assert resumed[key] == pytest.approx(recorded[key], rel=1e-6, abs=0), key


def test_docs_runs_md_names_every_field_a_resume_must_keep():
  with open(os.path.join(REPO, "docs", "runs.md")) as f:
    row = next(line for line in f if line.startswith("| resuming with another model or data"))
  named = {name.replace(".*", ".") for name in re.findall(r"`([a-z_.*]+)`", row.split("|")[1])}
  assert named == set(checkpoints.MUST_MATCH)
