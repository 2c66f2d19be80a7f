"""Compares runs as He et al. 2015 do: Fig. 6 (training error thin dashed, test error bold,
against steps, one colour per depth shared by both panels, plain and residual nets in
side-by-side panels with a shared logarithmic error axis, so that a gap of a point or two at the
end is as visible as the first steps; a dotted line where the learning rate changes; a line
under the panels that gives the length, seeds and recipe; PNG and PDF), a Markdown table
in the form of Table 6 (mean ± std where several seeds ran, as separate runs or as one run of
config.num_seeds; their test error's spread is a band in the figure), the verdict on Fig. 6's
claims (`verdict`: each depth's errors at the end against the next, over the seeds both ran),
and, for runs with
config.log_grad_norms, each block's gradient norm from input to output. `compare` draws and
writes them all, and names each run it leaves out and why (no metrics yet, a missing or damaged
config.json or metrics.jsonl), and each it can draw with its training error only (no test
error yet)."""

from collections.abc import Sequence
import os
import re
import sys
from typing import Any

import numpy as np

from depthlab.history import (
  RunHistory,
  common_curves,
  group_by_net,
  load_runs,
  mean_curve,
  running_mean,
  up_to_step,
)
from depthlab.state import learning_rate_schedule

# He et al. 2015, Table 6: CIFAR-10 test error (%) of the residual nets (option A).
PAPER_TEST_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")  # files only: works without a display
  import matplotlib.pyplot as plt

  return plt


PANEL_TITLES = {"plain": "plain nets", "residual": "ResNets"}
TRAIN_WINDOW_STEPS = 100  # training error is drawn as its mean over this many steps (logged more often: noisy)
ERROR_TICKS = (0.5, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100)  # percent, on the logarithmic error axis


def net_colours(runs: Sequence[RunHistory]) -> dict[str, Any]:
  """A colour per net in which nets of one depth share a colour (plain-20 and ResNet-20 alike,
  as in the paper); nets without a depth get one each."""
  plt = _pyplot()
  groups = group_by_net(runs)
  key = lambda net: groups[net][0].config.model.get("depth", net)
  keys = sorted({key(net) for net in groups}, key=lambda k: (isinstance(k, str), k))
  colour_of = dict(zip(keys, plt.get_cmap("tab10").colors * 10))
  return {net: colour_of[key(net)] for net in groups}


def panel_figure(runs: Sequence[RunHistory]) -> tuple[Any, list[tuple[Any, str, list[tuple[Any, str, list]]]]]:
  """A figure of side-by-side panels sharing the y axis, one per kind of net (plain, residual, ...).

  Returns the figure and, per panel, (axes, panel, [(colour, net, the net's runs), ...]).
  """
  plt = _pyplot()
  groups = group_by_net(runs)
  colours = net_colours(runs)
  panels = list(dict.fromkeys(group[0].panel for group in groups.values()))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
  layout = []
  for ax, panel in zip(axes[0], panels):
    nets = [(colours[net], net, group) for net, group in groups.items() if group[0].panel == panel]
    layout.append((ax, panel, nets))
  return fig, layout


