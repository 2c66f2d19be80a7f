"""Times the real train step of any config, and a PyTorch twin of it if asked.

    python -m benchmarks.bench --config=configs/resnet56.py
    python -m benchmarks.bench --config=configs/resnet20.py --config.dtype=bfloat16 --config.steps_per_dispatch=10
    python -m benchmarks.bench --config=configs/resnet20.py --config.num_seeds=4
    python -m benchmarks.bench --config=configs/resnet20.py --torch=all --out=bench.json

What is timed is train.py's own dispatch (`JaxStep`): `steps.steps_on_device` (the on-device
batch gathering, crop, flip and normalisation included; config.steps_per_dispatch steps of
config.num_seeds seeds) run on the devices by `parallel.DataParallel.parallelize`, through
the `trainer.Trainer` that train.py's loop drives, on a random uint8 training
set of CIFAR-10's shape (`--real_data`: the real one). After the first dispatch (which
compiles) and one untimed dispatch more, `--windows` windows of `--steps_per_window` steps
are timed and the medians reported. With `--torch`, each of our windows is followed by one
window of each PyTorch variant (benchmarks/torch_resnet.py, each in a process of its own),
so that a drift in the machine's speed reaches both sides alike, and the ratio
ours / PyTorch is taken per window.

Batch, dtype, steps per dispatch, seeds and devices are config fields: --config.batch_size,
--config.dtype, --config.steps_per_dispatch, --config.num_seeds, --config.num_devices,
--config.parallelism. Images/s count every seed's images. Results are printed as a table and written as
JSON with --out.
"""

import time

IMPORT_START = time.perf_counter()  # set before JAX and the repo load: importing them is start-up too

import dataclasses
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from typing import Any, Protocol

from absl import app, flags
import flax
import jax
import ml_collections
import numpy as np

from depthlab import cli, input_pipeline, naming, trainer, writers
from nets import cpu_conv

IMPORT_SECONDS = time.perf_counter() - IMPORT_START
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR_IMAGE_SHAPE = (32, 32, 3)
CIFAR_TRAIN_EXAMPLES = 50_000
OURS = "depthlab"
TORCH_INSTALL_HINT = "pip install -r benchmarks/requirements-torch.txt"
# The PyTorch variants: name -> (channels_last, bfloat16 autocast). "fp32" is NCHW in float32.
TORCH_VARIANTS = {"fp32": (False, False), "bf16": (False, True), "channels_last": (True, False)}

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Options:
  """How to time: everything that is not a config field."""

  windows: int = 5
  steps_per_window: int = 20
  torch_variants: tuple[str, ...] = ()  # names in TORCH_VARIANTS
  real_data: bool = False
  num_examples: int = CIFAR_TRAIN_EXAMPLES  # of the random training set
  warmup_seconds: float = 0.0  # untimed running after the first two dispatches: a GPU idles at low clocks

  def __post_init__(self):
    if self.windows < 1 or self.steps_per_window < 1:
      raise ValueError("--windows and --steps_per_window must be at least 1.")
    unknown = [v for v in self.torch_variants if v not in TORCH_VARIANTS]
    if unknown:
      raise ValueError(f"Unknown --torch variant(s) {unknown}; use some of {list(TORCH_VARIANTS)}, all or none.")


def define_flags(flag_values: flags.FlagValues = FLAGS, argv: list[str] | None = None) -> None:
  """The benchmark's command line; `argv` (the whole command line) replaces sys.argv for config overrides."""
  cli.define_config_flag(flag_values, argv)
  flags.DEFINE_integer("windows", Options.windows, "Timed windows; figures are their medians.", flag_values=flag_values)
  flags.DEFINE_integer(
    "steps_per_window", Options.steps_per_window, "Train steps in each timed window.", flag_values=flag_values
  )
  flags.DEFINE_list(
    "torch",
    [],
    "PyTorch variants timed alternately with ours: fp32, bf16 (autocast), "
    f"channels_last, all, or none. Needs PyTorch: {TORCH_INSTALL_HINT}.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "real_data",
    False,
    "Train on the config's dataset from TFDS instead of random images (loading it counts as start-up).",
    flag_values=flag_values,
  )
  flags.DEFINE_integer(
    "num_examples", CIFAR_TRAIN_EXAMPLES, "Size of the random training set.", flag_values=flag_values
  )
  flags.DEFINE_float(
    "warmup_seconds",
    Options.warmup_seconds,
    "Keep running untimed this long after the two warm-up dispatches, so that a GPU reaches its steady clocks.",
    flag_values=flag_values,
  )
  flags.DEFINE_string("out", None, "Also write the results as JSON to this file.", flag_values=flag_values)
  flags.mark_flags_as_required(["config"], flag_values=flag_values)


