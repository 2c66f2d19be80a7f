"""The warm-up criterion of docs/recipe.md, read off runs' metrics: no run at chance, and no
jump: after step 100, the 50-step mean training error never rises more than 5 points above
its lowest earlier value, through the end of the warm-up and 300 steps beyond it.

    python -m benchmarks.warmup_jumps results/warmup_constant results/warmup_linear --plot=docs/warmup_shapes.png

It reads every run below the folders given (their metrics.jsonl and config.json, logged every
10 steps, as sweeps/warmup_*.yaml and sweeps/fig6_4k*.yaml log; a longer run is judged on its
first steps alone, and a run that has not logged them yet is skipped, and says so), prints a
Markdown table with a row per run (warm-up shape, net, seed, its largest rise and where, its
last 50-step error, at chance or not, the verdict) and the verdict per shape, and with --plot
draws each run's 50-step mean training error, a panel per net, a colour per warm-up shape.
"""

import argparse
from collections.abc import Sequence
import dataclasses
import sys

import numpy as np

from depthlab import cli, collapse, history

WINDOW_STEPS = 50  # the criterion's mean: steps s-49 .. s
FROM_STEP = 100  # windows that end at or after this step count
MAX_RISE = 0.05  # 5 points of training error
STEPS_AFTER_WARMUP = 300  # windows that end at most this long after the warm-up count


@dataclasses.dataclass
class Verdict:
  """One run against the criterion."""

  shape: str
  net: str
  seed: int
  largest_rise: float  # above the lowest earlier 50-step mean, in error (0.05 = 5 points)
  rise_at: int  # the step whose window holds it
  last_error: float  # the last 50-step mean it looks at
  at_chance: bool

  @property
  def meets(self) -> bool:
    return not self.at_chance and self.largest_rise <= MAX_RISE


