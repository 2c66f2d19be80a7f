"""sweeps/: every run of a sweep file is a command train.py accepts, built as `wandb agent`
builds it; the local runner runs a sweep, skips finished runs and resumes interrupted ones,
tells a run stopped by a signal (resumable) from a failed one, and names a sweep file it
cannot read."""

import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import pytest
from wandb.sdk.launch.sweeps import utils as wandb_sweep_utils
import yaml

from configs import default
from depthlab import cli, naming
from depthlab.run_files import read_metrics
from sweeps import run as runner
from tests.conftest import HOLD_LOCK, REPO, process_env

SWEEP_FILES = sorted(glob.glob(os.path.join(REPO, "sweeps", "*.yaml")))


def config_value(config, dotted):
  for key in dotted.split(".")[1:]:
    config = config[key]
  return config


def test_the_papers_sweeps_are_there():
  names = {os.path.basename(p) for p in SWEEP_FILES}
  assert {"plain_vs_residual.yaml", "seeds.yaml", "shortcuts.yaml"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=os.path.basename)
def test_each_run_gets_the_agents_argv_and_train_py_trains_the_intended_config(path):
  sweep = runner.load_sweep(path)
  assert sweep["program"] == "train.py" and sweep["method"] == "grid"
  for params in runner.expand(sweep):
    # The agent's own function, as it formats ${args}.
    agent = wandb_sweep_utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    assert runner.agent_args(params)["args"] == agent["args"]
    command = runner.command_line(sweep, params)
    args = runner.train_args(sweep, command)
    assert args[0].startswith("--config=configs/"), "--config must come before the overrides"
    config, workdir = cli.parse_command_line(args)
    for key, value in params.items():
      assert config_value(config, key) == (tuple(value) if isinstance(value, list) else value), key
    assert workdir == os.path.join("runs", sweep["name"], naming.run_name(config))


def test_plain_vs_residual_is_the_papers_grid():
  runs = runner.plan(runner.load_sweep(os.path.join(REPO, "sweeps", "plain_vs_residual.yaml")))
  assert sorted(run.name for run in runs) == sorted(
    f"{kind}{depth}" for kind in ("plain", "resnet") for depth in (20, 32, 44, 56, 110)
  )
  assert all(run.config.total_steps == 64_000 and run.config.lr_boundaries == (32_000, 48_000) for run in runs)


def test_reduced_fig6_is_fig6_at_20_and_56_layers():
  runs = runner.plan(runner.load_sweep(os.path.join(REPO, "sweeps", "fig6_reduced.yaml")))
  assert [run.name for run in runs] == ["plain20", "resnet20", "plain56", "resnet56"]  # as wandb's grid orders them
  assert {run.config.total_steps for run in runs} == {2_000}


@pytest.mark.parametrize("steps", [4_000, 8_000, 16_000])
def test_the_residual_half_at_longer_lengths(steps):
  runs = runner.plan(runner.load_sweep(os.path.join(REPO, "sweeps", f"fig6_residual_{steps // 1000}k.yaml")))
  assert [run.name for run in runs] == ["resnet20", "resnet56"]
  assert {run.config.total_steps for run in runs} == {steps}
  assert {run.workdir for run in runs} == {
    f"runs/fig6_residual_{steps // 1000}k/{net}" for net in ("resnet20", "resnet56")
  }


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "sweeps", "fig6_*.yaml"))), ids=os.path.basename)
def test_shortened_fig6_runs_keep_the_recipe_and_scale_the_papers_schedule(path):
  runs = runner.plan(runner.load_sweep(path))
  for run in runs:
    paper = default.get_config()
    scale = run.config.total_steps / paper.total_steps
    assert run.config.total_steps >= 2_000
    assert run.config.lr_boundaries == tuple(round(b * scale) for b in paper.lr_boundaries)
    assert run.config.warmup_steps == paper.warmup_steps  # the recipe of every other run


FIG6_4K = ("fig6_4k.yaml", "fig6_4k_resnet110.yaml", "fig6_4k_seeds.yaml")


def test_fig6_at_4k_steps_is_every_depth_of_the_paper_and_three_seeds_at_20_and_56():
  runs = [run for name in FIG6_4K for run in runner.plan(runner.load_sweep(os.path.join(REPO, "sweeps", name)))]
  nets = [f"{kind}{depth}" for depth in (20, 32, 44, 56) for kind in ("plain", "resnet")] + ["resnet110"]
  more_seeds = [f"{kind}{depth}-seed{seed}" for depth in (20, 56) for kind in ("plain", "resnet") for seed in (1, 2)]
  assert [run.name for run in runs] == nets + more_seeds  # seed 0 at every depth first, 20 layers first
  assert {run.workdir for run in runs} == {f"runs/fig6_4k/{run.name}" for run in runs}
  recipe = default.get_config()
  for run in runs:
    assert (run.config.total_steps, run.config.lr_boundaries) == (4_000, (2_000, 3_000))
    assert run.config.warmup_shape == recipe.warmup_shape == "linear"  # the default recipe, as chosen
    assert run.config.log_every_steps == 10  # the first 700 steps are the warm-up measurement's


