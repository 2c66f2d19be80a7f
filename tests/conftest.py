"""Eight fake CPU devices for every test (set before JAX starts), and shared fixtures.

On a GPU or TPU the tests run on its devices: those that need more devices than there
are, or results only a CPU gives (bitwise equal runs, the CPU's own code paths), skip
with the reason; float32 comparisons keep the CPU's tolerances by running convolutions
and matmuls at ACCELERATOR_PRECISION instead of TF32 or bfloat16 passes.
"""

import os
import sys

os.environ["XLA_FLAGS"] = " ".join(
  [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]
).strip()
# On a GPU, JAX would hold 75% of its memory from the start in this process, starving
# the tests' subprocesses (train.py runs, PyTorch twins); inherited by them all.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import pytest
import tensorflow_datasets as tfds

from configs import default
from depthlab import cli, run_files
import nets

# Many tests compile the same tiny train step; compile it once per machine.
jax.config.update(
  "jax_compilation_cache_dir",
  os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "depthlab", "jax-test-cache"),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

ON_CPU = jax.default_backend() == "cpu"
ACCELERATOR_PRECISION = "highest"  # float32 passes: comparisons hold at the CPU's tolerances
if not ON_CPU:
  jax.config.update("jax_default_matmul_precision", ACCELERATOR_PRECISION)

requires_cpu = pytest.mark.skipif(
  not ON_CPU, reason=f"the default backend is {jax.default_backend()}: the test checks what only the CPU gives"
)


def parse_flags(*argv: str):
  """The config that `python train.py <argv>` trains with."""
  return cli.parse_command_line(list(argv))[0]


def contents(folder) -> dict[str, bytes]:
  """Every file below `folder` and its bytes: what a command must leave as it was."""
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# The CIFAR ResNets' parameter counts (option A shortcuts), from the paper's Table 6.
PAPER_COUNTS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


def cifar_resnet_params(**kwargs) -> int:
  """The parameter count of nets.create("cifar_resnet", **kwargs), without initialising it."""
  model = nets.create("cifar_resnet", **kwargs)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  return nets.count_params(variables["params"])


def requires_devices(count: int) -> pytest.MarkDecorator:
  """Skips a test that trains on `count` devices where there are fewer (one GPU, not 8 fake CPUs)."""
  return pytest.mark.skipif(
    jax.device_count() < count,
    reason=f"needs {count} devices; the {jax.default_backend()} backend has {jax.device_count()}",
  )


def real_cifar10_dir() -> str | None:
  """$TFDS_DATA_DIR if it holds a prepared cifar10, else None."""
  data_dir = os.environ.get("TFDS_DATA_DIR")
  if data_dir and os.path.isdir(os.path.join(data_dir, "cifar10")):
    return data_dir
  return None


requires_cifar10 = pytest.mark.skipif(
  real_cifar10_dir() is None, reason="TFDS_DATA_DIR does not hold a prepared cifar10"
)


@pytest.fixture(scope="session")
def real_cache_dir(tmp_path_factory):
  """One decoded-array cache for the real-data tests of a session (decoding takes ~35 s), shared by
  pytest-xdist's workers: each writes the cache atomically, so the second to start reads it."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent  # the run's folder, above each worker's own
  path = base / "cifar10-cache"
  path.mkdir(exist_ok=True)
  return str(path)


@pytest.fixture
def mock_cifar10():
  """CIFAR-10 shaped random data from TFDS's mock, 256 examples per split."""
  with tfds.testing.mock_data(num_examples=256):
    yield


@pytest.fixture
def tiny_config():
  """A ResNet-8 config that trains in seconds on mock data."""
  return make_tiny_config()


def make_tiny_config():
  """tiny_config, for fixtures of a wider scope."""
  config = default.get_config()
  config.model.depth = 8
  config.batch_size = 16
  config.total_steps = 4
  config.warmup_steps = 0  # a few steps at the full rate: what the tests check does not need a warm-up
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.eval_batch_size = 64
  config.num_devices = 1
  config.wandb.mode = "disabled"
  config.dataset.cache_dir = ""  # never cache mock data where a real run would find it
  config.dataset.download = False
  return config


# ------------------------------------------------------- train.py as a user types it, on mock data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_DATA_RUN = os.path.join(REPO, "tests", "mock_data_run.py")


def config_flags(config) -> list[str]:
  """The --config.<field>=<value> flags that make configs/default.py into `config`."""
  defaults, wanted = run_files.flatten_config(default.get_config()), run_files.flatten_config(config)
  return [f"--{k}={v}" for k, v in wanted.items() if v != defaults.get(k)]


def train_py(config, workdir, *flags: str, sigterm_at_step: int = 0) -> list[str]:
  """The command line of `python train.py` for `config` (on mock data)."""
  signal_flag = [f"--sigterm_at_step={sigterm_at_step}"] if sigterm_at_step else []
  return [
    sys.executable,
    MOCK_DATA_RUN,
    *signal_flag,
    "train.py",
    "--config=configs/default.py",
    *config_flags(config),
    *flags,
    f"--workdir={workdir}",
  ]


def process_env(devices: int, **variables: str) -> dict[str, str]:
  """A process's environment: `devices` fake CPU devices, the test session's compilation cache
  (tests/conftest.py) and `variables` (e.g. JAX_PROCESS_ID)."""
  return {
    **os.environ,
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    "JAX_PLATFORMS": "cpu",
    "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(jax.config.jax_persistent_cache_min_compile_time_secs),
    **variables,
  }


# A process that holds the lock of the workdir it is given, as a training run does, until killed.
HOLD_LOCK = (
  "import sys, time\n"
  "from depthlab import workdir_lock\n"
  "with workdir_lock.hold(sys.argv[1]):\n"
  "  print('holding', flush=True)\n"
  "  time.sleep(600)\n"
)
