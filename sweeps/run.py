"""Runs the runs of a wandb sweep file on this machine, without a wandb server.

    python sweeps/run.py sweeps/plain_vs_residual.yaml              # one run at a time
    python sweeps/run.py sweeps/plain_vs_residual.yaml --parallel 4 # e.g. one per GPU
    python sweeps/run.py sweeps/seeds.yaml --dry_run                # print the commands
    python sweeps/run.py sweeps/fig6_4k.yaml --runs=plain20,resnet20  # only these runs, here

wandb cannot create or run a sweep without its server, so this runner reads the same YAML,
expands its `grid` (or `random`) parameters itself and builds each run's command exactly as
`wandb agent` does (the sweep's `command` with ${env}, ${interpreter}, ${program} and
${args} filled in). Run it from the repository root, like the agent.

Every run trains in the workdir train.py derives from its parameters
(runs/<experiment>/<run name>): finished runs are skipped, interrupted ones resume from
their checkpoints. Each run's output goes to <workdir>/train.log. Runs are spread over the
GPUs (CUDA_VISIBLE_DEVICES, one or more runs per GPU); on a CPU-only machine parallel runs
split the cores between them. wandb writes offline files (sync them later with
`wandb sync <workdir>/wandb/offline-run-*`) unless WANDB_MODE says otherwise.

SIGTERM and SIGINT (Ctrl-C) are passed on to the runs, which save a checkpoint and exit; no
new run starts. A run stopped so is "stopped by signal N (resumable)", not failed, and the
runner then exits as train.py does, with 128 + N (with 1 if a run failed).
"""

import argparse
import collections
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from depthlab import (
  checkpoints,
  cli,
  errors,
  naming,
  run_files,
  validation,
  workdir_lock,
  writers,
)

# The agent's command when a sweep file names none.
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")


# The keys of a wandb sweep file, and of one parameter's spec.
SWEEP_KEYS = (
  "program",
  "method",
  "parameters",
  "name",
  "description",
  "command",
  "metric",
  "early_terminate",
  "run_cap",
  "project",
  "entity",
  "controller",
  "job",
)
PARAMETER_KEYS = ("value", "values", "distribution", "min", "max", "mu", "sigma", "q", "probabilities", "parameters")


def load_sweep(path: str) -> dict[str, Any]:
  """A sweep file's contents, checked for what this runner needs: a ConfigError lists every
  problem of its layout (the runs' configs are checked by `plan`)."""
  try:
    with open(path, "rb") as f:  # as bytes: yaml decodes them, with a ReaderError if they are not text
      sweep = yaml.safe_load(f)
  except OSError as e:
    raise errors.ConfigError([f"{path}: cannot read it ({e.strerror})."], "The sweep") from e
  except yaml.reader.ReaderError as e:
    raise errors.ConfigError(
      [f"{path}: not a text file; give a sweep YAML such as sweeps/fig6_reduced.yaml."], "The sweep"
    ) from e
  except yaml.YAMLError as e:
    raise errors.ConfigError(
      [f"{path}: not valid YAML ({str(e).splitlines()[0]} {getattr(e, 'problem_mark', '') or ''})".strip()], "The sweep"
    ) from e
  problems = sweep_problems(sweep)
  if problems:
    raise errors.ConfigError(problems, f"The sweep file {path}")
  sweep.setdefault("name", os.path.splitext(os.path.basename(path))[0])
  return sweep


