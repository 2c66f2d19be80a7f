"""eval.py and depthlab/evaluation.py: a checkpoint's test error equals the one its run logged,
on any number of devices; a damaged or missing checkpoint is reported, not trusted; a workdir
without a checkpoint or with a damaged config.json is one line naming it, and left as it was."""

import json
import subprocess
import sys

import jax
import pytest

from configs import default
from depthlab import cli, errors, loop, run_files, trainer
from depthlab.run_files import read_metrics
from tests.conftest import HOLD_LOCK, MOCK_DATA_RUN, REPO, contents, process_env, requires_devices


@pytest.fixture
def finished_run(mock_cifar10, tiny_config, tmp_path):
  tiny_config.num_devices, tiny_config.checkpoint_every_steps = min(2, jax.device_count()), 2
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  return tmp_path


@pytest.mark.parametrize("num_devices", [1, pytest.param(4, marks=requires_devices(4))])
def test_eval_reproduces_the_logged_test_error_on_other_device_counts(finished_run, num_devices):
  results = trainer.evaluate_checkpoint(str(finished_run), num_devices=num_devices)
  logged = read_metrics(finished_run)[-1]
  assert results["step"] == 4 and results["devices"] == num_devices and results["test_examples"] == 256
  assert results["test_error"] == logged["test_error"]
  assert results["test_loss"] == pytest.approx(logged["test_loss"], rel=1e-5)
  with open(finished_run / "eval_4.json") as f:
    assert json.load(f)["test_error"] == results["test_error"]


def test_eval_of_an_earlier_step_and_the_train_split(finished_run):
  results = trainer.evaluate_checkpoint(str(finished_run), step=2, include_train=True, num_devices=1)
  assert results["step"] == 2 and results["train_examples"] == 256 and 0 <= results["train_error"] <= 1


def test_eval_of_a_run_saved_before_newer_config_fields_uses_their_defaults(finished_run):
  with open(finished_run / "config.json") as f:
    saved = json.load(f)
  for field in ("num_seeds", "seed_batching", "steps_per_dispatch", "conv_weight_grad"):
    del saved[field]
  (finished_run / "config.json").write_text(json.dumps(saved))
  assert run_files.load_run_config(str(finished_run)).num_seeds == 1
  results = trainer.evaluate_checkpoint(str(finished_run), num_devices=1)
  assert results["test_error"] == read_metrics(finished_run)[-1]["test_error"]


def test_eval_of_a_missing_step_lists_the_saved_ones(finished_run):
  with pytest.raises(FileNotFoundError, match=r"No checkpoint of step 3 .* \[2, 4\]"):
    trainer.evaluate_checkpoint(str(finished_run), step=3)


def test_eval_of_a_directory_that_is_no_run_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="is .* the workdir of a run"):
    trainer.evaluate_checkpoint(str(tmp_path))


@requires_devices(2)
def test_eval_of_a_several_seed_run_gives_each_seed_its_logged_error(mock_cifar10, tiny_config, tmp_path):
  tiny_config.num_seeds = 2
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  results = trainer.evaluate_checkpoint(str(tmp_path), num_devices=2)
  logged = read_metrics(tmp_path)[-1]
  for key in ("seed0/test_error", "seed1/test_error", "test_error", "test_error_std"):
    assert results[key] == pytest.approx(logged[key], abs=1e-6)
  assert results["test_examples"] == 256


def test_eval_reports_a_corrupt_checkpoint_uses_the_one_before_and_leaves_the_run_as_it_is(finished_run, capsys):
  state_dir = finished_run / "checkpoints" / "4" / "state"
  for path in [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]:
    path.write_bytes(b"not a checkpoint")
  assert trainer.evaluate_checkpoint(str(finished_run))["step"] == 2
  assert "Checkpoint of step 4" in capsys.readouterr().err
  assert state_dir.is_dir() and not (finished_run / "unreadable_checkpoints").exists()


# ------------------------------------------------------------------------------ eval.py as a user types it


