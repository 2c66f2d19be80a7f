"""benchmarks/startup.py: it times train.py from launch to its first step, a first start and a
resume per round, and stops each start with a checkpoint."""

import sys

import pytest

from benchmarks import startup
from tests.conftest import MOCK_DATA_RUN, config_flags, make_tiny_config


def test_each_round_times_a_first_start_and_a_resume_of_train_py():
  config = make_tiny_config()
  config.total_steps = 1000
  command = [sys.executable, MOCK_DATA_RUN, "train.py", "--config=configs/default.py", *config_flags(config)]
  firsts, resumes = startup.measure(command, rounds=1)
  assert len(firsts) == len(resumes) == 1 and all(0 < s < 300 for s in firsts + resumes)


def test_a_command_that_never_reports_a_step_is_an_error_showing_its_output():
  with pytest.raises(RuntimeError, match="ended without reporting a step:\n.*no-such-script.py"):
    startup.first_step_seconds([sys.executable, "no-such-script.py"])
