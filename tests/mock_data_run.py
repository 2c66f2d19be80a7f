"""Runs one of the repo's commands as a user types it, on TFDS's mock CIFAR-10 (random
images, 256 per split) instead of the real data: the entry points' tests, several hosts
included, run on a machine that has no CIFAR-10.

    python tests/mock_data_run.py train.py --config=configs/resnet20.py --workdir=W ...
    python tests/mock_data_run.py --sigterm_at_step=4 train.py ...

The command runs as `python <script> <args>` would run it (as __main__, its own flags and
start-up), inside `tfds.testing.mock_data`. `--sigterm_at_step=N`: the process sends itself
SIGTERM when the loop takes the means of the window that ends at step N, as a preempted
host would.
"""

import os
import runpy
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def send_sigterm_at(step: int) -> None:
  """Makes this process receive SIGTERM when the loop logs `step`."""
  from depthlab import actions

  window_means = actions.window_means

  def window_means_then_signal(window, data_parallel, at_step, *args):
    if at_step == step:
      os.kill(os.getpid(), signal.SIGTERM)
    return window_means(window, data_parallel, at_step, *args)

  actions.window_means = window_means_then_signal


def main() -> None:
  sys.path.insert(0, REPO)
  args = sys.argv[1:]
  if args and args[0].startswith("--sigterm_at_step="):
    send_sigterm_at(int(args.pop(0).split("=", 1)[1]))
  script = os.path.join(REPO, args[0])
  import tensorflow_datasets as tfds

  sys.argv = [script, *args[1:]]
  with tfds.testing.mock_data(num_examples=256):  # the mock_cifar10 fixture's data
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
  main()