def eval_py(*args: str, mock_data: bool = False) -> subprocess.CompletedProcess:
  """`python eval.py <args>` (on TFDS's mock CIFAR-10 with `mock_data`)."""
  command = [MOCK_DATA_RUN] if mock_data else []
  return subprocess.run(
    [sys.executable, *command, "eval.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )


def saved_run(workdir, config_json: bytes):
  """A workdir with this config.json and a metrics line, as a run leaves them."""
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_bytes(config_json)
  (workdir / "metrics.jsonl").write_text('{"step": 2, "train_error": 0.5}\n')
  return workdir


CONFIG_JSON = json.dumps(default.get_config().to_dict(), indent=2).encode()


@pytest.mark.parametrize(
  "damaged, why",
  [
    (CONFIG_JSON[: len(CONFIG_JSON) // 2], r"line \d+ column \d+"),  # cut off mid-file
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xd0", "can't decode byte"),  # not text at all
    (b"[1, 2]", "a JSON list, not an object"),
  ],
  ids=["cut off", "binary", "a list"],
)
def test_a_damaged_config_json_is_a_run_file_error_naming_it(tmp_path, damaged, why):
  saved_run(tmp_path / "run", damaged)
  with pytest.raises(errors.RunFileError, match=rf"{tmp_path / 'run' / 'config.json'} is damaged \(.*{why}"):
    run_files.load_run_config(str(tmp_path / "run"))


def test_eval_py_of_a_damaged_config_json_is_one_line_naming_it_and_changes_nothing(tmp_path):
  workdir = saved_run(tmp_path / "run", CONFIG_JSON[:100])
  before = contents(workdir)
  result = eval_py(f"--workdir={workdir}")
  assert result.returncode == cli.EXIT_FAILURE, result.stderr[-2000:]
  [line] = result.stderr.strip().splitlines()  # one line, no traceback
  assert line.startswith(f"Error: {workdir / 'config.json'} is damaged (") and line.endswith(
    "): put back a good copy of the run's config (train.py writes it again when it resumes an unfinished run)."
  )
  assert contents(workdir) == before


def test_eval_py_of_a_workdir_without_checkpoints_says_so_and_creates_nothing(tmp_path):
  workdir = saved_run(tmp_path / "run", CONFIG_JSON)
  before = contents(workdir)
  result = eval_py(f"--workdir={workdir}")
  assert result.returncode == cli.EXIT_FAILURE, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
    f"Error: {workdir} holds no checkpoint (nothing in {workdir / 'checkpoints'}): train it first, "
    "or give the workdir of a run that has saved one."
  ]
  assert contents(workdir) == before and sorted(p.name for p in workdir.iterdir()) == ["config.json", "metrics.jsonl"]


def test_eval_py_names_an_unreadable_checkpoint_in_one_line_and_moves_nothing(finished_run):
  for step in (4, 2):
    for path in (finished_run / "checkpoints" / str(step) / "state").rglob("*"):
      if path.is_file() and path.parent.name == "d":
        path.write_bytes(b"not a checkpoint")
  before = contents(finished_run)
  with pytest.raises(errors.CorruptCheckpointError, match="No checkpoint in .* reads back intact") as newest:
    trainer.evaluate_checkpoint(str(finished_run), num_devices=1)
  with pytest.raises(errors.CorruptCheckpointError) as step_4:
    trainer.evaluate_checkpoint(str(finished_run), step=4, num_devices=1)
  assert "\n" not in str(newest.value) + str(step_4.value)

  result = eval_py(f"--workdir={finished_run}", "--step=4", "--num_devices=1", mock_data=True)
  assert result.returncode == cli.EXIT_FAILURE, result.stderr[-2000:]
  # tensorstore's reads still in flight print "Event loop is closed" tracebacks from their
  # threads: those go to the run's library.log, the console keeps to the one line.
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(f"Error: Checkpoint of step 4 in {finished_run / 'checkpoints'} is unreadable or ")
  after = contents(finished_run)
  after.pop("library.log", None)
  assert after == before  # nothing set aside, no eval_4.json


def test_eval_py_on_a_workdir_a_run_is_training_in_says_so_and_evaluates(finished_run, tmp_path):
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD_LOCK, str(finished_run)],
    cwd=REPO,
    env=process_env(1),
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "holding"
    result = eval_py(f"--workdir={finished_run}", "--num_devices=1", mock_data=True)
  finally:
    holder.kill()
    holder.wait()
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"A run is training in {finished_run} (PID {holder.pid} on host" in result.stdout
  assert f"{finished_run} at step 4 on 1 device(s):" in result.stdout


def test_eval_py_without_the_data_is_one_message_saying_what_to_set(finished_run, tmp_path):
  (tmp_path / "empty").mkdir()
  result = eval_py(f"--workdir={finished_run}", f"--data_dir={tmp_path / 'empty'}", "--num_devices=1")
  assert result.returncode == cli.EXIT_CONFIG, result.stderr[-2000:]
  assert result.stderr.startswith(f"Error: Dataset 'cifar10' is not prepared in {tmp_path / 'empty'}")
  assert "Traceback" not in result.stderr and "TFDS_DATA_DIR" in result.stderr


def test_eval_py_on_more_devices_than_there_are_is_one_message_naming_the_count(finished_run):
  result = eval_py(f"--workdir={finished_run}", "--num_devices=99")
  assert result.returncode == cli.EXIT_CONFIG, result.stderr[-2000:]
  assert "--num_devices=99: only 8 devices here; 0 uses all." in result.stderr
  assert "Traceback" not in result.stderr
