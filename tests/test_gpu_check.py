"""benchmarks/gpu_check: the plan fits its budget most important first, stages stop at their limit, and the ratios."""

import os
import re
import subprocess
import sys

import pytest

from benchmarks import bench_table, gpu_check
from tests.conftest import REPO


def test_the_dry_run_plans_every_stage_in_order_within_7_minutes(tmp_path):
  done = subprocess.run(
    ["bash", "benchmarks/gpu_check.sh", "--dry-run", f"--out={tmp_path}"],
    cwd=REPO,
    env={**os.environ, "PYTHON": sys.executable},
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 0, done.stderr
  planned, budget = map(float, re.search(r"planned total: (\d+) s of (\d+) s budget", done.stdout).groups())
  assert budget == 7 * 60 and 0.8 * budget < planned <= budget
  starts = re.findall(r"^ +(\d+) s  (\S+(?: \S+)?) ", done.stdout, re.M)
  names = [name for _, name in starts]
  assert names[:4] == ["env", "wheels", "imports", "tests"] and names[-1] == "summary"
  assert names[4] == "bench resnet56-float32-x1-torch"  # the ratio against PyTorch first
  assert {
    "bench resnet56-float32-x10-seeds4-vmap",
    "bench resnet20-float32-x10",
    "bench resnet110-float32-x10",
    "bench resnet56-bfloat16-x10",
  } <= set(names)
  assert [float(s) for s, _ in starts] == sorted(float(s) for s, _ in starts)
  assert not os.listdir(tmp_path)  # a dry run writes nothing


@pytest.mark.parametrize("budget_s", [420, 200, 100])
def test_the_plan_keeps_the_bench_runs_order_and_drops_what_does_not_fit(budget_s):
  steps, dropped = gpu_check.plan(budget_s, "/out", "/wheels")
  assert sum(estimate for _, _, estimate in steps) <= budget_s
  planned = [name.removeprefix("bench ") for name, _, _ in steps if name.startswith("bench ")]
  names = [run.name for run in gpu_check.BENCH_RUNS]
  assert sorted(planned + dropped, key=names.index) == names
  assert planned == sorted(planned, key=names.index)
  if budget_s == 100:
    assert not planned  # the fixed stages alone (85 s) nearly fill it


def test_a_stage_is_stopped_at_its_limit_and_its_end_logged(tmp_path):
  stage = gpu_check.Stage("slow", 1, 1, ["bash", "-c", "echo started; sleep 30"], "slow.log")
  gpu_check.run_stage(stage, str(tmp_path), seconds_left=100)
  assert (tmp_path / "slow.log").read_text() == "started\n"
  assert "slow: stopped at its limit of 1 s" in (tmp_path / "check.log").read_text()


def bench_result(net, ms_per_step, dtype="float32", dispatch=1, seeds=1, batching="auto", torch_ratio=None):
  """What benchmarks/bench.py writes, as far as the summary reads it."""
  torch = {} if torch_ratio is None else {"fp32": {"images_per_sec": 1.0, "ours_over_torch_median": torch_ratio}}
  return {
    "net": net,
    "num_params": 1,
    "batch_size": 128,
    "dtype": dtype,
    "steps_per_dispatch": dispatch,
    "num_seeds": seeds,
    "seed_batching": batching,
    "total_steps": 64_000,
    "projected_total_s": 64_000 * ms_per_step / 1000,
    "torch": torch,
    "depthlab": {
      "images_per_sec": 128 * seeds / ms_per_step * 1000,
      "ms_per_step": ms_per_step,
      "compile_s": 10.0,
      "peak_device_bytes": None,
    },
  }


def test_the_summary_gives_the_projection_the_ratio_to_pytorch_and_several_seeds_against_one():
  lines = bench_table.key_ratios(
    [
      bench_result("resnet56", 6.0, torch_ratio=1.25),
      bench_result("resnet56", 4.0, dispatch=10),
      bench_result("resnet56", 10.0, dispatch=10, seeds=4, batching="vmap"),
      bench_result("resnet20", 2.0),
    ]
  )
  assert lines[0].startswith("resnet56, 64,000 steps projected: 4m16s at the fastest (float32, 10 steps/dispatch")
  assert lines[1] == "resnet56 float32 x1: ours / PyTorch fp32 = 1.25 (images/s; above 1: ours faster)"
  assert lines[2] == (
    "resnet56 float32 x10: 4 seeds (vmap) take 2.50x one seed's step: 1.60x the throughput of 4 one-seed runs"
  )


def test_every_test_the_gpu_check_runs_exists():
  for test in gpu_check.TESTS:
    path, name = test.split("::")
    with open(os.path.join(REPO, path)) as f:
      assert f"def {name}(" in f.read(), test
