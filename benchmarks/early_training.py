"""The first steps of training at every depth: does a recipe blow up, does the net die?

    python -m benchmarks.early_training --config.warmup_steps=0                 # the paper's recipe
    python -m benchmarks.early_training                                         # configs/default.py's
    python -m benchmarks.early_training --depths=56,110 --residual=true --steps=200

For each net (plain and residual, at each of --depths) it trains seeds config.seed ..
config.seed + config.num_seeds - 1 side by side on the real training set for --steps
steps, through the Trainer that train.py drives, and keeps every step's training loss
and error. Per run it reports the loss at initialisation (step 1's loss is computed
before its update), the largest loss over steps 1-20, the mean loss and error over the
last 10 steps, and whether the net is at chance there (collapse.at_chance: the loss of
uniform predictions, the error of one class guessed for all).

Every net's curves are appended to --out as one JSON line as soon as it finishes: a
command that is stopped and run again skips the nets already there with the same
config, so a long measurement can span several sittings. Any config field can be set
after --config, as for train.py; model.depth and model.residual are set per net.
"""

import json
import math
import os
import time
from typing import Any

from absl import app, flags
import ml_collections
from ml_collections import config_flags
import numpy as np

from depthlab import cli, collapse, errors, naming, run_files, state, trainer, validation, writers
from nets import cpu_conv

EARLY_STEPS = 20  # the window in which the paper's recipe blows up (largest loss over steps 1-20)
LAST_STEPS = 10  # the window whose means say whether a net is at chance

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", "configs/default.py", "The recipe; depth and residual are set per net.", lock_config=True
  )
  flags.DEFINE_list("depths", ["20", "56", "110"], "Depths to train (6n+2).")
  flags.DEFINE_list("residual", ["false", "true"], "Plain (false), residual (true) or both.")
  flags.DEFINE_integer("steps", 60, "Train steps per net.")
  flags.DEFINE_string(
    "out", "runs/early_training/default.jsonl", "JSON lines, one per net: its curves; nets already there are skipped."
  )
  flags.DEFINE_string("plot", None, "Also draw the training losses of every net in --out into this image file.")
  flags.DEFINE_string("plot_title", "", "What the figure's panels say the recipe is, e.g. 'lr 0.1 from step 1'.")


def net_config(base: ml_collections.ConfigDict, depth: int, residual: bool) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(base.to_dict())  # a copy that can be changed
  config.model.depth, config.model.residual = depth, residual
  return config


def as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as its JSON line holds it (tuples become lists), to compare with one read back."""
  return json.loads(json.dumps(config.to_dict(), default=list))


def same_config(saved: dict[str, Any], config: ml_collections.ConfigDict) -> bool:
  """True if a config read back from --out is `config` (fields added since count as their defaults)."""
  return json.loads(json.dumps(run_files.with_defaults(saved), default=list)) == as_json(config)


def train_curves(config: ml_collections.ConfigDict, steps: int) -> dict[str, np.ndarray]:
  """Every step's training loss and error of each seed: {"loss": [steps, seeds], "error": ...}."""
  run = trainer.Trainer(config, trainer.training_devices(config))
  losses, errors, start = [], [], time.perf_counter()
  for step in range(1, steps + 1):
    metrics = run.data_parallel.to_host(run.train(1))
    losses.append(np.reshape(metrics["train_loss"], -1))
    errors.append(np.reshape(metrics["train_error"], -1))
    if step % 10 == 0 or step == steps:
      elapsed = time.perf_counter() - start
      print(
        f"  {naming.net_name(config)} step {step}/{steps}: loss {np.mean(losses[-1]):.3f} | "
        f"ETA {writers.format_duration(elapsed / step * (steps - step))}",
        flush=True,
      )
  return {"loss": np.array(losses), "error": np.array(errors)}


def run_summary(loss: np.ndarray, error: np.ndarray, num_classes: int = 10) -> dict[str, Any]:
  """One seed's figures from its per-step curves."""
  last_loss, last_error = float(loss[-LAST_STEPS:].mean()), float(error[-LAST_STEPS:].mean())
  return {
    "initial_loss": float(loss[0]),
    "max_early_loss": float(loss[:EARLY_STEPS].max()),
    "last_loss": last_loss,
    "last_error": last_error,
    "at_chance": collapse.at_chance(last_loss, last_error, num_classes),
  }


