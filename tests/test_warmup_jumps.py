"""benchmarks/warmup_jumps.py: the warm-up criterion read off runs' metrics (a jump of more than
5 points in the 50-step mean training error after step 100, or a run at chance, fails it)."""

import json
import pathlib

import pytest

from benchmarks import warmup_jumps
from configs import default
from depthlab import history
from tests.conftest import REPO


def write_run(folder, shape, seed, error_at, total_steps=700, depth=56):
  """A workdir as a run of sweeps/warmup_<shape>.yaml leaves it, its training error error_at(step)."""
  config = default.get_config()
  config.warmup_shape, config.seed, config.total_steps, config.model.depth = shape, seed, total_steps, depth
  folder.mkdir(parents=True)
  (folder / "config.json").write_text(json.dumps(config.to_dict(), default=list))
  lines = []
  for step in range(10, total_steps + 1, 10):
    error = error_at(step)
    lines.append({"step": step, "train_error": error, "train_loss": 2.3 * error / 0.9, "lr": 0.1})
  lines[-1].update(test_error=error, test_loss=1.0)
  (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
  return folder


def smooth(step):
  return 0.9 - 0.5 * step / 700


def jump_after_400(step):
  return smooth(step) + (0.2 if 400 < step <= 500 else 0.0)


def test_a_jump_after_the_warm_up_fails_and_a_smooth_descent_meets_the_criterion(tmp_path):
  write_run(tmp_path / "constant" / "resnet56", "constant", 0, jump_after_400)
  write_run(tmp_path / "linear" / "resnet56", "linear", 0, smooth)
  runs, _ = history.load_runs([str(tmp_path)])
  verdicts = {v.shape: v for v in map(warmup_jumps.judge, runs)}
  jumped, smooth_run = verdicts["constant"], verdicts["linear"]
  assert jumped.largest_rise == pytest.approx(0.2 - 0.5 * 50 / 700, abs=0.01) and 440 <= jumped.rise_at <= 460
  assert not jumped.meets and smooth_run.meets and smooth_run.largest_rise == 0.0


def test_a_run_at_chance_fails_the_criterion_without_a_jump(tmp_path):
  write_run(tmp_path / "run", "linear", 0, lambda step: 0.9)
  (verdict,) = [warmup_jumps.judge(run) for run in history.load_runs([str(tmp_path)])[0]]
  assert verdict.at_chance and verdict.largest_rise == 0.0 and not verdict.meets


def test_a_longer_run_is_judged_on_the_end_of_its_warm_up_and_the_300_steps_after_it(tmp_path):
  """A run of the 4,000-step Fig. 6 logs as the measurement runs do: its first 700 steps are
  judged, and what the rate's drops do later is not the warm-up's."""
  write_run(tmp_path / "run", "linear", 0, lambda step: smooth(min(step, 700)) + (0.3 if step > 2000 else 0.0), 4000)
  (verdict,) = [warmup_jumps.judge(run) for run in history.load_runs([str(tmp_path)])[0]]
  assert verdict.meets and verdict.largest_rise == 0.0
  assert verdict.last_error == pytest.approx(smooth(700) + 0.5 * 20 / 700, abs=1e-6)  # steps 660-700


def test_the_command_prints_a_row_per_run_and_the_verdict_per_shape(tmp_path, capsys):
  for seed in (0, 1):
    write_run(tmp_path / "constant" / f"s{seed}", "constant", seed, jump_after_400)
    write_run(tmp_path / "linear" / f"s{seed}", "linear", seed, smooth)
  assert warmup_jumps.main([str(tmp_path / "constant"), str(tmp_path / "linear"), f"--plot={tmp_path / 'w.png'}"]) == 0
  out = capsys.readouterr().out
  assert out.count("| constant | resnet56 |") == 2 and out.count("| linear | resnet56 |") == 2
  assert "constant: 0 of 2 runs meet the criterion" in out and "linear: 2 of 2 runs meet the criterion" in out
  assert (tmp_path / "w.png").stat().st_size > 10_000


def test_the_figure_has_a_panel_per_net_each_with_a_legend_entry_per_shape_it_holds(tmp_path):
  """ResNet-56 at seeds 0-1 under both shapes beside a net measured only at seed 1 (as plain-56
  is in the Fig. 6 grid): each panel names the shapes it draws."""
  for seed in (0, 1):
    write_run(tmp_path / f"r56-constant-{seed}", "constant", seed, jump_after_400)
    write_run(tmp_path / f"r56-linear-{seed}", "linear", seed, smooth)
  write_run(tmp_path / "r20-1", "linear", 1, smooth, depth=20)
  runs = warmup_jumps.measured_runs([str(tmp_path)])
  fig = warmup_jumps.draw(runs, [warmup_jumps.judge(run) for run in runs])
  labels = [[text.get_text() for text in ax.get_legend().get_texts()] for ax in fig.axes]
  assert labels == [
    ["linear warm-up", "end of the warm-up (400)"],
    ["constant warm-up", "linear warm-up", "end of the warm-up (400)"],
  ]


def test_a_run_that_has_not_reached_the_end_of_the_measured_steps_is_skipped_and_says_so(tmp_path, capsys):
  """A Fig. 6 run still training is not judged on the part of the window it has logged."""
  write_run(tmp_path / "done", "linear", 0, smooth)
  write_run(tmp_path / "early", "linear", 1, smooth, total_steps=100)
  assert warmup_jumps.main([str(tmp_path)]) == 0
  out, err = capsys.readouterr()
  assert out.count("| linear | resnet56 |") == 1 and "linear: 1 of 1 runs meet the criterion" in out
  assert f"Skipped {tmp_path / 'early'}: logged up to step 100; the criterion looks at steps up to 700" in err


def test_a_folder_without_runs_to_judge_is_one_message_and_exit_status_1_not_a_traceback(tmp_path, capsys):
  (tmp_path / "empty").mkdir()
  write_run(tmp_path / "early" / "run", "linear", 0, smooth, total_steps=100)
  for folder in (tmp_path / "missing", tmp_path / "empty", tmp_path / "early"):
    with pytest.raises(SystemExit) as exit_info:
      warmup_jumps.main([str(folder)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("Error: ") and "Traceback" not in err and str(folder) in err


# ------------------------------------------------------------------------------ the measurement the docs publish

RESULTS = pathlib.Path(REPO) / "results"


def printed_rows(folders, capsys) -> list[str]:
  """The table rows `python -m benchmarks.warmup_jumps <folders>` prints."""
  assert warmup_jumps.main([str(folder) for folder in folders]) == 0
  return [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]


def one_line(path: pathlib.Path) -> str:
  return " ".join(path.read_text().split())


@pytest.mark.parametrize("folders", [["warmup_constant", "warmup_linear"], ["fig6_4k"]])
def test_every_row_the_command_prints_from_the_shipped_runs_is_in_docs_recipe(folders, capsys):
  """docs/recipe.md's warm-up tables are what its commands print from results/ on a fresh clone,
  row for row: a run landed without its row, or a row edited by hand, fails here."""
  recipe = pathlib.Path(REPO, "docs", "recipe.md").read_text()
  rows = printed_rows([RESULTS / folder for folder in folders], capsys)
  assert len(rows) > 1 and [row for row in rows[1:] if row not in recipe] == []


def test_the_readme_and_docs_recipe_quote_resnet56s_ranges_under_each_shape_from_the_shipped_runs():
  """'meets it at 5 of 5 seeds (largest rise 0.5-1.7 points, training error 38.6-44.3% at step
  700)': each count and range the README and docs/recipe.md give is derived here from results/."""
  runs, _ = history.load_runs([str(RESULTS / "warmup_constant"), str(RESULTS / "warmup_linear")])
  verdicts = [warmup_jumps.judge(run) for run in runs if run.net == "resnet56"]
  readme, recipe = one_line(pathlib.Path(REPO, "README.md")), one_line(pathlib.Path(REPO, "docs", "recipe.md"))
  for shape, verb in (("linear", "meets"), ("constant", "fails")):
    of_shape = [v for v in verdicts if v.shape == shape]
    rises = [f"{100 * rise:.1f}" for rise in sorted(v.largest_rise for v in of_shape)]
    errors = [f"{100 * error:.1f}" for error in sorted(v.last_error for v in of_shape)]
    counted = sum(v.meets == (verb == "meets") for v in of_shape)
    assert f"{verb} it at {counted} of {len(of_shape)} seeds" in readme
    assert f"{rises[0]}-{rises[-1]} points" in readme and f"{errors[0]}-{errors[-1]}%" in readme
    assert f"{errors[0]}-{errors[-1]}%" in recipe
