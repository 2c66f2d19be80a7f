"""The first GPU lease's check, in a fixed time: environment, carried wheels, tests, benchmarks, summary.

    bash benchmarks/gpu_check.sh --dry-run     # here: the plan, in order, with its budget
    bash benchmarks/gpu_check.sh               # on the GPU: everything under $OUT as it goes

Stages run in PLAN's order, each stopped at its own limit and all within --budget_s
(420 s: 7 minutes of device time). The bench runs go most important first, all in one
process (a cold start each would cost ~10 s of imports), each skipped once the time left
is under its estimate, and each writes its JSON and a fresh summary.md the moment it
ends: a check cut short keeps everything it measured.

Under $OUT: env.txt, wheels.log, tests.log, bench.log, bench/<run>.json, summary.md,
results.json (every run's JSON in one list), summary.log, check.log (what ran, when, how it ended).
Only the standard library is imported here: the wheels that benchmarks/bench.py needs are installed by the check itself.
"""

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET_S = 420
SITE = "/tmp/depthlab-site"  # the carried wheels go here, ahead of the image's packages on PYTHONPATH
# Windows long enough to time a 2-13 ms step well, several of them for a median.
# A datacenter GPU reaches its boost clocks well within the 3 s of untimed running.
WINDOWS, STEPS_PER_WINDOW, WARMUP_S = 5, 50, 3.0

# One-device tests that exercise what a GPU changes: convolutions (patches vs lax at the
# 'highest' precision), the data order, the train loop and the bench itself.
TESTS = [
  "tests/test_cpu_conv.py::test_gradients_by_patches_equal_lax",
  "tests/test_cpu_conv.py::test_the_nets_convolutions_are_cpu_conv_s_through_flax_s_current_field",
  "tests/test_batches.py::test_batches_read_from_the_epochs_orders_are_today_s",
  "tests/test_trainer.py::test_dispatches_read_each_seed_s_batches_from_orders_computed_once_per_epoch",
  "tests/test_bench.py::test_bench_writes_json_with_the_expected_keys_and_positive_figures",
]


@dataclasses.dataclass(frozen=True)
class BenchRun:
  """One benchmarks/bench.py run; `compile_s` and `ms_per_step` are guesses for an H100/H200-class GPU."""

  depth: int
  dtype: str = "float32"
  dispatch: int = 1
  seeds: int = 1
  seed_batching: str = "auto"
  torch: bool = False

  @property
  def name(self) -> str:
    seeds = f"-seeds{self.seeds}-{self.seed_batching}" if self.seeds > 1 else ""
    return f"resnet{self.depth}-{self.dtype}-x{self.dispatch}{seeds}" + ("-torch" if self.torch else "")

  def args(self, out_dir: str) -> list[str]:
    return [
      f"--config={REPO}/configs/resnet{self.depth}.py",
      "--config.batch_size=128",
      f"--config.dtype={self.dtype}",
      f"--config.steps_per_dispatch={self.dispatch}",
      f"--config.num_seeds={self.seeds}",
      f"--config.seed_batching={self.seed_batching}",
      f"--windows={WINDOWS}",
      f"--steps_per_window={STEPS_PER_WINDOW}",
      f"--warmup_seconds={WARMUP_S}",
      f"--torch={'fp32' if self.torch else 'none'}",
      f"--out={out_dir}/bench/{self.name}.json",
    ]

  def estimate_s(self) -> float:
    """Start-up, compilation, warm-up and windows (PyTorch's three variants alike)."""
    compile_s = {20: 12, 56: 22, 110: 40}[self.depth] * (1.2 if self.dispatch > 1 else 1.0)
    ms_per_step = {20: 2.5, 56: 6.0, 110: 11.0}[self.depth] * (0.8 if self.dtype == "bfloat16" else 1.0)
    if self.seeds > 1:
      compile_s *= 1.5 if self.seed_batching == "vmap" else self.seeds
      ms_per_step *= self.seeds * 0.6
    timed = 2 * WINDOWS * STEPS_PER_WINDOW * ms_per_step / 1000  # and the untimed dispatches after compiling
    torch_s = 8 + WARMUP_S / 4 + 3 * timed if self.torch else 0.0  # its own process, cuDNN's autotuning
    return 3 + compile_s + WARMUP_S + timed + torch_s