def options_from_flags(values: flags.FlagValues) -> Options:
  variants = tuple(TORCH_VARIANTS) if "all" in values.torch else tuple(v for v in values.torch if v != "none")
  return Options(
    values.windows, values.steps_per_window, variants, values.real_data, values.num_examples, values.warmup_seconds
  )


def parse_command_line(args: list[str]) -> tuple[ml_collections.ConfigDict, Options, str | None]:
  """The config, options and JSON path of `python -m benchmarks.bench <args>`."""
  values, argv = flags.FlagValues(), ["benchmarks/bench.py", *args]
  define_flags(values, argv)
  values(argv)
  return values.config, options_from_flags(values), values.out


# ------------------------------------------------------------------------------- our step


def random_dataset(num_examples: int, seed: int, num_classes: int = 10) -> input_pipeline.Dataset:
  """Uniform random uint8 images of CIFAR-10's shape and random labels: no download needed.

  The mean image is that of uniform pixels; the step's cost does not depend on its values.
  """
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (num_examples, *CIFAR_IMAGE_SHAPE), dtype=np.uint8)
  labels = rng.integers(0, num_classes, num_examples, dtype=np.int32)
  return input_pipeline.Dataset(
    train=input_pipeline.Split(images, labels),
    eval_splits={},
    mean_image=np.full(CIFAR_IMAGE_SHAPE, 0.5, np.float32),
    num_classes=num_classes,
  )


class Timed(Protocol):
  """One side of the comparison: runs `steps` train steps and returns the seconds they took."""

  def run(self, steps: int) -> float: ...


class JaxStep:
  """depthlab's train step (JAX) on the devices, through the Trainer that train.py's loop
  drives (the same state, on-device data and dispatches), ready to time."""

  def __init__(self, config: ml_collections.ConfigDict, options: Options):
    start = time.perf_counter()
    self.steps_per_dispatch = config.steps_per_dispatch
    if options.steps_per_window % self.steps_per_dispatch:
      raise ValueError(
        f"--steps_per_window={options.steps_per_window} is not a multiple of --config.steps_per_dispatch="
        f"{self.steps_per_dispatch}; a window is a whole number of dispatches."
      )
    self.trainer = trainer.Trainer(
      config,
      trainer.training_devices(config),
      dataset=None if options.real_data else random_dataset(options.num_examples, config.seed),
    )
    self.data_parallel = self.trainer.data_parallel
    self.num_classes = self.trainer.dataset.num_classes
    self.num_params = self.trainer.num_params
    self.metrics = None
    jax.block_until_ready((self.trainer.state, self.trainer.training_data[0]))  # startup: the data on the devices
    self.startup_seconds = time.perf_counter() - start

  @property
  def step(self) -> int:
    return self.trainer.step

  def run(self, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps // self.steps_per_dispatch):
      self.metrics = self.trainer.train(self.steps_per_dispatch)
    jax.block_until_ready((self.trainer.state, self.metrics))
    return time.perf_counter() - start

  def last_metrics(self) -> dict[str, float]:
    """Means over the last dispatch's steps and seeds."""
    return {k: float(np.mean(v)) for k, v in self.data_parallel.to_host(self.metrics).items()}

  def peak_device_bytes(self) -> int | None:
    """The largest peak allocation of our devices, where the backend reports it (GPU, TPU)."""
    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in self.data_parallel.local_devices]
    peaks = [p for p in peaks if p is not None]
    return max(peaks) if peaks else None


# ------------------------------------------------------------------------------ PyTorch side


def check_torch_installed() -> None:
  """Raises an ImportError that says how to install PyTorch where it is missing, without importing it."""
  if importlib.util.find_spec("torch") is None:
    raise ImportError(f"--torch needs PyTorch, an optional dependency: {TORCH_INSTALL_HINT}")


