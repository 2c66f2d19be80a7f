"""Evaluates a run's checkpoint, and compares runs as curves and a table.

    python eval.py --workdir=runs/resnet56               # the newest checkpoint
    python eval.py --workdir=runs/resnet56 --step=32000 --train
    python eval.py compare runs/plain_vs_residual        # every run below that folder
    python eval.py compare runs/a runs/b --out=docs/fig6 # any runs
    python eval.py compare my-team/depthlab/abc123xy     # a wandb sweep, read through wandb.Api()

Evaluating reads the run's config.json, restores the checkpoint onto this machine's
devices (any number of them), prints loss and error and writes <workdir>/eval_<step>.json.

Comparing reads each run's metrics.jsonl and config.json and draws He et al. 2015's
Fig. 6: training error dashed, test error solid, against steps, one colour per depth,
plain and residual nets in side-by-side panels with a shared y axis (PNG and PDF). It
writes a Markdown table in the form of the paper's Table 6 (mean ± std where several
seeds ran, as separate runs or as one run of config.num_seeds; their test error's spread is
a band in the figure), and, for runs with config.log_grad_norms, a figure of each block's gradient
norm from input to output.
"""

import dataclasses
import json
import os
import re
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging

from depthlab import checkpoints
from depthlab import input_pipeline
from depthlab import parallel
from depthlab import loop
from depthlab import naming
from depthlab import state as state_lib
from nets import cpu_conv
from depthlab import validation
from depthlab import writers
from configs import default

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's workdir (holds config.json and checkpoints/).")
flags.DEFINE_integer("step", None, "The checkpoint's step; default: the newest. compare: "
                     "compare the runs as they stood after this many steps.")
flags.DEFINE_bool("train", False, "Also evaluate the train split (no augmentation).")
flags.DEFINE_integer("num_devices", 0, "Local devices to evaluate on; 0: all.")
flags.DEFINE_string("data_dir", None, "TFDS data dir; default: the run's, else $TFDS_DATA_DIR.")
flags.DEFINE_string("out", None, "compare: where the figures and table go, as a path without "
                    "extension; default: <first folder>/compare.")

# He et al. 2015, Table 6: CIFAR-10 test error (%) of the residual nets (option A).
PAPER_TEST_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, from its config.json (top-level fields it lacks: the defaults)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} the workdir of a run?")
  with open(path) as f:
    saved = json.load(f)
  saved.pop("num_params", None)
  return ml_collections.ConfigDict(checkpoints.with_defaults(saved))


def evaluate_checkpoint(workdir: str, step: int | None = None, include_train: bool = False,
                        num_devices: int = 0, data_dir: str | None = None) -> dict[str, Any]:
  """Loss and error of a checkpoint on the test split (and the train split), as a dict."""
  config = load_run_config(workdir)
  if data_dir:
    config.dataset.data_dir = data_dir
  replicas = parallel.DataParallel(config.parallelism, num_devices)
  dataset = input_pipeline.load_dataset(config.dataset)
  model = state_lib.create_model(config, dataset.num_classes)
  template = state_lib.create_train_state(config, model, state_lib.run_keys(config)[0],
                                      input_pipeline.input_shape(config.dataset, dataset.train.images.shape[1:]))
  ckpts = checkpoints.Checkpoints(workdir)
  try:
    restored = ckpts.restore(jax.device_get(template), step, set_aside=False)  # an evaluator leaves the run as it is
  finally:
    ckpts.close()
  if restored is None:
    raise FileNotFoundError(f"No readable checkpoint in {ckpts.directory}.")
  step, state, _ = restored
  splits = dict(dataset.eval_splits, **({"train": dataset.train} if include_train else {}))
  evaluate = loop.make_evaluator(replicas, splits, dataset.mean_image, config)
  results = {"step": step, "devices": replicas.count, **evaluate(replicas.replicate(state))}
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"eval_{step}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results


# ------------------------------------------------------------------------------ comparing runs


