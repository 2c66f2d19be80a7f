"""depthlab/state.py: the recipe's learning-rate schedule, as configs/ set it."""

import pytest

from configs import default
from depthlab import state as state_lib
from tests.conftest import parse_flags


def test_learning_rate_is_divided_by_10_at_32k_and_48k():
  schedule = state_lib.learning_rate_schedule(default.get_config())
  expected = {400: 0.1, 31_999: 0.1, 32_000: 0.01, 47_999: 0.01, 48_000: 0.001, 64_000: 0.001}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr), step


@pytest.mark.parametrize("config_file", ["resnet20", "plain56", "resnet56", "resnet110", "plain110"])
def test_every_depth_plain_or_residual_warms_up_from_0_01_to_0_1_over_400_steps(config_file):
  schedule = state_lib.learning_rate_schedule(parse_flags(f"--config=configs/{config_file}.py"))
  expected = {0: 0.01, 200: 0.055, 399: 0.01 + 0.09 * 399 / 400, 400: 0.1, 31_999: 0.1, 32_000: 0.01, 48_000: 0.001}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr), step


def test_the_papers_exact_recipe_is_one_override_away():
  schedule = state_lib.learning_rate_schedule(parse_flags("--config=configs/resnet56.py", "--config.warmup_steps=0"))
  expected = {0: 0.1, 31_999: 0.1, 32_000: 0.01, 48_000: 0.001}
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr), step


def test_the_default_warm_up_rises_to_the_rate_without_a_step_and_the_constant_one_is_an_override_away():
  rates = lambda config: [float(state_lib.learning_rate_schedule(config)(step)) for step in range(0, 1_000)]
  largest_rise = lambda rates: max(b / a for a, b in zip(rates, rates[1:]))
  assert largest_rise(rates(parse_flags("--config=configs/resnet56.py"))) < 1.03  # no step multiplies the rate
  constant = rates(parse_flags("--config=configs/resnet56.py", "--config.warmup_shape=constant"))
  assert constant[0] == constant[399] == pytest.approx(0.01) and constant[400] == pytest.approx(0.1)
  assert largest_rise(constant) == pytest.approx(10)  # the step at 400 that the linear warm-up removes