class TorchStep:
  """The PyTorch baseline (benchmarks/torch_resnet.py) in a process of its own, ready to time.

  Its own process, so that the two frameworks' thread pools, allocators and GPU memory pools
  never share one. On the 2-core CPU a PyTorch process, even an idle one, still costs our step
  5-15% (ResNet-56: 63-68 images/s alone, 56-58 beside it; cause not found), and the ratios
  include that, to our disadvantage. It runs on the GPU when ours does.
  """

  def __init__(self, variant: str, config: ml_collections.ConfigDict, num_classes: int):
    if config.model.name != "cifar_resnet":
      raise ValueError(f"The PyTorch baseline is the CIFAR ResNet only; model.name is {config.model.name!r}.")
    channels_last, bf16 = TORCH_VARIANTS[variant]
    self.process = subprocess.Popen(
      [sys.executable, "-m", "benchmarks.torch_resnet"],
      text=True,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      cwd=REPO,
    )
    built = self.ask(
      depth=config.model.depth,
      residual=config.model.residual,
      shortcut=config.model.shortcut,
      num_classes=num_classes,
      batch_size=config.batch_size,
      learning_rate=config.learning_rate,
      momentum=config.momentum,
      weight_decay=config.weight_decay,
      seed=config.seed,
      channels_last=channels_last,
      bf16=bf16,
      gpu=jax.default_backend() == "gpu",
    )
    self.device, self.num_params, self.version = built["device"], built["num_params"], built["version"]
    self.loss = None
    self.peak_bytes = None

  def ask(self, **request: Any) -> dict[str, Any]:
    self.process.stdin.write(json.dumps(request) + "\n")
    self.process.stdin.flush()
    answer = self.process.stdout.readline()
    if not answer:
      raise RuntimeError(f"The PyTorch process exited with status {self.process.wait()}; its error is above.")
    return json.loads(answer)

  def run(self, steps: int) -> float:
    ran = self.ask(steps=steps)
    self.loss, self.peak_bytes = ran["loss"], ran["peak_bytes"]
    return ran["seconds"]

  def peak_device_bytes(self) -> int | None:
    """The GPU memory its process allocated at the peak of its runs."""
    return self.peak_bytes

  def close(self) -> None:
    self.process.stdin.close()  # the end of its requests: it exits
    self.process.wait()


# ---------------------------------------------------------------------------- the benchmark


def peak_host_bytes() -> int:
  """This process's resident-memory high-water mark (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak if sys.platform == "darwin" else peak * 1024


def throughput(seconds: list[float], steps: int, batch_size: int) -> dict[str, Any]:
  """Images/s and ms/step of each window, and their medians."""
  windows = [{"images_per_sec": batch_size * steps / s, "ms_per_step": 1000 * s / steps} for s in seconds]
  return {
    "images_per_sec": statistics.median(w["images_per_sec"] for w in windows),
    "ms_per_step": statistics.median(w["ms_per_step"] for w in windows),
    "windows": windows,
  }


def warm_up(side: Timed, steps: int, seconds: float = 0.0) -> float:
  """Runs `steps` twice, then on for `seconds` more, untimed: the first compiles. Returns the first's seconds."""
  first = side.run(steps)
  warm = side.run(steps)
  while warm < seconds:
    warm += side.run(steps)
  return first


