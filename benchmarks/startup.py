"""Start-up time of train.py: a first start against a resume, which loads the compiled step
from JAX's persistent compilation cache (config.compilation_cache_dir).

    python -m benchmarks.startup                                   # ResNet-56, 3 rounds
    python -m benchmarks.startup --config=configs/resnet110.py --rounds=5

Each round starts train.py on a new workdir and an empty cache and stops it (SIGTERM, which
saves a checkpoint) as soon as it reports its first step; then starts the same command again,
which resumes from that checkpoint with the cache the first start filled. The figure is the
wall time from launching the process to the line "Step N done": imports, data, set-up,
restore, compilation or cache load, and one step. It prints every round, then the medians
and their ratio.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def first_step_seconds(command: list[str]) -> float:
  """Seconds from launching `command` (a train.py command line) until it reports its first
  step; then it is stopped with SIGTERM (it saves a checkpoint and exits)."""
  start = time.perf_counter()
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  seconds, output = None, []
  for line in process.stdout:
    output.append(line)
    if seconds is None and line.startswith("Step ") and " done " in line:
      seconds = time.perf_counter() - start
      process.send_signal(signal.SIGTERM)
  process.wait()
  if seconds is None:
    raise RuntimeError(f"{' '.join(command)} ended without reporting a step:\n{''.join(output[-20:])}")
  return seconds


def measure(train_command: list[str], rounds: int) -> tuple[list[float], list[float]]:
  """(first starts, resumes) in seconds, one of each per round, each round in a new folder."""
  firsts, resumes = [], []
  for r in range(rounds):
    folder = tempfile.mkdtemp(prefix="depthlab-startup-")
    try:
      command = [
        *train_command,
        f"--workdir={os.path.join(folder, 'run')}",
        f"--config.compilation_cache_dir={os.path.join(folder, 'cache')}",
      ]
      firsts.append(first_step_seconds(command))
      resumes.append(first_step_seconds(command))
    finally:
      shutil.rmtree(folder, ignore_errors=True)
    print(f"round {r + 1}/{rounds}: first start {firsts[-1]:.1f}s, resume {resumes[-1]:.1f}s", flush=True)
  return firsts, resumes


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/resnet56.py", help="the config train.py starts")
  parser.add_argument("--rounds", type=int, default=3)
  args = parser.parse_args(argv)
  env_cache = os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)  # it would win over each round's own cache
  if env_cache:
    print(f"(ignoring $JAX_COMPILATION_CACHE_DIR={env_cache}: each round uses an empty cache of its own)")
  train = [sys.executable, "train.py", f"--config={args.config}", "--config.wandb.mode=disabled"]
  firsts, resumes = measure(train, args.rounds)
  first, resume = statistics.median(firsts), statistics.median(resumes)
  print(
    f"median of {args.rounds}: first start {first:.1f}s, resume {resume:.1f}s; the resume takes {resume / first:.2f}x"
  )


if __name__ == "__main__":
  main()