def smoothed(steps: np.ndarray, values: np.ndarray, window_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """The running mean over `window_steps` steps (history.running_mean); the values as they are
  where the lines do not tile such a window (logged that seldom, or unevenly)."""
  try:
    return running_mean(steps, values, window_steps)
  except ValueError:
    return steps, values


def caption(runs: Sequence[RunHistory]) -> str:
  """The line under the figure: the runs' length, seeds, batch and recipe, as their configs say."""
  configs = [run.config for run in runs]
  steps = sorted({int(run.lines[-1]["step"]) for run in runs})
  seeds = sorted({c.seed for c in configs})
  recipe = sorted({recipe_of(c) for c in configs})
  return (
    f"{' / '.join(f'{s:,}' for s in steps)} steps, batch {' / '.join(sorted({str(c.batch_size) for c in configs}))}; "
    f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; {'; '.join(recipe)}"
  )


def recipe_of(config: Any) -> str:
  """'lr 0.1, /10 at 2,000 and 3,000, linear warm-up from 0.01 over 400 steps'."""
  drops = " and ".join(f"{b:,}" for b in config.lr_boundaries if b < config.total_steps)
  text = f"lr {config.learning_rate:g}" + (f", x{config.lr_decay:g} at {drops}" if drops else "")
  if config.warmup_steps:
    text += f", {config.warmup_shape} warm-up from {config.warmup_learning_rate:g} over {config.warmup_steps} steps"
  return text


def rate_changes(config: Any) -> list[tuple[int, float]]:
  """(steps done, the learning rate from the next step on) where the schedule's phase changes:
  the end of the warm-up (constant or linear) and each drop, within the run."""
  schedule = learning_rate_schedule(config)  # schedule(k): the rate of step k + 1
  changes = {config.warmup_steps, *config.lr_boundaries} - {0}
  return [(step, float(schedule(step))) for step in sorted(changes) if step < config.total_steps]


def mark_rate_changes(ax: Any, runs: Sequence[RunHistory]) -> None:
  """A dotted line where the runs' learning rate changes, within the steps drawn: a jump in the
  curves there (the end of the warm-up, a drop) is the schedule's."""
  last_step = max(run.lines[-1]["step"] for run in runs)
  for step, rate in sorted({change for run in runs for change in rate_changes(run.config)}):
    if step < last_step:
      ax.axvline(step, color="grey", linestyle=":", linewidth=1)
      ax.text(
        step, 0.98, f"lr {rate:g} ", transform=ax.get_xaxis_transform(), rotation=90, va="top", ha="right", fontsize=7
      )


def draw_error_curves(runs: Sequence[RunHistory]) -> Any:
  """Fig. 6 as a matplotlib figure: train error dashed, test error solid, one colour per net."""
  fig, layout = panel_figure(runs)
  for ax, panel, nets in layout:
    for colour, net, group in nets:
      seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
      steps, train_error = smoothed(*mean_curve(group, "train_error"), TRAIN_WINDOW_STEPS)
      evaluated = [run for run in group if final_test_error(run) is not None]
      label = None if evaluated else f"{net}{seeds}: no test error yet"
      ax.plot(steps, 100 * train_error, "--", color=colour, linewidth=1, label=label)
      if not evaluated:
        continue
      group = evaluated
      seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
      steps, test_errors = common_curves(group, "test_error")
      test_error = test_errors.mean(axis=0)
      if len(group) > 1:  # the seeds' spread: mean ± sample std
        spread = test_errors.std(axis=0, ddof=1)
        ax.fill_between(
          steps, 100 * (test_error - spread), 100 * (test_error + spread), color=colour, alpha=0.2, linewidth=0
        )
      ax.plot(
        steps,
        100 * test_error,
        "-",
        color=colour,
        linewidth=2,
        marker="o" if len(steps) < 20 else None,
        markersize=3,
        label=f"{net}{seeds}",
      )
    mark_rate_changes(ax, [run for *_, group in nets for run in group])
    ax.set_title(PANEL_TITLES.get(panel, panel))
    ax.set_xlabel("iterations")
    ax.grid(alpha=0.3)
    bands = "; band: ± std over seeds" if any(len(group) > 1 for *_, group in nets) else ""
    ax.legend(title=f"test bold, train dashed{bands}", fontsize=8, title_fontsize=8)
  set_error_axis(fig.axes[0], runs)
  fig.axes[0].set_ylabel(f"error (%); train: mean over {TRAIN_WINDOW_STEPS} steps")
  fig.text(0.5, 0.005, caption(runs), ha="center", va="bottom", fontsize=7)
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  return fig


def set_error_axis(ax: Any, runs: Sequence[RunHistory]) -> None:
  """A logarithmic error axis in percent, from the tick below the lowest error drawn to 100%."""
  lowest = min(
    100 * float(np.min(run.curve(key)[1]))
    for run in runs
    for key in ("train_error", "test_error")
    if run.curve(key)[0].size
  )
  ax.set_yscale("log")
  bottom = max([t for t in ERROR_TICKS if t < lowest] or [ERROR_TICKS[0]])
  ax.set_ylim(bottom, 100)
  ticks = [t for t in ERROR_TICKS if t >= bottom]
  ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
  ax.minorticks_off()


def block_position(metric: str) -> float:
  """Where a grad_norm/<block> metric sits from input (0) to output (inf)."""
  name = metric.split("/", 1)[1]
  number = re.fullmatch(r"block(\d+)", name)
  return 0 if name.startswith("stem") else int(number.group(1)) if number else float("inf")


def draw_grad_norms(runs: Sequence[RunHistory]) -> Any:
  """Each block's gradient norm (mean over the run's log lines) from input to output, log scale.

  Only runs trained with config.log_grad_norms appear; None if there are none.
  """
  runs = [run for run in runs if run.lines and any(k.startswith("grad_norm/") for k in run.lines[0])]
  if not runs:
    return None
  fig, layout = panel_figure(runs)
  for ax, panel, nets in layout:
    for colour, net, group in nets:
      keys = sorted((k for k in group[0].lines[0] if k.startswith("grad_norm/block")), key=block_position)
      means = [mean_curve(group, k)[1].mean() for k in keys]
      ax.semilogy([block_position(k) for k in keys], means, "-o", color=colour, markersize=3, label=net)
    ax.set_title(f"{PANEL_TITLES.get(panel, panel)}: gradient norm per block")
    ax.set_xlabel("block (1 = next to the input)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
  fig.axes[0].set_ylabel("mean gradient norm over training")
  fig.tight_layout()
  return fig


def save_figure(fig: Any, *paths: str) -> list[str]:
  for path in paths:
    fig.savefig(path, dpi=150)
  _pyplot().close(fig)
  return list(paths)


def _percent(values: Sequence[float]) -> str:
  """'7.51' for one run, '7.51 ± 0.16' (mean ± sample std) for several."""
  values = 100 * np.asarray(values)
  if len(values) == 1:
    return f"{values[0]:.2f}"
  return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def final_train_error(run: RunHistory) -> float:
  """The training error at the end as the figure draws it: its mean over the last
  TRAIN_WINDOW_STEPS steps (a 10-step log line alone is a point or more of noise)."""
  return float(smoothed(*run.curve("train_error"), TRAIN_WINDOW_STEPS)[1][-1])


def final_test_error(run: RunHistory) -> float | None:
  """The last test error the run logged, or None if it has not been evaluated."""
  values = run.curve("test_error")[1]
  return float(values[-1]) if len(values) else None


def results_table(runs: Sequence[RunHistory]) -> str:
  """Table 6 as Markdown: per net its depth, parameters, final and best errors (%), and the paper's."""
  rows = [
    f"| net | depth | parameters | runs | steps | final train error, last {TRAIN_WINDOW_STEPS} steps (%) "
    "| final test error (%) | best test error (%) | paper test error (%) |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for net, group in group_by_net(runs).items():
    config = group[0].config
    depth = config.model.get("depth", "")
    paper = PAPER_TEST_ERROR.get(depth) if net == f"resnet{depth}" else None
    evaluated = [run for run in group if final_test_error(run) is not None]
    test = lambda values, evaluated=evaluated: _percent(values) if evaluated else "- (not evaluated yet)"
    params = f"{group[0].num_params / 1e6:.2f}M" if group[0].num_params else "-"
    steps = max(int(run.lines[-1]["step"]) for run in group)
    train = _percent([final_train_error(run) for run in group])
    final, best = [final_test_error(run) for run in evaluated], [run.curve("test_error")[1].min() for run in evaluated]
    rows.append(
      f"| {net} | {depth} | {params} | {len(group)} | {steps} | {train} | {test(final)} | {test(best)} "
      f"| {paper if paper else '-'} |"
    )
  return "\n".join(rows)


def change_with_depth(shallow: Sequence[RunHistory], deep: Sequence[RunHistory]) -> str:
  """How the errors at the end change from one net to the other, over the seeds both ran: the
  mean of each, the change in points, and at how many of those seeds the second net's is higher."""
  by_seed = lambda runs: {run.config.seed: run for run in runs}
  first, second = by_seed(shallow), by_seed(deep)
  seeds = sorted(set(first) & set(second))
  if not seeds:
    return f"no seed in common (seeds {sorted(first)} and {sorted(second)})"
  parts = []
  for label, final in (("training error", final_train_error), ("test error", final_test_error)):
    pairs = [(final(first[s]), final(second[s])) for s in seeds]
    if any(value is None for pair in pairs for value in pair):
      continue
    a, b = (100 * np.mean([pair[i] for pair in pairs]) for i in (0, 1))
    higher = sum(deeper > shallower for shallower, deeper in pairs)
    parts.append(f"{label} {a:.2f}% → {b:.2f}% ({b - a:+.2f} points, higher at {higher} of {len(seeds)})")
  seed_list = "seed" + ("s " if len(seeds) > 1 else " ") + ", ".join(str(s) for s in seeds)
  return f"{'; '.join(parts)}; {seed_list}"


def verdict(runs: Sequence[RunHistory]) -> str:
  """Fig. 6's two claims as Markdown lines, from the runs: for each panel, each depth against
  the next one up (do plain nets get worse with depth, residual nets better?), then at each
  depth the residual net against the plain one."""
  groups = group_by_net(runs)
  panels = {}
  for net, group in groups.items():
    if group[0].config.model.name == "cifar_resnet":
      panels.setdefault(group[0].panel, []).append(net)
  lines = []
  for panel in ("plain", "residual"):
    nets = panels.get(panel, [])  # ordered by depth
    for shallow, deep in zip(nets, nets[1:]):
      lines.append(f"- {shallow} → {deep}: {change_with_depth(groups[shallow], groups[deep])}")
  for plain in panels.get("plain", []):
    twin = plain.replace("plain", "resnet")
    if twin in panels.get("residual", []):
      lines.append(f"- {plain} → {twin}: {change_with_depth(groups[plain], groups[twin])}")
  return "\n".join(lines)


def counted(number: int, noun: str) -> str:
  """'1 run', '2 runs'."""
  return f"{number} {noun}{'' if number == 1 else 's'}"


def not_evaluated(run: RunHistory, step: int | None) -> str | None:
  """Why a run has no test error (up to `step`), or None if it has one."""
  if final_test_error(run) is not None:
    return None
  if step is not None:
    return f"no test error logged up to step {step} (--step)."
  last, every = run.lines[-1]["step"], run.config.eval_every_steps
  return f"not evaluated yet: no test error logged up to step {last} (it evaluates every {every} steps and at its end)."


def compare(sources: Sequence[str], out: str | None = None, step: int | None = None) -> dict[str, Any]:
  """Draws the runs' curves and writes their table and verdict (figures.verdict); returns the
  paths written, the table, the verdict, the report (both, as written into <out>.md), the
  number of runs compared, the runs skipped and those drawn without a test error
  ('source: why', each also printed on stderr). A run not evaluated yet is drawn with its
  training error only."""
  found, skipped = load_runs(sources)
  runs, untested = [], []
  for run in [up_to_step(run, step) for run in found]:
    if not run.lines:
      skipped.append(f"{run.source}: no metrics logged" + (f" up to step {step} (--step)." if step else " yet."))
      continue
    runs.append(run)
    why = not_evaluated(run, step)
    if why:
      untested.append(f"{run.source}: {why}")
  for line in skipped:
    print(f"Skipped {line}", file=sys.stderr, flush=True)
  for line in untested:
    print(f"Training error only: {line}", file=sys.stderr, flush=True)
  if not runs:
    raise FileNotFoundError(
      f"No run to compare in {', '.join(sources)}: each run found was skipped, for the reason listed above."
    )
  out = out or os.path.join(sources[0] if os.path.isdir(sources[0]) else "runs", "compare")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  table, changes = results_table(runs), verdict(runs)
  report = table + "\n" + (f"\nFrom each net to the next (errors at the end):\n\n{changes}\n" if changes else "")
  with open(f"{out}.md", "w") as f:
    f.write(report)
  paths = save_figure(draw_error_curves(runs), f"{out}.png", f"{out}.pdf") + [f"{out}.md"]
  grad_norms = draw_grad_norms(runs)
  if grad_norms is not None:
    paths += save_figure(grad_norms, f"{out}_grad_norms.png")
  return {
    "table": table,
    "verdict": changes,
    "report": report,
    "paths": paths,
    "runs": len(runs),
    "skipped": skipped,
    "untested": untested,
  }
