"""depthlab/figures.py and history.py (`python eval.py compare`): the paper's figure and table
drawn from runs' metrics, read from local runs or a wandb sweep; each run left out is named
with the reason."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from depthlab import figures, history, naming
from depthlab.run_files import read_metrics
from tests.conftest import REPO, contents


def write_run(workdir, depth, residual, seed=0, steps=(100, 200, 300), grad_norms=False):
  """A run's config.json and metrics.jsonl as train.py writes them, with made-up errors."""
  config = default.get_config()
  config.model.depth, config.model.residual, config.seed = depth, residual, seed
  workdir.mkdir(parents=True)
  (workdir / "config.json").write_text(json.dumps({**config.to_dict(), "num_params": 1000 * depth}))
  rng = np.random.default_rng(depth * 10 + residual * 3 + seed)
  with open(workdir / "metrics.jsonl", "w") as f:
    for step in steps:
      line = {"step": step, "train_error": float(rng.uniform(0.1, 0.9)), "train_loss": 1.0}
      if grad_norms:
        line.update({f"grad_norm/block{b}": float(rng.uniform(0.1, 1)) for b in range(1, 4)})
        line["grad_norm/stem_conv"] = 1.0
      if step % 200 == 0 or step == steps[-1]:
        line["test_error"] = float(rng.uniform(0.1, 0.9))
      f.write(json.dumps(line) + "\n")


@pytest.fixture
def sweep_dir(tmp_path):
  """plain and residual nets at depths 20 and 56, ResNet-20 with two seeds."""
  root = tmp_path / "plain_vs_residual"
  for depth in (20, 56):
    write_run(root / f"plain{depth}", depth, False, grad_norms=True)
    write_run(root / f"resnet{depth}", depth, True, grad_norms=True)
  write_run(root / "resnet20-seed1", 20, True, seed=1, grad_norms=True)
  return root


def table_rows(table):
  """The table's rows by net; `table` may go on, after a blank line, with the verdict."""
  rows = [line.strip("|").split("|") for line in table.split("\n\n")[0].splitlines()[2:]]
  return {cells[0].strip(): [c.strip() for c in cells] for cells in rows}


def test_compare_draws_fig6_as_png_and_pdf_and_writes_table6(sweep_dir, tmp_path):
  result = figures.compare([str(sweep_dir)], out=str(tmp_path / "fig" / "fig6"))
  for suffix in (".png", ".pdf", ".md", "_grad_norms.png"):
    assert os.path.getsize(tmp_path / "fig" / f"fig6{suffix}") > 1000 or suffix == ".md"
  assert result["runs"] == 5
  assert set(table_rows(result["table"])) == {"plain20", "plain56", "resnet20", "resnet56"}
  written = (tmp_path / "fig" / "fig6.md").read_text()
  assert written.startswith(result["table"]) and written.rstrip().endswith(result["verdict"])


def test_figure_has_a_train_and_a_test_line_per_net_in_plain_and_residual_panels(sweep_dir):
  fig = figures.draw_error_curves(history.load_runs([str(sweep_dir)])[0])
  plain, residual = fig.axes
  assert (plain.get_title(), residual.get_title()) == ("plain nets", "ResNets")
  assert len(plain.lines) == 4 and len(residual.lines) == 4  # 2 depths x (train dashed + test solid)
  assert [line.get_linestyle() for line in plain.lines] == ["--", "-", "--", "-"]
  assert plain.get_shared_y_axes().joined(plain, residual)


def test_nets_of_one_depth_share_a_colour_in_both_panels_and_depths_differ(sweep_dir):
  fig = figures.draw_error_curves(history.load_runs([str(sweep_dir)])[0])
  plain, residual = fig.axes
  colours = lambda ax: [line.get_color() for line in ax.lines if line.get_linestyle() == "-"]  # test error: 20, 56
  assert colours(plain) == colours(residual) and colours(plain)[0] != colours(plain)[1]


