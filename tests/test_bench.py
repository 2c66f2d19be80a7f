"""benchmarks/bench.py: it times train.py's own step and writes what it promises; the PyTorch twin is our net.

The PyTorch tests are skipped where PyTorch is not installed (it is optional:
benchmarks/requirements-torch.txt).
"""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from benchmarks import bench
from tests.conftest import PAPER_COUNTS, cifar_resnet_params

requires_torch = pytest.mark.skipif(
  importlib.util.find_spec("torch") is None,
  reason="PyTorch is optional: pip install -r benchmarks/requirements-torch.txt",
)

# ResNet-8 on a tiny random set: two timed windows of two steps.
TINY = [
  "--config=configs/resnet20.py",
  "--config.model.depth=8",
  "--config.batch_size=16",
  "--config.num_devices=1",
  "--windows=2",
  "--steps_per_window=2",
  "--num_examples=64",
]


def run_tiny(tmp_path, *extra):
  """Runs `benchmarks/bench.py TINY extra --out=...` in this process; returns the JSON it wrote and the table."""
  config, options, out = bench.parse_command_line([*TINY, *extra, f"--out={tmp_path / 'bench.json'}"])
  result = bench.run_benchmark(config, options)
  bench.write_json(result, out)
  with open(out) as f:
    return json.load(f), bench.format_table(result)


def assert_positive_windows(side, windows):
  assert len(side["windows"]) == windows
  assert all(w["images_per_sec"] > 0 and w["ms_per_step"] > 0 for w in side["windows"])
  assert side["images_per_sec"] > 0 and side["ms_per_step"] > 0


# -------------------------------------------------------------------------------- the command


def test_flags_give_the_options():
  config, options, out = bench.parse_command_line(
    [*TINY, "--config.dtype=bfloat16", "--config.steps_per_dispatch=2", "--torch=all", "--out=b.json"]
  )
  assert (config.model.depth, config.batch_size, config.dtype, config.steps_per_dispatch) == (8, 16, "bfloat16", 2)
  assert (options.windows, options.steps_per_window) == (2, 2)
  assert options.torch_variants == tuple(bench.TORCH_VARIANTS) and out == "b.json"
  assert bench.parse_command_line([*TINY, "--torch=none"])[1].torch_variants == ()
  assert bench.parse_command_line([*TINY, "--torch=fp32,bf16"])[1].torch_variants == ("fp32", "bf16")


def test_warm_up_runs_on_untimed_until_the_seconds_asked_have_passed():
  class Clock:  # a side whose dispatches take 0.5 s each
    runs = 0

    def run(self, steps):
      self.runs += 1
      return 0.5

  side = Clock()
  assert bench.warm_up(side, 1) == 0.5 and side.runs == 2
  assert bench.warm_up(side, 1, seconds=2.0) == 0.5 and side.runs == 2 + 5  # 0.5 s x 4 after the compiling one
  assert bench.parse_command_line([*TINY, "--warmup_seconds=3"])[1].warmup_seconds == 3.0


def test_bad_options_are_errors_that_say_what_to_change():
  config, _, _ = bench.parse_command_line([*TINY, "--config.steps_per_dispatch=3"])
  with pytest.raises(ValueError, match="not a multiple of --config.steps_per_dispatch=3"):
    bench.JaxStep(config, bench.Options(steps_per_window=4, num_examples=64))
  with pytest.raises(ValueError, match="Unknown --torch variant"):
    bench.Options(torch_variants=("fp16",))


def test_asking_for_pytorch_without_it_says_how_to_install_it(monkeypatch):
  config, options, _ = bench.parse_command_line([*TINY, "--torch=fp32"])
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ImportError, match="requirements-torch.txt"):
    bench.run_benchmark(config, options)


def test_bench_writes_json_with_the_expected_keys_and_positive_figures(tmp_path):
  result, table = run_tiny(tmp_path)
  ours = result["depthlab"]
  assert_positive_windows(ours, windows=2)
  assert ours["first_dispatch_s"] > 0 and ours["compile_s"] >= 0 and ours["peak_host_bytes"] > 0
  assert "peak_device_bytes" in ours and np.isfinite(ours["train_loss"])
  assert result["startup_s"] > 0 and result["import_s"] > 0 and result["process_peak_host_bytes"] > 0
  assert result["projected_total_s"] == pytest.approx(64_000 * ours["ms_per_step"] / 1000)
  assert result["device"]["platform"] == jax.default_backend() and result["device"]["count"] == 1
  assert (result["net"], result["batch_size"], result["dtype"], result["data"]) == ("resnet8", 16, "float32", "random")
  assert result["num_params"] == 75_290 and result["torch"] == {}
  assert "depthlab images/s" in table and "projected 64,000 steps" in table