@dataclasses.dataclass
class RunHistory:
  """One run's config and metrics lines, from its workdir or from wandb."""
  config: ml_collections.ConfigDict
  lines: list[dict[str, float]]  # ordered by step
  num_params: int | None = None
  source: str = ""

  @property
  def net(self) -> str:
    """Runs of the same net (seed aside) are averaged into one curve and one table row."""
    return naming.net_name(self.config)

  @property
  def panel(self) -> str:
    """Plain and residual CIFAR nets side by side, as in the paper; other nets by name."""
    if self.config.model.name == "cifar_resnet":
      return "residual" if self.config.model.residual else "plain"
    return self.config.model.name

  def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the lines that hold `key`."""
    points = [(line["step"], line[key]) for line in self.lines if key in line]
    return np.array([p[0] for p in points]), np.array([p[1] for p in points])


def split_seeds(run: RunHistory) -> list[RunHistory]:
  """A run of config.num_seeds = K as K one-seed runs (from its seed<s>/<key> metrics), so
  that the seeds of one run and the seeds of separate runs are compared alike."""
  config = run.config
  if config.get("num_seeds", 1) == 1:
    return [run]
  runs = []
  for seed in state_lib.seeds(config):
    prefix = f"seed{seed}/"
    one = ml_collections.ConfigDict(config.to_dict())
    one.seed, one.num_seeds = seed, 1
    lines = [{"step": line["step"], **{k[len(prefix):]: v for k, v in line.items() if k.startswith(prefix)}}
             for line in run.lines]
    runs.append(RunHistory(one, lines, run.num_params, f"{run.source} ({prefix[:-1]})"))
  return runs


def load_local_runs(path: str) -> list[RunHistory]:
  """Every run in `path`: a workdir, or a folder holding workdirs at any depth."""
  runs = []
  for folder, subfolders, files in os.walk(path):
    subfolders[:] = sorted(d for d in subfolders if d not in ("checkpoints", "wandb", "unreadable_checkpoints"))
    if "metrics.jsonl" in files and "config.json" in files:
      config = load_run_config(folder)
      with open(os.path.join(folder, "config.json")) as f:
        num_params = json.load(f).get("num_params")
      runs.append(RunHistory(config, writers.read_metrics(folder), num_params, folder))
  return runs


def load_wandb_sweep(sweep_path: str) -> list[RunHistory]:
  """The runs of a wandb sweep ('entity/project/sweep_id'), read through the public API."""
  import wandb  # pylint: disable=g-import-not-at-top
  runs = []
  for run in wandb.Api().sweep(sweep_path).runs:
    config = train_config_of(run.config)
    lines = [{k: v for k, v in row.items() if isinstance(v, (int, float)) and not k.startswith("_")}
             | {"step": row["_step"]} for row in run.scan_history()]
    runs.append(RunHistory(config, sorted(lines, key=lambda line: line["step"]),
                           run.summary.get("num_params"), f"wandb:{run.path}"))
  return runs


def train_config_of(wandb_config: dict[str, Any]) -> ml_collections.ConfigDict:
  """A run's config from its wandb config (flat 'config.model.depth' keys) over the defaults."""
  config = default.get_config()
  config.update_from_flattened_dict({k[len("config."):]: v for k, v in wandb_config.items()
                                     if k.startswith("config.") and not isinstance(v, dict)})
  return config


def load_runs(sources: Sequence[str]) -> list[RunHistory]:
  """The runs under each local path, or of each wandb sweep path (entity/project/sweep_id)."""
  runs = []
  for source in sources:
    if os.path.exists(source):
      found = load_local_runs(source)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+/\w+", source):
      found = load_wandb_sweep(source)
    else:
      raise FileNotFoundError(f"{source} is neither a folder nor a wandb sweep path (entity/project/sweep_id).")
    if not found:
      raise FileNotFoundError(f"No runs (metrics.jsonl with config.json) in {source}.")
    runs += [one for run in found for one in split_seeds(run)]
  return runs