def test_the_error_axis_is_logarithmic_and_reaches_below_the_lowest_error_drawn(sweep_dir):
  runs = history.load_runs([str(sweep_dir)])[0]
  lowest = min(100 * run.curve(key)[1].min() for run in runs for key in ("train_error", "test_error"))
  ax = figures.draw_error_curves(runs).axes[0]
  assert ax.get_yscale() == "log" and ax.get_ylim()[0] < lowest and ax.get_ylim()[1] == 100


def test_training_error_logged_every_10_steps_is_drawn_as_its_100_step_mean(tmp_path):
  write_run(tmp_path / "resnet20", 20, True, steps=tuple(range(10, 401, 10)))
  (run,) = history.load_runs([str(tmp_path)])[0]
  train = next(line for line in figures.draw_error_curves([run]).axes[0].lines if line.get_linestyle() == "--")
  steps, errors = run.curve("train_error")
  assert list(train.get_xdata()) == list(steps[9:])
  np.testing.assert_allclose(train.get_ydata(), [100 * errors[i - 9 : i + 1].mean() for i in range(9, len(steps))])


def test_the_caption_gives_the_length_seeds_and_recipe_of_the_runs(sweep_dir):
  runs = history.load_runs([str(sweep_dir)])[0]
  assert figures.caption(runs) == (
    "300 steps, batch 128; seeds 0, 1; lr 0.1, x0.1 at 32,000 and 48,000, "
    f"{default.get_config().warmup_shape} warm-up from 0.01 over 400 steps"
  )
  fig = figures.draw_error_curves(runs)
  assert figures.caption(runs) in [text.get_text() for text in fig.texts]


def test_the_learning_rates_changes_are_those_of_the_runs_schedule():
  config = default.get_config()
  assert [(step, round(rate, 6)) for step, rate in figures.rate_changes(config)] == [
    (400, 0.1),
    (32_000, 0.01),
    (48_000, 0.001),
  ]
  config.warmup_steps, config.lr_boundaries = 0, (1000,)
  assert [step for step, _ in figures.rate_changes(config)] == [1000]


def test_figure_marks_where_the_learning_rate_changes_within_the_steps_drawn(tmp_path):
  for name, residual in (("plain20", False), ("resnet20", True)):
    write_run(tmp_path / name, 20, residual, steps=tuple(range(250, 2001, 250)))
  fig = figures.draw_error_curves(history.load_runs([str(tmp_path)])[0])
  for ax in fig.axes:  # the default schedule: 0.1 after the warm-up's 400 steps; its drops come after 2,000
    marks = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert [line.get_xdata()[0] for line in marks] == [400]
    assert [text.get_text().strip() for text in ax.texts] == ["lr 0.1"]
    assert ax.get_xlim()[1] < 2500


def test_table_numbers_are_those_of_metrics_jsonl(sweep_dir):
  rows = table_rows(figures.results_table(history.load_runs([str(sweep_dir)])[0]))
  lines = read_metrics(sweep_dir / "plain56")
  tests = [line["test_error"] for line in lines if "test_error" in line]
  assert rows["plain56"][1:9] == [
    "56",
    "0.06M",
    "1",
    "300",
    f"{100 * lines[-1]['train_error']:.2f}",
    f"{100 * tests[-1]:.2f}",
    f"{100 * min(tests):.2f}",
    "-",
  ]
  seeds = [100 * read_metrics(sweep_dir / name)[-1]["test_error"] for name in ("resnet20", "resnet20-seed1")]
  assert rows["resnet20"][3] == "2" and rows["resnet20"][8] == "8.75"  # two seeds; the paper's Table 6
  assert rows["resnet20"][6] == f"{np.mean(seeds):.2f} ± {np.std(seeds, ddof=1):.2f}"