# Most important first: what the ratios need (ResNet-56 fp32 against PyTorch, 10 steps
# per dispatch, 4 seeds in one step), every depth, bfloat16, the seeds' loop (it
# compiles 4 nets), then one step per dispatch for the rest.
BENCH_RUNS = [
  BenchRun(56, torch=True),
  BenchRun(56, dispatch=10),
  BenchRun(56, dispatch=10, seeds=4, seed_batching="vmap"),
  BenchRun(110, dispatch=10),
  BenchRun(20, dispatch=10),
  BenchRun(56, "bfloat16", dispatch=10),
  BenchRun(56, dispatch=10, seeds=4, seed_batching="loop"),
  BenchRun(110, "bfloat16", dispatch=10),
  BenchRun(20, "bfloat16", dispatch=10),
  BenchRun(56, "bfloat16"),
  BenchRun(110),
  BenchRun(20),
  BenchRun(110, "bfloat16"),
  BenchRun(20, "bfloat16"),
]


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  estimate_s: float
  limit_s: float  # stopped after this long (or when the budget ends, if sooner)
  command: list[str]
  log: str


def stages(out: str, wheels: str, python: str = sys.executable) -> list[Stage]:
  """The check's stages in order; the bench stage's runs are `BENCH_RUNS`."""
  env_report = "; ".join(
    [
      "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true",
      f"{python} --version",
      "uname -a",
      "nproc",
      "free -g",
      f"{python} -m pip list 2>/dev/null | grep -i -E 'jax|flax|optax|orbax|torch|numpy|nvidia-cudnn|protobuf' || true",
    ]
  )
  install = (
    f"ls {wheels}/*.whl >/dev/null 2>&1 || {{ echo 'no wheels in {wheels}: using the image as it is'; exit 0; }}; "
    f"{python} -m pip install --no-index --no-deps --quiet --target {SITE} {wheels}/*.whl"
  )
  imports = (
    f"{python} -c \"import jax; print('jax', jax.__version__, jax.devices()); from benchmarks import bench; "
    "print('bench imports')\""
  )
  return [
    Stage("env", 10, 30, ["bash", "-c", env_report], "env.txt"),
    Stage("wheels", 15, 60, ["bash", "-c", install], "wheels.log"),
    Stage("imports", 10, 60, ["bash", "-c", imports], "env.txt"),
    Stage("tests", 45, 90, [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], "tests.log"),
    Stage(
      "bench",
      sum(r.estimate_s() for r in BENCH_RUNS),
      BUDGET_S,
      [python, "-m", "benchmarks.gpu_check", "--bench_runs", f"--out={out}"],
      "bench.log",
    ),
    # Replaces the bench runs' own summary.md only when it has a table: with the device and sorted.
    Stage(
      "summary",
      5,
      30,
      [
        "bash",
        "-c",
        (
          f"ls {out}/bench/*.json >/dev/null 2>&1 || {{ echo 'no bench run finished'; exit 1; }}; "
          f"{python} -m benchmarks.bench_table {out}/bench/*.json --combined={out}/results.json "
          f"> {out}/summary.tmp && mv {out}/summary.tmp {out}/summary.md"
        ),
      ],
      "summary.log",
    ),
  ]


def plan(budget_s: float, out: str, wheels: str) -> tuple[list[tuple[str, float, float]], list[str]]:
  """What the check would run, in order: (name, start s, estimate s), and the bench runs it would skip.

  The bench stage gets what the others leave; its runs go in BENCH_RUNS's order while they fit.
  """
  steps, clock, dropped = [], 0.0, []
  fixed = sum(s.estimate_s for s in stages(out, wheels) if s.name != "bench")
  for stage in stages(out, wheels):
    if stage.name != "bench":
      steps.append((stage.name, clock, stage.estimate_s))
      clock += stage.estimate_s
      continue
    left = budget_s - fixed
    for run in BENCH_RUNS:
      if run.estimate_s() <= left:
        steps.append((f"bench {run.name}", clock, run.estimate_s()))
        clock += run.estimate_s()
        left -= run.estimate_s()
      else:
        dropped.append(run.name)
  return steps, dropped


def print_plan(budget_s: float, out: str, wheels: str) -> None:
  steps, dropped = plan(budget_s, out, wheels)
  print(f"Plan within {budget_s:.0f} s of device time (estimates for an H100/H200-class GPU):")
  for name, start, estimate in steps:
    print(f"  {start:5.0f} s  {name:<45} ~{estimate:.0f} s")
  total = sum(e for _, _, e in steps)
  print(f"planned total: {total:.0f} s of {budget_s:.0f} s budget")
  print(f"skipped unless time is left over: {', '.join(dropped) or 'none'}")
  print("Commands:")
  for stage in stages(out, wheels):
    print(f"  [{stage.name}] {' '.join(stage.command)}  > {out}/{stage.log}  (stopped after {stage.limit_s:.0f} s)")
  for run in BENCH_RUNS:
    print(f"  [bench {run.name}] benchmarks/bench.py {' '.join(run.args(out))}")