def read_results(path: str) -> list[dict[str, Any]]:
  """The nets measured so far in `path` (a line cut short by a crash is skipped)."""
  return run_files.read_json_lines(path, "net", "measured net") if os.path.exists(path) else []


def format_table(results: list[dict[str, Any]]) -> str:
  """A Markdown table: one row per net and seed."""
  rows = [
    f"| net | seed | loss at init | max loss, steps 1-{EARLY_STEPS} | loss, last {LAST_STEPS} steps "
    f"| train error, last {LAST_STEPS} steps | at chance |",
    "|---|---|---|---|---|---|---|",
  ]
  for result in results:
    loss, error = np.array(result["loss"]), np.array(result["error"])
    for i, seed in enumerate(result["seeds"]):
      s = run_summary(loss[:, i], error[:, i])
      rows.append(
        f"| {result['net']} | {seed} | {s['initial_loss']:.2f} | {s['max_early_loss']:.2f} | "
        f"{s['last_loss']:.2f} | {100 * s['last_error']:.1f}% | {'**yes**' if s['at_chance'] else 'no'} |"
      )
  return "\n".join(rows)


def measure(
  base: ml_collections.ConfigDict, nets_to_train: list[tuple[int, bool]], steps: int, out: str
) -> list[dict[str, Any]]:
  """The curves of each (depth, residual) net: read from `out` where it holds them for the same
  config and steps, else trained and appended to it."""
  done = read_results(out)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  run_files.write_json_lines(out, done)  # without a torn last line, so that appends start lines of their own
  results = []
  for depth, residual in nets_to_train:
    config = net_config(base, depth, residual)
    found = [r for r in done if same_config(r["config"], config) and r["steps"] == steps]
    if found:
      print(f"{naming.net_name(config)}: already in {out}", flush=True)
      results.append(found[-1])
      continue
    print(f"{naming.net_name(config)}: {steps} steps of seeds {state.seeds(config)}", flush=True)
    curves = train_curves(config, steps)
    result = {
      "net": naming.net_name(config),
      "seeds": state.seeds(config),
      "steps": steps,
      "config": as_json(config),
      "loss": curves["loss"].tolist(),
      "error": curves["error"].tolist(),
    }
    with open(out, "a") as f:
      f.write(json.dumps(result) + "\n")
    results.append(result)
  return results


def draw_losses(results: list[dict[str, Any]], title: str) -> Any:
  """Each seed's training loss per step, plain nets left and residual right, a colour per depth."""
  import matplotlib

  matplotlib.use("Agg")  # files only: works without a display
  from matplotlib import pyplot as plt
  from matplotlib import ticker

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  colours = dict(zip(sorted({r["config"]["model"]["depth"] for r in results}), plt.get_cmap("tab10").colors))
  for ax, residual in zip(axes, (False, True)):
    for result in (r for r in results if r["config"]["model"]["residual"] == residual):
      loss = np.array(result["loss"])
      steps = np.arange(1, len(loss) + 1)
      for i in range(len(result["seeds"])):
        ax.plot(
          steps,
          loss[:, i],
          color=colours[result["config"]["model"]["depth"]],
          linewidth=1,
          label=result["net"] if i == 0 else None,
        )
    ax.axhline(math.log(10), color="grey", linestyle=":", linewidth=1, label="chance (ln 10)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.FixedLocator([1, 1.5, 2, 2.5, 3, 5, 10, 20, 50, 100]))
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_title(f"{'residual' if residual else 'plain'} nets: {title}", fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, title="a line per seed", title_fontsize=8)
  axes[0].set_ylabel("training loss (batch of the step)")
  fig.tight_layout()
  return fig


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cpu_conv.use_fast_xla_cpu_flags()
  with cli.user_errors_as_messages():
    nets_to_train = [(int(d), r.lower() == "true") for r in FLAGS.residual for d in FLAGS.depths]
    for depth, residual in nets_to_train:  # every net's problems before any net trains
      try:
        validation.validate_config(net_config(FLAGS.config, depth, residual))
      except errors.ConfigError as e:  # here the depth comes from --depths, not the config
        raise errors.ConfigError([p.replace("--config.model.depth", "--depths") for p in e.problems]) from e
    results = measure(FLAGS.config, nets_to_train, FLAGS.steps, FLAGS.out)
  print(format_table(results), flush=True)
  if FLAGS.plot:
    draw_losses(read_results(FLAGS.out), FLAGS.plot_title).savefig(FLAGS.plot, dpi=150)
    print(f"Wrote {FLAGS.plot}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