def test_the_warm_up_runs_are_the_first_700_steps_of_fig6_at_4k_steps():
  def plan(name):
    return runner.plan(runner.load_sweep(os.path.join(REPO, "sweeps", name)))

  constant, linear = plan("warmup_constant.yaml"), plan("warmup_linear.yaml")
  linear_110 = plan("warmup_linear_110.yaml")
  resnet56 = ["resnet56"] + [f"resnet56-seed{seed}" for seed in (1, 2, 3, 4)]
  assert [run.name for run in constant] == [run.name for run in linear] == resnet56
  assert [run.name for run in linear_110] == ["resnet110", "resnet110-seed1", "plain110", "plain110-seed1"]
  assert {run.config.warmup_shape for run in constant} == {"constant"}
  assert {run.config.warmup_shape for run in linear + linear_110} == {"linear"}
  fig6 = plan("fig6_4k.yaml")[0].config
  shared = ("lr_boundaries", "learning_rate", "warmup_steps", "warmup_learning_rate", "batch_size")
  for run in constant + linear + linear_110:
    assert run.config.total_steps == 700 and run.config.log_every_steps == 10
    assert [run.config[k] for k in shared] == [fig6[k] for k in shared]
  linear_runs = linear + linear_110
  assert {run.workdir for run in linear_runs} == {f"runs/warmup_linear/{run.name}" for run in linear_runs}


@pytest.mark.parametrize("name", ["fig6_reduced", "fig6_residual_4k", "fig6_residual_8k", "fig6_residual_16k"])
def test_the_published_sweeps_keep_the_warm_up_they_were_run_with(name):
  runs = runner.plan(runner.load_sweep(os.path.join(REPO, "sweeps", f"{name}.yaml")))
  assert {run.config.warmup_shape for run in runs} == {"constant"}


def test_runs_picks_runs_of_a_sweep_by_name_and_lists_the_names_it_has(capsys):
  assert runner.main([os.path.join(REPO, "sweeps", "fig6_4k.yaml"), "--runs=resnet20, plain20", "--dry_run"]) == 0
  printed = capsys.readouterr().out.splitlines()
  assert [line.split(":")[0] for line in printed] == ["runs/fig6_4k/plain20", "runs/fig6_4k/resnet20"]
  with pytest.raises(SystemExit) as stop:
    runner.main([os.path.join(REPO, "sweeps", "fig6_4k.yaml"), "--runs=resnet21", "--dry_run"])
  assert stop.value.code != 0
  message = capsys.readouterr().err
  assert "--runs names resnet21, which the sweep does not have" in message and "plain44, resnet44" in message


def test_seeds_and_shortcuts_sweeps_give_each_run_its_own_workdir():
  seeds = runner.plan(runner.load_sweep(os.path.join(REPO, "sweeps", "seeds.yaml")))
  shortcuts = runner.plan(runner.load_sweep(os.path.join(REPO, "sweeps", "shortcuts.yaml")))
  assert len({r.workdir for r in seeds}) == 25 and "runs/seeds/resnet110-seed4" in {r.workdir for r in seeds}
  assert {r.name for r in shortcuts} == {"resnet20", "resnet56", "resnet110", "resnet20-B", "resnet56-B", "resnet110-B"}


def test_grid_varies_the_first_parameter_slowest():
  sweep = {"method": "grid", "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y"]}, "c": {"value": True}}}
  assert runner.expand(sweep) == [
    {"a": 1, "b": "x", "c": True},
    {"a": 1, "b": "y", "c": True},
    {"a": 2, "b": "x", "c": True},
    {"a": 2, "b": "y", "c": True},
  ]


def test_random_sweep_draws_count_runs_within_the_bounds_reproducibly():
  sweep = {
    "method": "random",
    "parameters": {
      "lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1.0},
      "depth": {"values": [20, 56]},
      "seed": {"min": 0, "max": 9},
    },
  }
  runs = runner.expand(sweep, count=20, seed=1)
  assert len(runs) == 20 and runs == runner.expand(sweep, count=20, seed=1)
  assert all(1e-3 <= r["lr"] <= 1.0 and r["depth"] in (20, 56) and 0 <= r["seed"] <= 9 for r in runs)
  assert isinstance(runs[0]["seed"], int) and len({r["lr"] for r in runs}) == 20