def run_benchmark(config: ml_collections.ConfigDict, options: Options) -> dict[str, Any]:
  """Times our step (and the PyTorch variants, alternately); returns what the JSON holds."""
  if options.torch_variants:
    check_torch_installed()  # now, not after compiling ours
  ours = JaxStep(config, options)
  first_dispatch = warm_up(ours, config.steps_per_dispatch, options.warmup_seconds)
  ours_peak_host = peak_host_bytes()
  baselines = {}
  try:
    for variant in options.torch_variants:
      baselines[variant] = TorchStep(variant, config, ours.num_classes)
    first_steps = {v: warm_up(b, 1, options.warmup_seconds / 4) for v, b in baselines.items()}
    seconds = {name: [] for name in [OURS, *baselines]}
    for _ in range(options.windows):
      seconds[OURS].append(ours.run(options.steps_per_window))
      for variant, baseline in baselines.items():
        seconds[variant].append(baseline.run(options.steps_per_window))
  finally:
    for baseline in baselines.values():
      baseline.close()

  measured = throughput(seconds[OURS], options.steps_per_window, config.batch_size * config.num_seeds)
  seconds_per_dispatch = measured["ms_per_step"] * config.steps_per_dispatch / 1000
  result = {
    "net": naming.net_name(config),
    "num_params": ours.num_params,
    "batch_size": config.batch_size,
    "dtype": config.dtype,
    "parallelism": config.parallelism,
    "steps_per_dispatch": config.steps_per_dispatch,
    "num_seeds": config.num_seeds,
    "seed_batching": config.seed_batching,
    "windows": options.windows,
    "steps_per_window": options.steps_per_window,
    "data": config.dataset.name if options.real_data else "random",
    "device": {
      "platform": jax.default_backend(),
      "kind": ours.data_parallel.devices[0].device_kind,
      "count": ours.data_parallel.count,
      "host_cpus": os.cpu_count(),
      "host": platform.node(),
    },
    "versions": {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__},
    "import_s": IMPORT_SECONDS,
    "startup_s": ours.startup_seconds,
    OURS: {
      **measured,
      "first_dispatch_s": first_dispatch,
      # The first dispatch traces, compiles and runs once; running is what a later one costs.
      "compile_s": max(first_dispatch - seconds_per_dispatch, 0.0),
      "peak_host_bytes": ours_peak_host,
      "peak_device_bytes": ours.peak_device_bytes(),
      "train_loss": ours.last_metrics()["train_loss"],
    },
    "total_steps": config.total_steps,
    "projected_total_s": config.total_steps * measured["ms_per_step"] / 1000,
    "torch": {},
  }
  for variant, baseline in baselines.items():
    theirs = throughput(seconds[variant], options.steps_per_window, config.batch_size)
    ratios = [s / ours_s for ours_s, s in zip(seconds[OURS], seconds[variant])]  # = images/s ratio
    result["versions"]["torch"] = baseline.version
    result["torch"][variant] = {
      **theirs,
      "device": baseline.device,
      "num_params": baseline.num_params,
      "first_step_s": first_steps[variant],
      "peak_device_bytes": baseline.peak_device_bytes(),
      "train_loss": float(baseline.loss),
      "ours_over_torch": ratios,
      "ours_over_torch_median": statistics.median(ratios),
    }
  result["process_peak_host_bytes"] = peak_host_bytes()
  return result


# --------------------------------------------------------------------------------- reporting


def format_bytes(count: int | None) -> str:
  return "n/a" if count is None else f"{count / 2**20:,.0f} MiB"


def format_table(result: dict[str, Any]) -> str:
  """The console report: per-window images/s of each side and the ratios, then the one-off costs."""
  device = result["device"]
  ours = result[OURS]
  lines = [
    f"{result['net']} ({result['num_params']:,} params) | batch {result['batch_size']} | "
    f"{result['dtype']} | {result['parallelism']} on {device['count']} x {device['kind']} | "
    f"{result['steps_per_dispatch']} step(s)/dispatch | {result['num_seeds']} seed(s) | {result['windows']} windows x "
    f"{result['steps_per_window']} steps | {result['data']} data"
  ]
  rows = [(f"{OURS} images/s", ours)] + [(f"torch {v} images/s", t) for v, t in result["torch"].items()]
  ratio_rows = [
    (f"  ours / torch {v}", t["ours_over_torch"], t["ours_over_torch_median"]) for v, t in result["torch"].items()
  ]
  label_width, width = max(len(label) for label, *_ in rows + ratio_rows) + 2, 10
  lines.append(
    f"{'':<{label_width}}"
    + "".join(f"{f'window {i + 1}':>{width}}" for i in range(result["windows"]))
    + f"{'median':>{width}}{'ms/step':>{width}}"
  )
  for label, side in rows:
    lines.append(
      f"{label:<{label_width}}"
      + "".join(f"{w['images_per_sec']:>{width}.1f}" for w in side["windows"])
      + f"{side['images_per_sec']:>{width}.1f}{side['ms_per_step']:>{width}.1f}"
    )
  for label, ratios, median in ratio_rows:
    lines.append(f"{label:<{label_width}}" + "".join(f"{r:>{width}.3f}" for r in ratios) + f"{median:>{width}.3f}")
  lines.append(
    f"start-up {result['startup_s']:.1f}s (+ imports {result['import_s']:.1f}s) | first dispatch "
    f"{ours['first_dispatch_s']:.1f}s, of which compilation ~{ours['compile_s']:.1f}s | peak host memory "
    f"{format_bytes(ours['peak_host_bytes'])} | peak device memory {format_bytes(ours['peak_device_bytes'])}"
  )
  lines.append(
    f"projected {result['total_steps']:,} steps at the median: "
    f"{writers.format_duration(result['projected_total_s'])} (train steps only)"
  )
  return "\n".join(lines)


def write_json(result: Any, path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cpu_conv.use_fast_xla_cpu_flags()
  result = run_benchmark(FLAGS.config, options_from_flags(FLAGS))
  print(format_table(result), flush=True)
  if FLAGS.out:
    write_json(result, FLAGS.out)
    print(f"Wrote {FLAGS.out}", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