def log(out: str, message: str) -> None:
  line = f"{time.strftime('%H:%M:%S')} {message}"
  print(line, flush=True)
  with open(os.path.join(out, "check.log"), "a") as f:
    f.write(line + "\n")


def run_stage(stage: Stage, out: str, seconds_left: float) -> None:
  limit = min(stage.limit_s, seconds_left)
  log(out, f"{stage.name}: start (limit {limit:.0f} s)")
  start = time.perf_counter()
  with open(os.path.join(out, stage.log), "a") as f:
    try:
      done = subprocess.run(stage.command, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=limit)
      status = f"exit {done.returncode}"
    except subprocess.TimeoutExpired:
      status = f"stopped at its limit of {limit:.0f} s"
  log(out, f"{stage.name}: {status} after {time.perf_counter() - start:.0f} s")


def run_benches(out: str, deadline: float) -> None:
  """BENCH_RUNS in this process, each while its estimate fits before `deadline` (time.time())."""
  sys.path.insert(0, REPO)
  from nets import cpu_conv

  cpu_conv.use_fast_xla_cpu_flags()
  from benchmarks import (
    bench,
    bench_table,
  )

  os.makedirs(os.path.join(out, "bench"), exist_ok=True)
  results, runs = [], BENCH_RUNS
  if importlib.util.find_spec("torch") is None:
    log(out, "PyTorch is not installed: the runs go without the baseline")
    runs = [dataclasses.replace(r, torch=False) for r in runs]
  for run in runs:
    left = deadline - time.time()
    if run.estimate_s() > left:
      log(out, f"bench {run.name}: skipped, {left:.0f} s left for ~{run.estimate_s():.0f} s")
      continue
    log(out, f"bench {run.name}: start")
    start = time.perf_counter()
    try:
      config, options, path = bench.parse_command_line(run.args(out))
      result = bench.run_benchmark(config, options)
      bench.write_json(result, path)
      print(bench.format_table(result), flush=True)
      results.append(result)
      with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(bench_table.markdown_table(results) + "\n\n")
        f.write("\n".join(f"- {line}" for line in bench_table.key_ratios(results)) + "\n")
      log(
        out,
        f"bench {run.name}: done in {time.perf_counter() - start:.0f} s "
        f"({result[bench.OURS]['ms_per_step']:.2f} ms/step, compile {result[bench.OURS]['compile_s']:.0f} s)",
      )
    except Exception:
      traceback.print_exc()
      log(out, f"bench {run.name}: failed after {time.perf_counter() - start:.0f} s (traceback in bench.log)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dry_run", "--dry-run", action="store_true", help="print the plan and run nothing")
  parser.add_argument("--out", default=os.environ.get("OUT") or os.path.join(REPO, "runs", "gpu-check"))
  parser.add_argument("--wheels", default=os.path.join(REPO, ".whl"), help="the carried wheels' folder")
  parser.add_argument("--budget_s", type=float, default=BUDGET_S)
  parser.add_argument("--bench_runs", action="store_true", help=argparse.SUPPRESS)  # the bench stage's process
  parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.dry_run:
    print_plan(args.budget_s, args.out, args.wheels)
    return
  os.makedirs(args.out, exist_ok=True)
  if args.bench_runs:
    run_benches(args.out, args.deadline or time.time() + args.budget_s)
    return
  # Both reach every stage's process: JAX must not hold 75% of the GPU (PyTorch shares it),
  # and the carried packages come first.
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  os.environ["PYTHONPATH"] = os.pathsep.join([SITE, REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p])
  start = time.time()
  deadline = start + args.budget_s - 5  # the summary's few seconds
  for stage in stages(args.out, args.wheels):
    if stage.name == "bench":
      stage = dataclasses.replace(stage, command=[*stage.command, f"--deadline={deadline - 5}"])
    left = (start + args.budget_s) - time.time()
    if left < 5:
      log(args.out, f"{stage.name}: skipped, budget spent")
      continue
    run_stage(stage, args.out, left)
  log(args.out, f"check done in {time.time() - start:.0f} s; summary in {args.out}/summary.md")


if __name__ == "__main__":
  main()
