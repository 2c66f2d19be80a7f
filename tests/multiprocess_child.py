"""One process of a multi-process test run: train.py's loop on TFDS mock data, on fake CPU devices.

    python tests/multiprocess_child.py CONFIG_JSON WORKDIR --devices=2 \
        --num_processes=2 --process_id=0 --coordinator=localhost:PORT

tests/test_parallel.py starts one of these per process (see `launch` there). The config
comes as JSON so that every process trains exactly the config the test built.
"""

import argparse
import json
import os
import signal
import sys


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser()
  parser.add_argument("config_json")
  parser.add_argument("workdir")
  parser.add_argument("--devices", type=int, required=True, help="fake CPU devices of this process")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--coordinator", default=None, help="host:port of process 0")
  parser.add_argument(
    "--sigterm_at_step", type=int, default=0, help="this process sends itself SIGTERM when it logs this step (0: never)"
  )
  return parser.parse_args()


def send_sigterm_at(step: int) -> None:
  """Makes this process receive SIGTERM when the loop takes the means of the window ending at
  `step`, as a preempted host would."""
  from depthlab import loop  # pylint: disable=g-import-not-at-top

  window_means = loop.window_means

  def window_means_then_signal(window, data_parallel, at_step, *args):
    if at_step == step:
      os.kill(os.getpid(), signal.SIGTERM)
    return window_means(window, data_parallel, at_step, *args)

  loop.window_means = window_means_then_signal


def main() -> None:
  args = parse_args()
  # Before JAX starts: its CPU device count is fixed when the backend comes up.
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from depthlab import loop  # pylint: disable=g-import-not-at-top

  with open(args.config_json) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if args.num_processes > 1:
    config.distributed.initialize = True
    config.distributed.coordinator_address = args.coordinator
    config.distributed.num_processes = args.num_processes
    config.distributed.process_id = args.process_id
  if args.sigterm_at_step:
    send_sigterm_at(args.sigterm_at_step)
  with tfds.testing.mock_data(num_examples=256):  # the mock_cifar10 fixture's data
    loop.train_and_evaluate(config, args.workdir)


if __name__ == "__main__":
  main()