def test_bayes_and_unknown_macros_are_refused_with_the_way_out():
  with pytest.raises(ValueError, match="needs wandb's server"):
    runner.expand({"method": "bayes", "parameters": {"a": {"values": [1]}}})
  with pytest.raises(ValueError, match=r"\$\{args_json_file\}"):
    runner.command_line({"program": "train.py", "command": ["${args_json_file}"]}, {})


def test_command_macros_are_filled_as_the_agent_fills_them(monkeypatch):
  monkeypatch.setenv("MY_FLAG", "--config.seed=7")
  sweep = {
    "program": "train.py",
    "command": [
      "${env}",
      "A=1",
      "${interpreter}",
      "${program}",
      "--config=c.py",
      "${args_no_boolean_flags}",
      "${envvar:MY_FLAG}",
    ],
  }
  assert runner.command_line(sweep, {"x.on": True, "x.off": False, "x.n": 3}) == [
    "/usr/bin/env",
    "A=1",
    sys.executable,
    "train.py",
    "--config=c.py",
    "--x.on",
    "--x.n=3",
    "--config.seed=7",
  ]
  # The agent's default command when a sweep file names none.
  assert runner.command_line({"program": "p.py"}, {"k": 1}) == ["/usr/bin/env", sys.executable, "p.py", "--k=1"]


# ------------------------------------------------------------------------------ the runner


def write_tiny_sweep(tmp_path):
  """A 2-run sweep of a ResNet-8 and a plain-8 for 4 steps on TFDS mock data."""
  program = tmp_path / "mock_train.py"
  program.write_text(
    textwrap.dedent(f"""
      import sys
      sys.path.insert(0, {REPO!r})
      import tensorflow_datasets as tfds
      from absl import app
      import train
      from depthlab import cli
      cli.define_flags()
      with tfds.testing.mock_data(num_examples=64):
        app.run(train.main)
      """)
  )
  sweep = {
    "name": "tiny",
    "program": str(program),
    "method": "grid",
    "command": ["${env}", "${interpreter}", "${program}", f"--config={REPO}/configs/default.py", "${args}"],
    "parameters": {
      "config.experiment": {"value": "tiny"},
      "config.model.depth": {"value": 8},
      "config.batch_size": {"value": 16},
      "config.total_steps": {"value": 4},
      "config.log_every_steps": {"value": 2},
      "config.eval_every_steps": {"value": 4},
      "config.checkpoint_every_steps": {"value": 2},
      "config.dataset.cache_dir": {"value": ""},
      "config.dataset.download": {"value": False},
      "config.model.residual": {"values": [True, False]},
    },
  }
  path = tmp_path / "tiny.yaml"
  path.write_text(yaml.safe_dump(sweep, sort_keys=False))
  return str(path)


def test_runner_runs_a_sweep_then_skips_finished_runs_and_resumes_an_interrupted_one(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # the runs land in runs/tiny/<run name> below it
  monkeypatch.delenv("WANDB_MODE", raising=False)
  monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device per run, not the tests' eight
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)  # as the tests'
  sweep = write_tiny_sweep(tmp_path)
  assert runner.main([sweep, "--parallel", "2", "--gpus", ""]) == 0
  out = capsys.readouterr().out
  resnet, plain = (str(tmp_path / "runs" / "tiny" / name) for name in ("resnet8", "plain8"))
  assert "on cores" in out and out.count("| done |") == 2
  for workdir in (resnet, plain):
    assert [line["step"] for line in read_metrics(workdir)] == [2, 4]
    assert glob.glob(os.path.join(workdir, "wandb", "offline-run-*")), "offline wandb files to sync later"
    assert "Done: " in open(os.path.join(workdir, "train.log")).read()

  # plain8 loses its final checkpoint, as if killed after step 2; resnet8 is finished, so the
  # one run left gets every core instead of the share of one of two slots.
  shutil.rmtree(os.path.join(plain, "checkpoints", "4"))
  assert runner.main([sweep, "--parallel", "2", "--gpus", ""]) == 0
  out = capsys.readouterr().out
  assert "resnet8: finished before, skipped" in out
  assert "plain8: started;" in out and "on cores" not in out
  assert "resuming at step 2" in open(os.path.join(plain, "train.log")).read()
  assert [line["step"] for line in read_metrics(plain)] == [2, 4]
  assert "| resnet8 | finished before |" in out and "| plain8 | done |" in out

  # A --runs subset is counted on its own: plain8 is the sweep's second run but this call's first.
  assert runner.main([sweep, "--runs=plain8", "--gpus", ""]) == 0
  assert "[1/1] plain8: finished before, skipped" in capsys.readouterr().out


