"""eval.py and depthlab/evaluation.py: a checkpoint's test error equals the one its run logged,
on any number of devices; a damaged or missing checkpoint is reported, not trusted."""

import json

import jax
import pytest

from depthlab import evaluation, loop
from depthlab.writers import read_metrics
from tests.conftest import requires_devices


@pytest.fixture
def finished_run(mock_cifar10, tiny_config, tmp_path):
  tiny_config.num_devices, tiny_config.checkpoint_every_steps = min(2, jax.device_count()), 2
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  return tmp_path


@pytest.mark.parametrize("num_devices", [1, pytest.param(4, marks=requires_devices(4))])
def test_eval_reproduces_the_logged_test_error_on_other_device_counts(finished_run, num_devices):
  results = evaluation.evaluate_checkpoint(str(finished_run), num_devices=num_devices)
  logged = read_metrics(finished_run)[-1]
  assert results["step"] == 4 and results["devices"] == num_devices and results["test_examples"] == 256
  assert results["test_error"] == logged["test_error"]
  assert results["test_loss"] == pytest.approx(logged["test_loss"], rel=1e-5)
  with open(finished_run / "eval_4.json") as f:
    assert json.load(f)["test_error"] == results["test_error"]


def test_eval_of_an_earlier_step_and_the_train_split(finished_run):
  results = evaluation.evaluate_checkpoint(str(finished_run), step=2, include_train=True, num_devices=1)
  assert results["step"] == 2 and results["train_examples"] == 256 and 0 <= results["train_error"] <= 1


def test_eval_of_a_run_saved_before_newer_config_fields_uses_their_defaults(finished_run):
  with open(finished_run / "config.json") as f:
    saved = json.load(f)
  for field in ("num_seeds", "seed_batching", "steps_per_dispatch", "conv_weight_grad"):
    del saved[field]
  (finished_run / "config.json").write_text(json.dumps(saved))
  assert evaluation.load_run_config(str(finished_run)).num_seeds == 1
  results = evaluation.evaluate_checkpoint(str(finished_run), num_devices=1)
  assert results["test_error"] == read_metrics(finished_run)[-1]["test_error"]


def test_eval_of_a_missing_step_lists_the_saved_ones(finished_run):
  with pytest.raises(FileNotFoundError, match=r"No checkpoint of step 3 .* \[2, 4\]"):
    evaluation.evaluate_checkpoint(str(finished_run), step=3)


def test_eval_of_a_directory_that_is_no_run_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="is .* the workdir of a run"):
    evaluation.evaluate_checkpoint(str(tmp_path))


@requires_devices(2)
def test_eval_of_a_several_seed_run_gives_each_seed_its_logged_error(mock_cifar10, tiny_config, tmp_path):
  tiny_config.num_seeds = 2
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  results = evaluation.evaluate_checkpoint(str(tmp_path), num_devices=2)
  logged = read_metrics(tmp_path)[-1]
  for key in ("seed0/test_error", "seed1/test_error", "test_error", "test_error_std"):
    assert results[key] == pytest.approx(logged[key], abs=1e-6)
  assert results["test_examples"] == 256


def test_eval_reports_a_corrupt_checkpoint_uses_the_one_before_and_leaves_the_run_as_it_is(finished_run, capsys):
  state_dir = finished_run / "checkpoints" / "4" / "state"
  for path in [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]:
    path.write_bytes(b"not a checkpoint")
  assert evaluation.evaluate_checkpoint(str(finished_run))["step"] == 2
  assert "Checkpoint of step 4" in capsys.readouterr().err
  assert state_dir.is_dir() and not (finished_run / "unreadable_checkpoints").exists()
