"""Trains a network from nets/ on CIFAR-10 as a config from configs/ describes.

    python train.py --config=configs/resnet56.py
    python train.py --config=configs/plain56.py --config.total_steps=2000 --workdir=runs/plain56

The command line only: its flags are depthlab/cli.py's, the run is depthlab/loop.py's
train_and_evaluate. The step is written once for one device (depthlab/steps.py) and run on
all devices by parallel.DataParallel (pmap or jit + shard_map). The training split lives on
every device as uint8; each step gathers, augments and normalises its own slice of the
global batch on the device, so the host only dispatches.
"""

import contextlib
import os

from absl import app, logging
import jax

from depthlab import checkpoints, cli, distributed, trainer, validation, workdir_lock
from depthlab.loop import train_and_evaluate
from depthlab.naming import default_workdir
from nets import cpu_conv

FLAGS = cli.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cpu_conv.use_fast_xla_cpu_flags()
  if not FLAGS["verbosity"].present:  # orbax logs each save at INFO; keep the console to progress
    logging.set_verbosity(logging.WARNING)
  config = FLAGS.config
  workdir = FLAGS.workdir or default_workdir(config)
  with cli.user_errors_as_messages(FLAGS.debug, also=cli.RUN_ERRORS):
    validation.validate_config(config, workdir)
    trainer.use_compilation_cache(config.compilation_cache_dir)
    # Before anything starts a JAX backend: the processes of a multi-host run join first.
    distributed.maybe_initialize_distributed(config.distributed)
    # What can be refused is refused before anything is written or loaded.
    data_parallel = trainer.training_devices(config, workdir)
    checkpoints.check_resumable(config, workdir)
    with workdir_lock.hold(workdir):
      with (
        cli.libraries_logged_to(os.path.join(workdir, "library.log"))
        if jax.process_index() == 0
        else contextlib.nullcontext()
      ):
        train_and_evaluate(config, workdir, data_parallel)


if __name__ == "__main__":
  cli.define_flags()
  app.run(main, flags_parser=cli.parse_flags_or_exit)