def sweep_problems(sweep: Any) -> list[str]:
  """What is wrong with a sweep file's layout, each with its fix."""
  if not isinstance(sweep, dict):
    found = "nothing" if sweep is None else "a list" if isinstance(sweep, list) else f"just {str(sweep)[:40]!r}"
    return [
      f"it holds {found}, not a mapping of program, method and parameters; give a sweep YAML such as "
      "sweeps/fig6_reduced.yaml."
    ]
  problems = [
    f"'{key}' is missing; a sweep file needs it." for key in ("program", "method", "parameters") if key not in sweep
  ]
  problems += [
    f"'{key}': unknown key.{validation.did_you_mean(key, list(SWEEP_KEYS))}" for key in sweep if key not in SWEEP_KEYS
  ]
  if "method" in sweep and sweep["method"] not in ("grid", "random", "bayes"):
    problems.append(f"method {sweep['method']!r}: use grid or random (bayes needs wandb's server).")
  parameters = sweep.get("parameters", {})
  if not isinstance(parameters, dict):
    return problems + ["parameters: must map each parameter to a spec such as {values: [...]}."]
  for name, spec in parameters.items():
    if not isinstance(spec, dict):
      problems.append(
        f"parameters.{name}: {spec!r} is a plain value; write it as {{value: {spec!r}}} "
        "(or {values: [...]} for several)."
      )
      continue
    problems += [
      f"parameters.{name}.{key}: unknown key.{validation.did_you_mean(key, list(PARAMETER_KEYS))}"
      for key in spec
      if key not in PARAMETER_KEYS
    ]
    if "values" in spec and not isinstance(spec["values"], list):
      problems.append(f"parameters.{name}.values: must be a list, e.g. [20, 56]; got {spec['values']!r}.")
    if sweep.get("method") == "grid" and not {"value", "values"} & set(spec):
      problems.append(f"parameters.{name}: a grid sweep needs value or values.")
  return problems


def _grid_values(name: str, spec: dict[str, Any]) -> list[Any]:
  if "value" in spec:
    return [spec["value"]]
  if "values" in spec:
    return list(spec["values"])
  raise ValueError(f"Parameter {name}: a grid sweep needs 'value' or 'values', got {sorted(spec)}.")


def _sample(name: str, spec: dict[str, Any], rng: random.Random) -> Any:
  """One value of a random sweep's parameter, drawn as wandb draws it."""
  if "value" in spec:
    return spec["value"]
  if "values" in spec:
    return rng.choice(spec["values"])
  distribution = spec.get("distribution", "int_uniform" if isinstance(spec.get("min"), int) else "uniform")
  low, high = spec.get("min"), spec.get("max")
  if distribution == "uniform":
    return rng.uniform(low, high)
  if distribution == "int_uniform":
    return rng.randint(low, high)
  if distribution == "log_uniform_values":
    return math.exp(rng.uniform(math.log(low), math.log(high)))
  raise ValueError(
    f"Parameter {name}: distribution {distribution!r} is not supported here; "
    "use values, uniform, int_uniform or log_uniform_values."
  )


