"""Evaluates a run's checkpoint, and compares runs as curves and a table.

    python eval.py --workdir=runs/resnet56               # the newest checkpoint
    python eval.py --workdir=runs/resnet56 --step=32000 --train
    python eval.py compare runs/plain_vs_residual        # every run below that folder
    python eval.py compare runs/a runs/b --out=docs/fig6 # any runs
    python eval.py compare my-team/depthlab/abc123xy     # a wandb sweep, read through wandb.Api()

Evaluating (depthlab/evaluation.py) reads the run's config.json, restores the checkpoint
onto this machine's devices (any number of them), prints loss and error and writes
<workdir>/eval_<step>.json.

Comparing (depthlab/figures.py) reads each run's metrics.jsonl and config.json and draws He
et al. 2015's Fig. 6 (training error dashed, test error solid, one colour per depth, plain
and residual nets side by side; PNG and PDF), writes a Markdown table in the form of the
paper's Table 6 (mean ± std where several seeds ran) with the verdict on Fig. 6's claims (each
net's errors at the end against the next depth's, and the residual net's against the plain
one's, over the seeds both ran), and, for runs with
config.log_grad_norms, a figure of each block's gradient norm from input to output. A run it
cannot compare (no test error yet, a missing or damaged config.json or metrics.jsonl) is named
on stderr with the reason, and left out.
"""

import contextlib
import os

from absl import app, flags, logging

from configs import default
from depthlab import cli, errors
from depthlab.figures import compare, counted
from nets import cpu_conv

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "The run's workdir (holds config.json and checkpoints/).")
flags.DEFINE_integer(
  "step",
  None,
  "The checkpoint's step; default: the newest. compare: compare the runs as they stood after this many steps.",
)
flags.DEFINE_bool("train", False, "Also evaluate the train split (no augmentation).")
flags.DEFINE_integer("num_devices", 0, "Local devices to evaluate on; 0: all.")
flags.DEFINE_string("data_dir", None, "TFDS data dir; default: the run's, else $TFDS_DATA_DIR.")
flags.DEFINE_string(
  "out", None, "compare: where the figures and table go, as a path without extension; default: <first folder>/compare."
)


def main(argv):
  cpu_conv.use_fast_xla_cpu_flags()
  if not FLAGS["verbosity"].present:  # orbax logs each restore at INFO; keep the console to results
    logging.set_verbosity(logging.WARNING)
  with cli.user_errors_as_messages(also=(FileNotFoundError, errors.CorruptCheckpointError, errors.RunFileError)):
    run(argv)


def run(argv):
  """eval.py's commands: compare, or evaluate a checkpoint."""
  if len(argv) > 1 and argv[1] == "compare":
    if len(argv) < 3:
      raise app.UsageError(
        "compare needs run folders or wandb sweep paths, e.g. eval.py compare runs/plain_vs_residual"
      )
    result = compare(argv[2:], FLAGS.out, FLAGS.step)  # prints each run it skips, and why
    print(result["report"], end="")
    untested = f" ({len(result['untested'])} with no test error yet: training error only)" if result["untested"] else ""
    skipped = f", {len(result['skipped'])} skipped (listed above)" if result["skipped"] else ""
    print(f"{counted(result['runs'], 'run')} compared{untested}{skipped}; wrote " + ", ".join(result["paths"]))
    return
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir:
    raise app.UsageError("Give --workdir=<a run's workdir> to evaluate, or `compare <folders>`.")
  evaluate()


def evaluate():
  """eval.py --workdir=...: one checkpoint's loss and error."""
  # Imported here, not at the top: `compare` then loads neither orbax nor the training side.
  from depthlab import checkpoints, distributed, workdir_lock
  from depthlab.trainer import evaluate_checkpoint

  # Before anything starts a JAX backend: the processes of a multi-host evaluation join first
  # (from $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and $JAX_PROCESS_ID, or srun / mpirun).
  distributed.maybe_initialize_distributed(default.get_config().distributed)
  holder = workdir_lock.holder(FLAGS.workdir)
  if holder:
    print(
      f"A run is training in {FLAGS.workdir} ({workdir_lock.describe(holder)}); evaluating a checkpoint it has "
      "saved, which leaves the run as it is.",
      flush=True,
    )
  # A run's workdir has a library.log: the libraries' messages go there, as in training.
  log = os.path.join(FLAGS.workdir, "library.log")
  with cli.libraries_logged_to(log) if checkpoints.has_checkpoints(FLAGS.workdir) else contextlib.nullcontext():
    results = evaluate_checkpoint(FLAGS.workdir, FLAGS.step, FLAGS.train, FLAGS.num_devices, FLAGS.data_dir)
  print(f"{FLAGS.workdir} at step {results['step']} on {results['devices']} device(s):")
  for name in [k[: -len("_examples")] for k in results if k.endswith("_examples")]:
    spread = f" ± {100 * results[f'{name}_error_std']:.2f}" if f"{name}_error_std" in results else ""
    print(
      f"  {name:5s} loss {results[f'{name}_loss']:.4f}  error {100 * results[f'{name}_error']:.2f}%{spread}"
      f"  ({results[f'{name}_examples']} images)"
    )
    for key in [k for k in results if k.startswith("seed") and k.endswith(f"/{name}_error")]:
      print(f"    {key.split('/')[0]:8s} error {100 * results[key]:.2f}%")


if __name__ == "__main__":
  app.run(main)