def test_the_verdict_takes_each_depth_to_the_next_and_each_plain_net_to_its_residual_twin(sweep_dir):
  lines = figures.verdict(history.load_runs([str(sweep_dir)])[0]).splitlines()
  assert [line.split(":")[0] for line in lines] == [
    "- plain20 → plain56",
    "- resnet20 → resnet56",
    "- plain20 → resnet20",
    "- plain56 → resnet56",
  ]
  last = lambda name, key: 100 * [line for line in read_metrics(sweep_dir / name) if key in line][-1][key]
  a, b = last("resnet20", "test_error"), last("resnet56", "test_error")
  assert f"test error {a:.2f}% → {b:.2f}% ({b - a:+.2f} points, higher at {int(b > a)} of 1)" in lines[1]
  assert lines[1].endswith("; seed 0")  # resnet20-seed1 has no ResNet-56 beside it


def test_the_verdict_averages_over_the_seeds_both_nets_ran_and_counts_them(sweep_dir):
  """Training error at the end is its mean over the last 100 steps, as the figure draws it."""
  write_run(sweep_dir / "resnet56-seed1", 56, True, seed=1, steps=tuple(range(10, 310, 10)))
  line = figures.verdict(history.load_runs([str(sweep_dir)])[0]).splitlines()[1]
  shallow = [read_metrics(sweep_dir / name)[-1]["train_error"] for name in ("resnet20", "resnet20-seed1")]
  deep = [read_metrics(sweep_dir / "resnet56")[-1]["train_error"]]
  deep.append(np.mean([m["train_error"] for m in read_metrics(sweep_dir / "resnet56-seed1")[-10:]]))
  a, b = 100 * np.mean(shallow), 100 * np.mean(deep)
  higher = sum(d > s for s, d in zip(shallow, deep))
  assert line.startswith(f"- resnet20 → resnet56: training error {a:.2f}% → {b:.2f}% ({b - a:+.2f} points")
  assert f"higher at {higher} of 2)" in line and line.endswith("; seeds 0, 1")


def test_compare_at_equal_steps_cuts_longer_runs(sweep_dir):
  rows = table_rows(figures.compare([str(sweep_dir)], step=200)["table"])
  expected = [line for line in read_metrics(sweep_dir / "plain20") if line["step"] == 200][0]
  assert rows["plain20"][4] == "200" and rows["plain20"][6] == f"{100 * expected['test_error']:.2f}"


def test_grad_norm_figure_runs_from_the_first_block_to_the_last(sweep_dir):
  fig = figures.draw_grad_norms(history.load_runs([str(sweep_dir)])[0])
  assert [list(line.get_xdata()) for line in fig.axes[0].lines] == [[1, 2, 3], [1, 2, 3]]


def test_a_several_seed_run_compares_as_its_seeds(sweep_dir):
  """A run of num_seeds=2 counts as two runs of the net: same table row, same band, as separate seeds."""
  config = default.get_config()
  config.model.depth, config.num_seeds, config.seed = 44, 2, 5
  workdir = sweep_dir / "resnet44-seeds5-6"
  workdir.mkdir()
  (workdir / "config.json").write_text(json.dumps({**config.to_dict(), "num_params": 44_000}))
  lines = [
    {
      "step": step,
      "train_error": 0.5,
      "seed5/train_error": 0.4,
      "seed6/train_error": 0.6,
      "seed5/test_error": 0.30,
      "seed6/test_error": 0.36,
      "test_error": 0.33,
    }
    for step in (200, 300)
  ]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  runs = history.load_runs([str(sweep_dir)])[0]
  seeds = [run for run in runs if run.net == "resnet44"]
  assert [run.config.seed for run in seeds] == [5, 6] and [run.config.num_seeds for run in seeds] == [1, 1]
  assert seeds[1].curve("train_error")[1].tolist() == [0.6, 0.6]
  row = table_rows(figures.results_table(runs))["resnet44"]
  assert row[3] == "2" and row[6] == f"33.00 ± {100 * np.std([0.30, 0.36], ddof=1):.2f}"
  residual = figures.draw_error_curves(runs).axes[1]
  assert len(residual.collections) == 2  # a band for each net with two seeds: ResNet-20 and ResNet-44