def test_several_seeds_count_every_seeds_images(tmp_path):
  config, options, _ = bench.parse_command_line([*TINY, "--config.num_seeds=2", "--config.steps_per_dispatch=2"])
  result = bench.run_benchmark(config, options)
  ours = result["depthlab"]
  assert (result["num_seeds"], result["steps_per_dispatch"], result["num_params"]) == (2, 2, 75_290)
  for window in ours["windows"]:  # a step trains 2 seeds x 16 images
    assert window["images_per_sec"] * window["ms_per_step"] / 1000 == pytest.approx(32)
  assert np.isfinite(ours["train_loss"])


# ------------------------------------------------------------------------------ PyTorch twin


@requires_torch
@pytest.mark.parametrize("depth,residual,shortcut", [(20, True, "A"), (20, False, "A"), (32, True, "B")])
def test_torch_net_has_exactly_our_parameter_count(depth, residual, shortcut):
  from benchmarks import torch_resnet

  ours = cifar_resnet_params(depth=depth, residual=residual, shortcut=shortcut)
  assert torch_resnet.count_params(torch_resnet.CifarResNet(depth, residual, shortcut)) == ours
  if residual and shortcut == "A":
    assert ours == PAPER_COUNTS[depth]  # 269,722 at depth 20


@requires_torch
@pytest.mark.parametrize("autocast_bf16", [False, True])
def test_one_torch_step_trains(autocast_bf16):
  import torch

  from benchmarks import torch_resnet

  torch.manual_seed(0)
  model = torch_resnet.CifarResNet(depth=8)
  optimizer = torch_resnet.create_optimizer(model, learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
  step = torch_resnet.make_train_step(model, optimizer, torch.bfloat16 if autocast_bf16 else None)
  before = [p.detach().clone() for p in model.parameters()]
  images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
  assert model(images).shape == (8, 10)
  loss = step(images, labels)
  assert torch.isfinite(loss) and all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
  assert optimizer.param_groups[0]["nesterov"] is False


@requires_torch
def test_bench_times_pytorch_alternately_and_reports_the_ratio_per_window(tmp_path):
  result, table = run_tiny(tmp_path, "--torch=fp32,channels_last")
  assert set(result["torch"]) == {"fp32", "channels_last"} and "torch" in result["versions"]
  for variant, theirs in result["torch"].items():
    assert_positive_windows(theirs, windows=2)
    assert theirs["num_params"] == result["num_params"] and theirs["device"] == "cpu"
    expected = [t["ms_per_step"] / o["ms_per_step"] for o, t in zip(result["depthlab"]["windows"], theirs["windows"])]
    np.testing.assert_allclose(theirs["ours_over_torch"], expected, rtol=1e-9)
    assert f"ours / torch {variant}" in table


@requires_torch
def test_pytorch_runs_in_a_process_of_its_own_that_times_steps_and_exits_when_closed():
  config, _, _ = bench.parse_command_line(TINY)
  baseline = bench.TorchStep("fp32", config, num_classes=10)
  assert baseline.num_params == 75_290 and baseline.device == "cpu"
  assert baseline.run(2) > 0 and np.isfinite(baseline.loss)
  assert baseline.process.pid != os.getpid() and baseline.process.poll() is None
  baseline.close()
  assert baseline.process.returncode == 0


def test_summary_table_has_a_row_per_run_naming_its_seeds(tmp_path):
  from benchmarks import bench_table

  result, _ = run_tiny(tmp_path)
  rows = [line.split("|") for line in bench_table.markdown_table([result, dict(result, num_seeds=4)]).splitlines()]
  assert [cell.strip() for cell in rows[0][1:5]] == ["net", "dtype", "steps/dispatch", "seeds"]
  assert [row[4].strip() for row in rows[2:]] == ["1", "4 (auto)"]
  assert all(row[1].strip() == "resnet8" for row in rows[2:])


@requires_torch
def test_a_pytorch_process_that_fails_is_reported_not_waited_for():
  config, _, _ = bench.parse_command_line([*TINY, "--config.model.depth=9"])  # not 6n+2: it raises there
  with pytest.raises(RuntimeError, match="PyTorch process exited with status 1"):
    bench.TorchStep("fp32", config, num_classes=10)