def test_parallel_runs_split_the_cores_or_take_the_gpus_in_turn(monkeypatch):
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
  assert [runner.slot_settings(slot, 4, [])[1] for slot in range(4)] == [{0, 1}, {2, 3}, {4, 5}, {6, 7}]
  assert runner.slot_settings(0, 1, []) == ({}, None)  # one run at a time: no pinning
  assert runner.slot_settings(2, 3, ["0", "1"]) == (
    {"CUDA_VISIBLE_DEVICES": "0", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"},  # two runs share GPU 0
    None,
  )
  assert runner.slot_settings(1, 2, ["0", "1"]) == ({"CUDA_VISIBLE_DEVICES": "1"}, None)


def test_a_bad_sweep_file_lists_every_problem_before_any_run_starts(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(REPO)
  path = tmp_path / "bad.yaml"
  path.write_text(
    textwrap.dedent("""\
      program: train.py
      methd: grid
      method: grid
      parameters:
        config: {value: configs/resnet20.py}
        config.model.depth: 20
        config.learning_rate: {values: 0.1}
        config.modle.residual: {values: [true, false]}
        config.batch_size: {value: big}
      """)
  )
  with pytest.raises(SystemExit) as exit_info:
    runner.main([str(path), "--dry_run"])
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and "Traceback" not in err
  assert "'methd': unknown key. Did you mean \"method\"?" in err
  assert "parameters.config.model.depth: 20 is a plain value; write it as {value: 20}" in err
  assert "parameters.config.learning_rate.values: must be a list" in err

  path.write_text(
    path.read_text()
    .replace("methd: grid\n", "")
    .replace("config.model.depth: 20", "config.model.depth: {value: 20}")
    .replace("{values: 0.1}", "{values: [0.1, -1]}")
  )
  with pytest.raises(SystemExit):
    runner.main([str(path), "--dry_run"])
  err = capsys.readouterr().err
  assert "--config.modle.residual: no config field 'modle'" in err and 'Did you mean "model"' in err
  assert "--config.batch_size=big" in err


def test_a_missing_sweep_file_is_one_line_naming_it(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    runner.main([str(tmp_path / "nope.yaml")])
  err = capsys.readouterr().err
  assert exit_info.value.code == 2 and f"{tmp_path / 'nope.yaml'}: cannot read it" in err and "Traceback" not in err


def test_sweep_table_forgives_a_torn_last_metrics_line(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 4, "test_error": 0.5}\n{"step": 6, "test_')
  assert runner.final_line(str(tmp_path)) == {"step": 4, "test_error": 0.5}


# ------------------------------------------------------------------------------ how runs end

FAKE_TRAIN = """
import os, signal, sys, time
seed = int(next(a.split("=")[1] for a in sys.argv if a.startswith("--config.seed=")))

def save_and_exit(signum, frame):  # as train.py does: a checkpoint, then 128 + the signal's number
  open(f"saved-seed{seed}", "w").close()
  sys.exit(128 + signum)

signal.signal(signal.SIGTERM, save_and_exit)
signal.signal(signal.SIGINT, save_and_exit)
open(f"ready-seed{seed}", "w").close()
if seed == 1:
  os.kill(os.getpid(), signal.SIGTERM)  # preempted
if seed == 2:
  sys.exit(3)  # a crash
if seed == 3:
  time.sleep(120)  # until the runner passes on its signal
"""


def write_fake_sweep(tmp_path, seeds):
  """A sweep of a program that train.py's parser accepts and that ends as config.seed says:
  0 done, 1 stopped by SIGTERM, 2 failed, 3 running until signalled."""
  (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
  sweep = {
    "program": str(tmp_path / "fake_train.py"),
    "method": "grid",
    "command": ["${env}", "${interpreter}", "${program}", f"--config={REPO}/configs/default.py", "${args}"],
    "parameters": {"config.experiment": {"value": "fake"}, "config.seed": {"values": list(seeds)}},
  }
  path = tmp_path / "fake.yaml"
  path.write_text(yaml.safe_dump(sweep, sort_keys=False))
  return str(path)


def test_a_run_stopped_by_a_signal_is_resumable_not_failed(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  sweep = write_fake_sweep(tmp_path, [0, 1, 2])
  assert runner.main([sweep, "--gpus", ""]) == cli.EXIT_FAILURE  # seed 2 failed
  out = capsys.readouterr().out
  assert "resnet56-seed1: stopped by signal 15 (resumable: run the same command again) after " in out
  assert "| resnet56-seed1 | stopped by signal 15 (resumable: run the same command again) |" in out
  assert "resnet56-seed2: failed (exit 3) after " in out
  assert "Runs: 1 done, 1 stopped, 1 failed. Run the same command again to carry on" in out
  assert (tmp_path / "saved-seed1").exists() and os.path.exists("runs/fake/resnet56-seed1/train.log")

  sweep = write_fake_sweep(tmp_path, [0, 1])
  assert runner.main([sweep, "--gpus", ""]) == 128 + signal.SIGTERM  # stopped, as train.py exits
  assert "Runs: 1 done, 1 stopped." in capsys.readouterr().out


def test_a_sweep_stopped_by_sigterm_passes_it_on_and_exits_as_train_py_does(tmp_path):
  sweep = write_fake_sweep(tmp_path, [3, 0])
  process = subprocess.Popen(
    [sys.executable, os.path.join(REPO, "sweeps", "run.py"), sweep, "--gpus", ""],
    cwd=tmp_path,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  deadline = time.time() + 120
  while not (tmp_path / "ready-seed3").exists() and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGTERM)
  out, _ = process.communicate(timeout=120)
  assert process.returncode == 128 + signal.SIGTERM, out[-3000:]
  assert "| resnet56-seed3 | stopped by signal 15 (resumable: run the same command again) |" in out
  assert "| resnet56 | not started |" in out and "Runs: 1 stopped, 1 not started." in out
  assert (tmp_path / "saved-seed3").exists() and not (tmp_path / "ready-seed0").exists()


# ------------------------------------------------------------------------------ sweep files that are not


@pytest.mark.parametrize(
  "content",
  [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"program: tr\xd0ain.py\n", b"program: train.py\x00\n"],
  ids=["binary", "not UTF-8", "a NUL byte"],
)
def test_a_sweep_file_that_is_not_text_is_one_line_naming_it(tmp_path, monkeypatch, capsys, content):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "sweep.yaml").write_bytes(content)
  with pytest.raises(SystemExit) as exit_info:
    runner.main(["sweep.yaml"])
  err = capsys.readouterr().err
  assert exit_info.value.code == cli.EXIT_CONFIG and "Traceback" not in err
  assert "  - sweep.yaml: not a text file; give a sweep YAML such as sweeps/fig6_reduced.yaml.\n" in err
  assert os.listdir(tmp_path) == ["sweep.yaml"]  # nothing started


@pytest.mark.parametrize(
  "content, holds", [("- a\n- b\n", "a list"), ("hello\n", "just 'hello'"), ("", "nothing")], ids=str
)
def test_a_sweep_file_that_is_not_a_mapping_says_what_it_holds(tmp_path, capsys, content, holds):
  (tmp_path / "sweep.yaml").write_text(content)
  with pytest.raises(SystemExit) as exit_info:
    runner.main([str(tmp_path / "sweep.yaml")])
  err = capsys.readouterr().err
  assert exit_info.value.code == cli.EXIT_CONFIG and f"The sweep file {tmp_path / 'sweep.yaml'} has 1 problem" in err
  assert f"  - it holds {holds}, not a mapping of program, method and parameters; give a sweep YAML such as " in err


def test_a_run_that_another_process_trains_is_skipped_naming_it_not_failed(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  sweep = write_fake_sweep(tmp_path, [0, 1])
  holder = subprocess.Popen(
    [sys.executable, "-c", HOLD_LOCK, "runs/fake/resnet56-seed1"],
    cwd=tmp_path,
    env=process_env(1, PYTHONPATH=REPO),
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "holding"
    assert runner.main([sweep, "--gpus", ""]) == 0
  finally:
    holder.kill()
    holder.wait()
  out = capsys.readouterr().out
  assert f"resnet56-seed1: in progress elsewhere (PID {holder.pid} on host" in out
  assert "Runs: 1 done, 1 in progress elsewhere." in out and not (tmp_path / "saved-seed1").exists()


WANDB_GRID_ORDERS = json.loads((pathlib.Path(REPO) / "tests" / "wandb_grid_orders.json").read_text())


@pytest.mark.parametrize("path", SWEEP_FILES, ids=os.path.basename)
def test_runs_start_in_the_order_of_wandbs_grid_engine(path):
  recorded = WANDB_GRID_ORDERS.get(os.path.basename(path))
  assert recorded is not None, "record its order: see tests/record_wandb_grid_orders.py"
  ours = [{name: params[name] for name in recorded[0]} for params in runner.expand(runner.load_sweep(path))]
  assert ours == recorded