def test_compare_reads_a_wandb_sweep_through_the_public_api(monkeypatch, tmp_path):
  import wandb

  class FakeRun:
    def __init__(self, depth, residual):
      self.path = ["me", "depthlab", f"run{depth}{residual}"]
      self.config = {"config.model.depth": depth, "config.model.residual": residual, "config.seed": 0}
      self.summary = {"num_params": 270_000}
      self._rows = [
        {"_step": 200, "train_error": 0.5, "_runtime": 3.0},
        {"_step": 100, "train_error": 0.7, "test_error": 0.6},
      ]

    def scan_history(self):
      return iter(self._rows)

  class FakeApi:
    def sweep(self, path):
      assert path == "me/depthlab/abc123"
      return type("Sweep", (), {"runs": [FakeRun(20, True), FakeRun(20, False)]})()

  monkeypatch.setattr(wandb, "Api", FakeApi)
  runs, skipped = history.load_runs(["me/depthlab/abc123"])
  assert [run.net for run in runs] == ["resnet20", "plain20"] and skipped == []
  assert [line["step"] for line in runs[0].lines] == [100, 200] and "_runtime" not in runs[0].lines[1]
  rows = table_rows(figures.results_table(runs))
  assert rows["resnet20"][2] == "0.27M" and rows["resnet20"][5] == "50.00" and rows["plain20"][6] == "60.00"


def test_a_wandb_run_s_config_gets_the_defaults_a_saved_one_gets():
  config = history.train_config_of(
    {"config.model.name": "lenet5", "config.model.sparse_c3": True, "config.seed": 3, "_wandb": {"runtime": 1}}
  )
  assert dict(config.model) == {"name": "lenet5", "sparse_c3": True}  # not the default net's fields
  assert config.seed == 3 and config.dataset.image_size == 0 and naming.net_name(config) == "lenet5"


def test_compare_of_a_path_that_is_neither_a_folder_nor_a_sweep_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a folder nor a wandb sweep"):
    history.load_runs([str(tmp_path / "no" / "such" / "dir" / "x")])
  with pytest.raises(FileNotFoundError, match="No runs"):
    history.load_runs([str(tmp_path)])


def test_compare_forgives_a_torn_last_metrics_line(sweep_dir, tmp_path, capsys):
  with open(sweep_dir / "plain20" / "metrics.jsonl", "a") as f:
    f.write('{"step": 400, "train_er')
  assert figures.compare([str(sweep_dir)], str(tmp_path / "fig"))["runs"] == 5
  assert "plain20/metrics.jsonl: line 4 is incomplete" in capsys.readouterr().err


# ------------------------------------------------------------------------------ runs compare leaves out


def eval_py_compare(*args: str) -> subprocess.CompletedProcess:
  """`python eval.py compare <args>`, as a user types it."""
  return subprocess.run(
    [sys.executable, "eval.py", "compare", *args], cwd=REPO, capture_output=True, text=True, timeout=300
  )