def expand(sweep: dict[str, Any], count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
  """The parameters of every run of the sweep, in the order the runs start.

  `grid`: every combination, in the order of wandb's grid engine: the parameters sorted by
  name, the first varying slowest (tests/wandb_grid_orders.json holds its order for each sweep
  file). `random`: `count` runs (default: the sweep's run_cap) drawn with a seeded generator.
  """
  parameters = sweep["parameters"]
  for name, spec in parameters.items():
    if "parameters" in spec:
      raise ValueError(f"Parameter {name}: nested parameters are not supported by this runner.")
  if sweep["method"] == "grid":
    names = sorted(parameters)
    grid = itertools.product(*(_grid_values(n, parameters[n]) for n in names))
    runs = [{n: dict(zip(names, values))[n] for n in parameters} for values in grid]  # the file's order
    return runs[:count] if count else runs
  if sweep["method"] == "random":
    count = count or sweep.get("run_cap")
    if not count:
      raise ValueError("A random sweep needs --count (or run_cap in the sweep file).")
    rng = random.Random(seed)
    return [{n: _sample(n, s, rng) for n, s in parameters.items()} for _ in range(count)]
  raise ValueError(
    f"Sweep method {sweep['method']!r} needs wandb's server: run it with `wandb sweep` "
    "and `wandb agent`, or use method grid or random here."
  )


def agent_args(params: dict[str, Any]) -> dict[str, list[str]]:
  """The argument lists `wandb agent` substitutes for ${args} and its variants."""
  return {
    "args": [f"--{k}={v}" for k, v in params.items()],
    "args_no_hyphens": [f"{k}={v}" for k, v in params.items()],
    "args_no_boolean_flags": [f"--{k}" if v is True else f"--{k}={v}" for k, v in params.items() if v is not False],
    "args_json": [json.dumps(params)],
  }


def command_line(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
  """The command `wandb agent` runs for these parameters.

  ${interpreter} is the Python running this script (the agent's is `python` on PATH), so a
  virtual environment carries over.
  """
  macros = {
    "env": ["/usr/bin/env"],
    "interpreter": [sys.executable],
    "program": [sweep["program"]],
    **agent_args(params),
  }
  command = []
  for item in sweep.get("command", DEFAULT_COMMAND):
    item = str(item)
    if item.startswith("${envvar:") and item.endswith("}"):
      command.append(os.environ.get(item[len("${envvar:") : -1], ""))
    elif item.startswith("${") and item.endswith("}"):
      if item[2:-1] not in macros:
        raise ValueError(f"The sweep's command uses {item}, which this runner does not provide.")
      command += macros[item[2:-1]]
    else:
      command.append(item)
  return command


def train_args(sweep: dict[str, Any], command: list[str]) -> list[str]:
  """The part of a run's command that train.py parses (what follows the program)."""
  return command[command.index(sweep["program"]) + 1 :]


def accelerators() -> list[str]:
  """The GPUs runs can be pinned to: $CUDA_VISIBLE_DEVICES, else those nvidia-smi lists."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [d for d in visible.split(",") if d.strip()]
  if not shutil.which("nvidia-smi"):
    return []
  listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
  return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def slot_settings(slot: int, parallel: int, gpus: list[str]) -> tuple[dict[str, str], set[int] | None]:
  """Environment and CPU cores for the slot-th of `parallel` concurrent runs.

  With GPUs, slots take them in turn (several runs on one GPU if parallel exceeds them:
  memory preallocation is then turned off, or the first run would claim it all). Without,
  the cores are split between the slots.
  """
  if gpus:
    env = {"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]}
    if parallel > len(gpus):
      env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env, None
  if parallel == 1:
    return {}, None
  cores = sorted(os.sched_getaffinity(0))
  share = max(1, len(cores) // parallel)
  start = (slot * share) % len(cores)
  return {}, set(cores[start : start + share])


class Run:
  """One run of the sweep: its command, workdir and outcome."""

  def __init__(self, index: int, params: dict[str, Any], command: list[str], config: Any, workdir: str):
    self.index, self.params, self.command = index, params, command
    self.config, self.workdir = config, workdir
    self.name = naming.run_name(config)
    self.status, self.process = "pending", None
    self.started, self.seconds = 0.0, 0.0  # perf_counter at start; wall time once it ended

  @property
  def log_path(self) -> str:
    return os.path.join(self.workdir, "train.log")


def plan(sweep: dict[str, Any], count: int | None = None, seed: int = 0) -> list[Run]:
  """The sweep's runs with their commands and workdirs. train.py's parser and config
  validation check each run; a ConfigError lists every problem of every run, so that none
  starts before all are right."""
  runs, workdirs, problems = [], {}, []
  for i, params in enumerate(expand(sweep, count, seed)):
    command = command_line(sweep, params)
    try:
      config, workdir = cli.parse_command_line(train_args(sweep, command))
      validation.validate_config(config, workdir)
    except errors.ConfigError as e:
      problems += [
        f"run {i + 1} ({' '.join(agent_args(params)['args'])}): {p}"
        for p in e.problems
        if not any(p in seen for seen in problems)
      ]  # one report of a problem all runs share
      continue
    if workdir in workdirs:
      problems.append(
        f"runs {workdirs[workdir] + 1} and {i + 1} would share the workdir {workdir}: give the "
        "parameters that tell them apart a place in depthlab/naming.py run_name, or set config.experiment."
      )
    workdirs[workdir] = i
    runs.append(Run(i, params, command, config, workdir))
  if problems:
    raise errors.ConfigError(problems, "The sweep")
  return runs


def only_named(runs: list[Run], names: str) -> list[Run]:
  """The runs named in `names` (comma-separated run names, as their workdirs end), in the
  sweep's order; all of them if `names` is empty. A name the sweep lacks is a ConfigError that
  lists the sweep's names."""
  wanted = [name.strip() for name in names.split(",") if name.strip()]
  if not wanted:
    return runs
  known = [os.path.basename(run.workdir) for run in runs]
  unknown = [name for name in wanted if name not in known]
  if unknown:
    raise errors.ConfigError(
      [f"--runs names {', '.join(unknown)}, which the sweep does not have: its runs are {', '.join(known)}."],
      "The sweep",
    )
  return [run for run, name in zip(runs, known) if name in wanted]


def _pump(stream, log_path: str, echo: bool) -> None:
  """Copies a run's output to its log file (and to the console when runs go one at a time)."""
  with open(log_path, "a", buffering=1) as log:
    for line in stream:
      log.write(line)
      if echo:
        sys.stdout.write(line)
        sys.stdout.flush()


def start(run: Run, env: dict[str, str], cores: set[int] | None, echo: bool) -> threading.Thread:
  os.makedirs(run.workdir, exist_ok=True)
  run.process = subprocess.Popen(
    run.command,
    env={**os.environ, **env},
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None,
  )
  run.status, run.started = "running", time.perf_counter()
  pump = threading.Thread(target=_pump, args=(run.process.stdout, run.log_path, echo), daemon=True)
  pump.start()
  return pump


def final_line(workdir: str) -> dict[str, float]:
  """The last metrics line of a run's metrics.jsonl with a test error, or {}."""
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return {}
  try:
    lines = run_files.read_metrics(workdir)
  except errors.MetricsFileError as e:  # one damaged run leaves the others' table
    print(e, file=sys.stderr, flush=True)
    return {}
  evaluated = [line for line in lines if "test_error" in line]
  return evaluated[-1] if evaluated else {}


def summary_table(runs: list[Run]) -> str:
  """A Markdown table of the runs' outcomes."""
  rows = ["| run | status | steps | train error | test error | time | workdir |", "|---|---|---|---|---|---|---|"]
  for run in runs:
    line = final_line(run.workdir)
    percent = lambda k, line=line: f"{100 * line[k]:.2f}%" if k in line else "-"
    rows.append(
      f"| {run.name} | {run.status} | {int(line.get('step', 0))} | {percent('train_error')} | "
      f"{percent('test_error')} | {writers.format_duration(run.seconds) if run.seconds else '-'} | "
      f"{run.workdir} |"
    )
  return "\n".join(rows)


def stop_signal(returncode: int) -> int:
  """The signal that stopped a run which resumes as it stands, else 0: train.py exits with
  128 + the number of SIGTERM or SIGINT once its checkpoint is saved (or dies of the signal,
  -number, if it comes before train.py handles it: it then resumes from its last checkpoint)."""
  signum = returncode - 128 if returncode > 128 else -returncode
  return signum if signum in checkpoints.PreemptionSignal.SIGNALS else 0


def outcome(returncode: int) -> str:
  """A run's status from its exit code: done, stopped by a signal (resumable), or failed."""
  signum = stop_signal(returncode)
  if returncode == 0:
    return "done"
  if signum:
    return f"stopped by signal {signum} (resumable: run the same command again)"
  return f"failed (exit {returncode})"


OUTCOMES = ("done", "finished before", "in progress elsewhere", "stopped", "failed", "not started")


def outcome_counts(runs: list[Run]) -> str:
  """One line: how many runs ended each way, and what to do if some are left."""
  kinds = collections.Counter(next((o for o in OUTCOMES if run.status.startswith(o)), run.status) for run in runs)
  line = "Runs: " + ", ".join(f"{count} {kind}" for kind, count in kinds.items()) + "."
  if kinds["stopped"] or kinds["not started"]:
    line += " Run the same command again to carry on (finished runs are skipped)."
  return line


def exit_status(runs: list[Run], signum: int) -> int:
  """1 if a run failed; else, if the sweep or one of its runs was stopped by a signal, 128 +
  its number, as train.py exits (a scheduler sees a preempted job); else 0."""
  if any(run.status.startswith("failed") for run in runs):
    return cli.EXIT_FAILURE
  stopped = [stop_signal(run.process.returncode) for run in runs if run.status.startswith("stopped")]
  signum = signum or (stopped[0] if stopped else 0)
  return 128 + signum if signum else 0


def run_sweep(runs: list[Run], parallel: int = 1, gpus: list[str] | None = None) -> int:
  """Runs what is not finished, `parallel` at a time, and sets each run's status; returns the
  signal that stopped the sweep (SIGTERM or SIGINT, passed on to its runs), or 0."""
  gpus = accelerators() if gpus is None else gpus
  # "[k/n]" counts the runs this call was given (a --runs subset included), not the sweep's.
  position = {run.index: f"[{k + 1}/{len(runs)}]" for k, run in enumerate(runs)}
  todo = []
  for run in runs:
    final, holder = checkpoints.final_metrics(run.workdir), workdir_lock.holder(run.workdir)
    if final and final["step"] >= run.config.total_steps:
      run.status = "finished before"
      print(f"{position[run.index]} {run.name}: finished before, skipped ({run.workdir})", flush=True)
    elif holder:  # another runner, agent or job trains it: train.py would be refused
      run.status = f"in progress elsewhere ({workdir_lock.describe(holder)})"
      print(f"{position[run.index]} {run.name}: {run.status}, skipped", flush=True)
    else:
      todo.append(run)
  # A sweep resumed near its end may have fewer runs left than slots: the cores are then split
  # between those runs only, not left idle for the ones that finished before.
  parallel = max(1, min(parallel, len(todo)))
  stop = {"signum": 0}

  def forward(signum, frame):
    stop["signum"] = signum  # the runs checkpoint and exit; no new ones start
    for run in todo:
      if run.process and run.process.poll() is None:
        run.process.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  free_slots, active = list(range(parallel)), {}
  try:
    queue = list(todo)
    while queue or active:
      while queue and free_slots and not stop["signum"]:
        run, slot = queue.pop(0), free_slots.pop(0)
        env, cores = slot_settings(slot, parallel, gpus)
        pump = start(run, env, cores, echo=parallel == 1)
        active[run.index] = (run, slot, pump)
        where = (
          f" on GPU {env['CUDA_VISIBLE_DEVICES']}"
          if "CUDA_VISIBLE_DEVICES" in env
          else (f" on cores {sorted(cores)}" if cores else "")
        )
        print(f"{position[run.index]} {run.name}: started{where}; log {run.log_path}", flush=True)
      if stop["signum"] and not active:
        break
      time.sleep(0.2)
      for index, (run, slot, pump) in list(active.items()):
        if run.process.poll() is None:
          continue
        pump.join()
        run.seconds = time.perf_counter() - run.started
        run.status = outcome(run.process.returncode)
        line = final_line(run.workdir)
        result = f", test error {100 * line['test_error']:.2f}%" if "test_error" in line else ""
        print(
          f"{position[run.index]} {run.name}: {run.status} after {writers.format_duration(run.seconds)}{result}",
          flush=True,
        )
        del active[index]
        free_slots.append(slot)
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  for run in queue if stop["signum"] else []:
    run.status = "not started"
  return stop["signum"]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("sweep", help="A sweep file, e.g. sweeps/plain_vs_residual.yaml.")
  parser.add_argument("--parallel", type=int, default=1, help="Runs at a time (default 1).")
  parser.add_argument(
    "--gpus", default=None, help="Comma-separated GPU ids to spread runs over; default: all visible; '' for none."
  )
  parser.add_argument("--count", type=int, default=None, help="Only the first N runs (random sweeps: N draws).")
  parser.add_argument("--seed", type=int, default=0, help="Seeds a random sweep's draws.")
  parser.add_argument(
    "--runs", default="", help="Only the runs of these names (comma-separated, e.g. plain20,resnet20); default: all."
  )
  parser.add_argument("--dry_run", action="store_true", help="Print each run's command and workdir; run nothing.")
  parser.add_argument("--debug", action="store_true", help="Show Python tracebacks of sweep file problems too.")
  args = parser.parse_args(argv)
  with cli.user_errors_as_messages(args.debug, also=(ValueError,)):  # expand's: method, count
    return run_sweep_file(parser, args)


def run_sweep_file(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
  """What main does once the arguments are parsed."""
  if args.parallel < 1:
    parser.error("--parallel must be at least 1.")
  sweep = load_sweep(args.sweep)
  if not os.path.exists(sweep["program"]):
    parser.error(f"{sweep['program']} not found here: run this from the repository root, like `wandb agent`.")
  runs = only_named(plan(sweep, args.count, args.seed), args.runs)
  if args.dry_run:
    for run in runs:
      print(f"{run.workdir}: {' '.join(run.command)}")
    return 0
  os.environ.setdefault("WANDB_MODE", "offline")  # no server: write files to sync later
  gpus = None if args.gpus is None else [g for g in args.gpus.split(",") if g.strip()]
  print(f"Sweep {sweep['name']}: {len(runs)} runs, up to {args.parallel} at a time.", flush=True)
  signum = run_sweep(runs, args.parallel, gpus)
  print("\n" + summary_table(runs), flush=True)
  print(outcome_counts(runs), flush=True)
  return exit_status(runs, signum)


if __name__ == "__main__":
  sys.exit(main())
