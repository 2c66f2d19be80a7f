"""eval.py: a checkpoint's test error equals the one its run logged, on any number of devices."""

import json

import pytest

import eval as eval_lib
import train
from writers import read_metrics


@pytest.fixture
def finished_run(mock_cifar10, tiny_config, tmp_path):
  tiny_config.num_devices, tiny_config.checkpoint_every_steps = 2, 2
  train.train_and_evaluate(tiny_config, str(tmp_path))
  return tmp_path


@pytest.mark.parametrize("num_devices", [1, 4])
def test_eval_reproduces_the_logged_test_error_on_other_device_counts(finished_run, num_devices):
  results = eval_lib.evaluate_checkpoint(str(finished_run), num_devices=num_devices)
  logged = read_metrics(finished_run)[-1]
  assert results["step"] == 4 and results["devices"] == num_devices and results["test_examples"] == 256
  assert results["test_error"] == logged["test_error"]
  assert results["test_loss"] == pytest.approx(logged["test_loss"], rel=1e-5)
  with open(finished_run / "eval_4.json") as f:
    assert json.load(f)["test_error"] == results["test_error"]


def test_eval_of_an_earlier_step_and_the_train_split(finished_run):
  results = eval_lib.evaluate_checkpoint(str(finished_run), step=2, include_train=True, num_devices=1)
  assert results["step"] == 2 and results["train_examples"] == 256 and 0 <= results["train_error"] <= 1


def test_eval_of_a_missing_step_lists_the_saved_ones(finished_run):
  with pytest.raises(FileNotFoundError, match=r"No checkpoint of step 3 .* \[2, 4\]"):
    eval_lib.evaluate_checkpoint(str(finished_run), step=3)


def test_eval_of_a_directory_that_is_no_run_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="is .* the workdir of a run"):
    eval_lib.evaluate_checkpoint(str(tmp_path))