def test_compare_names_each_run_it_leaves_out_and_why_and_counts_only_those_it_compares(tmp_path):
  root = tmp_path / "runs"
  write_run(root / "resnet20", 20, True)
  write_run(root / "half", 56, True)
  (root / "half" / "metrics.jsonl").write_text('{"step": 100, "train_error": 0.8}\n')  # stopped before its first test
  write_run(root / "no_metrics", 32, True)
  (root / "no_metrics" / "metrics.jsonl").unlink()
  write_run(root / "no_config", 44, True)
  (root / "no_config" / "config.json").unlink()
  write_run(root / "cut_config", 110, True)
  config = root / "cut_config" / "config.json"
  config.write_text(config.read_text()[:200])
  write_run(root / "bad_metrics", 20, False)
  metrics = root / "bad_metrics" / "metrics.jsonl"
  metrics.write_text("not json\n" + metrics.read_text())
  before = contents(root)

  result = eval_py_compare(str(root), f"--out={tmp_path / 'fig'}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert (
    "2 runs compared (1 with no test error yet: training error only), 4 skipped (listed above); wrote " in result.stdout
  )
  assert result.stdout.startswith((tmp_path / "fig.md").read_text())  # the table and verdict as written
  change = next(line for line in result.stdout.splitlines() if line.startswith("- resnet20 → resnet56: "))
  assert "training error" in change and "test error" not in change  # ResNet-56 not evaluated yet
  skipped = sorted(line for line in result.stderr.splitlines() if line.startswith("Skipped "))
  assert len(skipped) == 4 and "Traceback" not in result.stderr
  assert skipped[0].startswith(f"Skipped {root / 'bad_metrics'}: {metrics}: line 1 is not a metrics line")
  assert skipped[1].startswith(f"Skipped {root / 'cut_config'}: {config} is damaged (")
  assert skipped[2] == f"Skipped {root / 'no_config'}: {root / 'no_config' / 'config.json'} not found: is " + (
    f"{root / 'no_config'} the workdir of a run?"
  )
  assert skipped[3] == f"Skipped {root / 'no_metrics'}: no metrics.jsonl (nothing logged yet, or it was removed)."
  # A run stopped before its first test is drawn with what it has: its training error.
  assert (
    f"Training error only: {root / 'half'}: not evaluated yet: no test error logged up to step 100 "
    "(it evaluates every 1000 steps and at its end)."
  ) in result.stderr.splitlines()
  rows = table_rows(open(tmp_path / "fig.md").read())
  assert rows.keys() == {"resnet20", "resnet56"} and "not evaluated yet" in open(tmp_path / "fig.md").read()
  assert contents(root) == before


def test_compare_with_every_run_left_out_says_so_in_one_line_and_exits_1(tmp_path):
  write_run(tmp_path / "runs" / "half", 56, True)
  before = contents(tmp_path)
  result = eval_py_compare(str(tmp_path / "runs"), "--step=50")
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
    f"Skipped {tmp_path / 'runs' / 'half'}: no metrics logged up to step 50 (--step).",
    f"Error: No run to compare in {tmp_path / 'runs'}: each run found was skipped, for the reason listed above.",
  ]
  assert contents(tmp_path) == before  # no figure, no table


# ------------------------------------------------------------------------------ the results the docs publish

FIG6_4K_RUNS = os.path.join(REPO, "results", "fig6_4k")
FIG6_4K_TABLE = os.path.join(REPO, "docs", "fig6_4k.md")


def test_docs_fig6_4k_table_and_verdict_are_what_compare_writes_from_the_shipped_runs(tmp_path):
  """`python eval.py compare results/fig6_4k --out=docs/fig6_4k`, on a fresh clone, writes the
  table and verdict that docs/ publish: they cannot drift from the data they come from."""
  figures.compare([FIG6_4K_RUNS], out=str(tmp_path / "fig6_4k"))
  with open(FIG6_4K_TABLE) as published:
    assert (tmp_path / "fig6_4k.md").read_text() == published.read()


def readme_section(heading: str) -> str:
  """README.md from `heading` to the next heading."""
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  start = text.index(heading)
  return text[start : text.index("\n#", start + len(heading))]


def test_every_number_the_readme_quotes_from_fig6_at_4000_steps_is_in_the_shipped_runs_table_or_verdict():
  """The README's verdict at 4,000 steps quotes docs/fig6_4k.md (checked above against
  results/fig6_4k); the old recipe's numbers, whose metrics did not survive, come from
  docs/fig6_residual_4k.md."""
  section = readme_section("### Fig. 6 at 4,000 steps")
  with open(FIG6_4K_TABLE) as new, open(os.path.join(REPO, "docs", "fig6_residual_4k.md")) as old:
    sources = new.read() + old.read()
  decimals = lambda text: re.findall(r"(?<![\w.])\d+\.\d+", text)  # 21.43 of "21.43%", 1.52 of "-1.52 points"
  quoted, derived = decimals(section), set(decimals(sources))
  assert len(quoted) >= 4
  assert [number for number in quoted if number not in derived] == []