def window_means(run: history.RunHistory, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, the mean of `key` over the WINDOW_STEPS steps that end at each)."""
  try:
    return history.running_mean(*run.curve(key), WINDOW_STEPS)
  except ValueError as e:
    raise ValueError(f"{run.source}: {e} The criterion needs lines that tile {WINDOW_STEPS} steps.") from e


def measured_means(run: history.RunHistory, key: str) -> tuple[np.ndarray, np.ndarray]:
  """window_means of the windows the criterion looks at: those that end by STEPS_AFTER_WARMUP
  after the warm-up (all of a 700-step measurement run; the first 700 steps of a longer one)."""
  steps, means = window_means(run, key)
  measured = steps <= run.config.warmup_steps + STEPS_AFTER_WARMUP
  return steps[measured], means[measured]


def not_measured_yet(run: history.RunHistory) -> str | None:
  """Why `run` cannot be judged yet (it has not logged the steps the criterion looks at), or None."""
  last, needed = run.lines[-1]["step"] if run.lines else 0, run.config.warmup_steps + STEPS_AFTER_WARMUP
  if last >= needed:
    return None
  return (
    f"{run.source}: logged up to step {last}; the criterion looks at steps up to {needed} "
    f"(its warm-up and {STEPS_AFTER_WARMUP} after)."
  )


def judge(run: history.RunHistory) -> Verdict:
  """`run`'s largest rise of the 50-step mean training error above its lowest earlier value
  (windows ending from FROM_STEP to STEPS_AFTER_WARMUP past the warm-up), and whether it is at
  chance at the end of those steps."""
  steps, errors = measured_means(run, "train_error")
  _, losses = measured_means(run, "train_loss")
  errors, after = errors[steps >= FROM_STEP], steps[steps >= FROM_STEP]
  rises = errors[1:] - np.minimum.accumulate(errors)[:-1]
  worst = int(np.argmax(rises)) if len(rises) else 0
  return Verdict(
    shape=run.config.warmup_shape if run.config.warmup_steps else "none",
    net=run.net,
    seed=run.config.seed,
    largest_rise=float(max(rises.max(), 0.0)) if len(rises) else 0.0,
    rise_at=int(after[worst + 1]) if len(rises) else int(after[-1]),
    last_error=float(errors[-1]),
    at_chance=collapse.at_chance(float(losses[-1]), float(errors[-1]), 10),
  )


def format_table(verdicts: Sequence[Verdict]) -> str:
  rows = [
    f"| warm-up | net | seed | largest rise of the {WINDOW_STEPS}-step mean train error (step) "
    f"| train error, last {WINDOW_STEPS} steps measured | at chance | no jump, not at chance |",
    "|---|---|---|---|---|---|---|",
  ]
  for v in verdicts:
    rows.append(
      f"| {v.shape} | {v.net} | {v.seed} | {100 * v.largest_rise:.1f} points ({v.rise_at}) | "
      f"{100 * v.last_error:.1f}% | {'**yes**' if v.at_chance else 'no'} | {'yes' if v.meets else '**no**'} |"
    )
  return "\n".join(rows)


def per_shape(verdicts: Sequence[Verdict]) -> str:
  """One line per warm-up shape: how many of its runs meet the criterion."""
  lines = []
  for shape in sorted({v.shape for v in verdicts}):
    runs = [v for v in verdicts if v.shape == shape]
    lines.append(f"{shape}: {sum(v.meets for v in runs)} of {len(runs)} runs meet the criterion")
  return "\n".join(lines)


def draw(runs: Sequence[history.RunHistory], verdicts: Sequence[Verdict]):
  """Each run's 50-step mean training error, a panel per net, a colour per warm-up shape."""
  import matplotlib

  matplotlib.use("Agg")  # files only: works without a display
  from matplotlib import pyplot as plt

  nets = list(dict.fromkeys(v.net for v in verdicts))
  fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 4.2), sharey=True, squeeze=False)
  colours = dict(zip(sorted({v.shape for v in verdicts}), plt.get_cmap("tab10").colors))
  for ax, net in zip(axes[0], nets):
    for run, verdict in zip(runs, verdicts):
      if verdict.net != net:
        continue
      steps, errors = measured_means(run, "train_error")
      label = (
        f"{verdict.shape} warm-up"
        if verdict.seed == min(v.seed for v in verdicts if v.shape == verdict.shape and v.net == net)
        else None
      )
      ax.plot(steps, 100 * errors, color=colours[verdict.shape], linewidth=1, label=label)
    warmup = runs[0].config.warmup_steps
    ax.axvline(warmup, color="grey", linestyle=":", linewidth=1, label=f"end of the warm-up ({warmup})")
    ax.set_title(f"{net}: {WINDOW_STEPS}-step mean training error, a line per seed", fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("training error (%)")
  fig.tight_layout()
  return fig


def measured_runs(folders: Sequence[str]) -> list[history.RunHistory]:
  """The runs below `folders` that have logged the steps the criterion looks at, by net, shape
  and seed; each run left out is printed on stderr with the reason."""
  found, skipped = history.load_runs(folders)
  runs = []
  for run in found:
    why = not_measured_yet(run)
    if why:
      skipped.append(why)
    else:
      runs.append(run)
  for reason in skipped:
    print(f"Skipped {reason}", file=sys.stderr)
  if not runs:  # load_runs raises where it finds none at all
    raise FileNotFoundError(
      f"No run to judge in {', '.join(folders)}: each run found was skipped, for the reason above."
    )
  return sorted(runs, key=lambda r: (r.net, r.config.warmup_shape, r.config.seed))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("folders", nargs="+", help="folders holding runs (workdirs, or results/<sweep>)")
  parser.add_argument("--plot", help="also draw the curves into this image file")
  args = parser.parse_args(argv)
  with cli.user_errors_as_messages(also=(FileNotFoundError, ValueError)):  # a wrong folder, lines that don't tile
    runs = measured_runs(args.folders)
    verdicts = [judge(run) for run in runs]
  print(format_table(verdicts))
  print(per_shape(verdicts))
  if args.plot:
    draw(runs, verdicts).savefig(args.plot, dpi=150)
    print(f"Wrote {args.plot}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