def group_by_net(runs: Sequence[RunHistory]) -> dict[str, list[RunHistory]]:
  """Runs of each net (its seeds), nets ordered by panel, then depth, then name."""
  groups = {}
  for run in runs:
    groups.setdefault(run.net, []).append(run)
  order = lambda net: (groups[net][0].panel, groups[net][0].config.model.get("depth", 0), net)
  return {net: groups[net] for net in sorted(groups, key=order)}


def common_curves(runs: Sequence[RunHistory], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values [runs, steps]) of `key` at the steps every run logged it."""
  curves = [run.curve(key) for run in runs]
  steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
  values = [[dict(zip(s.tolist(), v.tolist()))[t] for t in steps] for s, v in curves]
  return np.array(steps), np.array(values).reshape(len(runs), len(steps))


def mean_curve(runs: Sequence[RunHistory], key: str) -> tuple[np.ndarray, np.ndarray]:
  """The mean over runs of `key` at the steps every run logged it."""
  steps, values = common_curves(runs, key)
  return steps, values.mean(axis=0)


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # files only: works without a display
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


PANEL_TITLES = {"plain": "plain nets", "residual": "ResNets"}


def panel_figure(runs: Sequence[RunHistory]) -> tuple[Any, list[tuple[Any, str, list[tuple[Any, str, list]]]]]:
  """A figure of side-by-side panels sharing the y axis, one per kind of net (plain, residual, ...).

  Returns the figure and, per panel, (axes, panel, [(colour, net, the net's runs), ...]).
  """
  plt = _pyplot()
  groups = group_by_net(runs)
  panels = list(dict.fromkeys(group[0].panel for group in groups.values()))
  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
  colours = plt.get_cmap("tab10").colors * 10
  layout = []
  for ax, panel in zip(axes[0], panels):
    nets = [(net, group) for net, group in groups.items() if group[0].panel == panel]
    layout.append((ax, panel, [(colour, net, group) for colour, (net, group) in zip(colours, nets)]))
  return fig, layout


def draw_error_curves(runs: Sequence[RunHistory]) -> Any:
  """Fig. 6 as a matplotlib figure: train error dashed, test error solid, one colour per net."""
  fig, layout = panel_figure(runs)
  for ax, panel, nets in layout:
    for colour, net, group in nets:
      seeds = f" ({len(group)} seeds)" if len(group) > 1 else ""
      steps, train_error = mean_curve(group, "train_error")
      ax.plot(steps, 100 * train_error, "--", color=colour, linewidth=1)
      steps, test_errors = common_curves(group, "test_error")
      test_error = test_errors.mean(axis=0)
      if len(group) > 1:  # the seeds' spread: mean ± sample std
        spread = test_errors.std(axis=0, ddof=1)
        ax.fill_between(steps, 100 * (test_error - spread), 100 * (test_error + spread), color=colour,
                        alpha=0.2, linewidth=0)
      ax.plot(steps, 100 * test_error, "-", color=colour, linewidth=2, marker="o" if len(steps) < 20 else None,
              markersize=3, label=f"{net}{seeds}")
    ax.set_title(PANEL_TITLES.get(panel, panel))
    ax.set_xlabel("iterations")
    ax.grid(alpha=0.3)
    bands = "; band: ± std over seeds" if any(len(group) > 1 for *_, group in nets) else ""
    ax.legend(title=f"test solid, train dashed{bands}", fontsize=8, title_fontsize=8)
  fig.axes[0].set_ylabel("error (%)")
  fig.axes[0].set_ylim(bottom=0)
  fig.tight_layout()
  return fig


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


def results_table(runs: Sequence[RunHistory]) -> str:
  """Table 6 as Markdown: per net its depth, parameters, final and best errors (%), and the paper's."""
  rows = ["| net | depth | parameters | runs | steps | final train error (%) | final test error (%) "
          "| best test error (%) | paper test error (%) |", "|---|---|---|---|---|---|---|---|---|"]
  for net, group in group_by_net(runs).items():
    config = group[0].config
    depth = config.model.get("depth", "")
    paper = PAPER_TEST_ERROR.get(depth) if net == f"resnet{depth}" else None
    final = lambda key: [run.curve(key)[1][-1] for run in group]
    best = [run.curve("test_error")[1].min() for run in group]
    params = f"{group[0].num_params / 1e6:.2f}M" if group[0].num_params else "-"
    steps = max(int(run.lines[-1]["step"]) for run in group)
    rows.append(f"| {net} | {depth} | {params} | {len(group)} | {steps} | {_percent(final('train_error'))} | "
                f"{_percent(final('test_error'))} | {_percent(best)} | {paper if paper else '-'} |")
  return "\n".join(rows)


def up_to_step(run: RunHistory, step: int | None) -> RunHistory:
  """The run as it stood after `step` steps (to compare runs of different lengths at equal steps)."""
  return run if step is None else dataclasses.replace(run, lines=[line for line in run.lines if line["step"] <= step])


def compare(sources: Sequence[str], out: str | None = None, step: int | None = None) -> dict[str, Any]:
  """Draws the runs' curves and writes their table; returns the paths written and the table."""
  runs = [up_to_step(run, step) for run in load_runs(sources)]
  runs = [run for run in runs if any("test_error" in line for line in run.lines)]
  if not runs:
    raise ValueError(f"No run in {list(sources)} has been evaluated yet (no test_error in metrics.jsonl).")
  out = out or os.path.join(sources[0] if os.path.isdir(sources[0]) else "runs", "compare")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  table = results_table(runs)
  with open(f"{out}.md", "w") as f:
    f.write(table + "\n")
  paths = save_figure(draw_error_curves(runs), f"{out}.png", f"{out}.pdf") + [f"{out}.md"]
  grad_norms = draw_grad_norms(runs)
  if grad_norms is not None:
    paths += save_figure(grad_norms, f"{out}_grad_norms.png")
  return {"table": table, "paths": paths, "runs": len(runs)}


def main(argv):
  cpu_conv.use_fast_xla_cpu_flags()
  if not FLAGS["verbosity"].present:  # orbax logs each restore at INFO; keep the console to results
    logging.set_verbosity(logging.WARNING)
  with validation.user_errors_as_messages(also=(FileNotFoundError, checkpoints.CorruptCheckpointError)):
    run(argv)


def run(argv):
  """eval.py's commands: compare, or evaluate a checkpoint."""
  if len(argv) > 1 and argv[1] == "compare":
    if len(argv) < 3:
      raise app.UsageError("compare needs run folders or wandb sweep paths, e.g. eval.py compare runs/plain_vs_residual")
    result = compare(argv[2:], FLAGS.out, FLAGS.step)
    print(result["table"])
    print(f"{result['runs']} runs compared; wrote " + ", ".join(result["paths"]))
    return
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("Give --workdir=<a run's workdir> to evaluate, or `compare <folders>`.")
  results = evaluate_checkpoint(FLAGS.workdir, FLAGS.step, FLAGS.train, FLAGS.num_devices, FLAGS.data_dir)
  print(f"{FLAGS.workdir} at step {results['step']} on {results['devices']} device(s):")
  for name in [k[:-len("_examples")] for k in results if k.endswith("_examples")]:
    spread = f" ± {100 * results[f'{name}_error_std']:.2f}" if f"{name}_error_std" in results else ""
    print(f"  {name:5s} loss {results[f'{name}_loss']:.4f}  error {100 * results[f'{name}_error']:.2f}%{spread}"
          f"  ({results[f'{name}_examples']} images)")
    for key in [k for k in results if k.startswith("seed") and k.endswith(f"/{name}_error")]:
      print(f"    {key.split('/')[0]:8s} error {100 * results[key]:.2f}%")


if __name__ == "__main__":
  app.run(main)
