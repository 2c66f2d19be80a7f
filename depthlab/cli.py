"""The command line of train.py (and of the commands that parse it the same way), and how a
user's mistake ends a command: one message, no traceback, exit code 2 for a config or
command-line mistake and 1 for a run that could not go on."""

from collections.abc import Iterator
import contextlib
import logging as python_logging
import os
import sys
import threading

from absl import flags, logging
import ml_collections
from ml_collections import config_flags

from depthlab import errors
from depthlab.naming import default_workdir

FLAGS = flags.FLAGS

# Exit codes: a config or command-line mistake (as argparse's), and a run that could not go on.
EXIT_CONFIG = 2
EXIT_FAILURE = 1


def define_config_flag(flag_values: flags.FlagValues = FLAGS, argv: list[str] | None = None) -> None:
  """--config=configs/<file>.py and its --config.<field>=<value> overrides, for every command
  that takes a config; `argv` (the whole command line) replaces sys.argv as their source."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "A config file from configs/, e.g. configs/resnet56.py.",
    flag_values=flag_values,
    lock_config=True,
    sys_argv=argv,
  )


def define_flags(flag_values: flags.FlagValues = FLAGS, argv: list[str] | None = None) -> None:
  """train.py's command line (defined on demand: parse_command_line defines it on flags of its own).

  `argv` (the whole command line) replaces sys.argv as the source of config overrides.
  """
  define_config_flag(flag_values, argv)
  flags.DEFINE_string(
    "workdir",
    None,
    "Where the run writes (config.json, metrics.jsonl, checkpoints, wandb). Default: runs/<experiment>/<run name>.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "debug", False, "Show the Python traceback of a config or storage error too.", flag_values=flag_values
  )
  flags.mark_flags_as_required(["config"], flag_values=flag_values)


# What ml_collections and absl raise for a bad --config or --config.<field> (unknown field:
# KeyError; missing config file: OSError; a value of the wrong type: flags.Error).
COMMAND_LINE_ERRORS = (flags.Error, KeyError, OSError, AttributeError, TypeError, ValueError)


def command_line_problem(error: Exception, args: list[str]) -> str:
  """One line for a bad command line: the argument at fault, what is wrong, the fix."""
  config_file = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
  if isinstance(error, AttributeError) and error.args and isinstance(error.args[0], KeyError):
    error = error.args[0]  # a top-level field that does not exist: --config.data_dir
  if isinstance(error, OSError) and config_file and not os.path.isfile(config_file):
    return (
      f"--config={config_file}: no such config file; give one of configs/*.py, e.g. "
      "--config=configs/resnet56.py (paths are relative to where you run)."
    )
  if isinstance(error, KeyError):  # ml_collections: "'modle'\nDid you mean ..."
    key, _, hint = str(error.args[0]).partition("\n")
    culprit = next((a for a in args if f".{key.strip(chr(39))}" in a.split("=")[0]), "--config.*")
    return f"{culprit.split('=')[0]}: no config field {key}. {hint}".strip()
  return str(error).splitlines()[0] if isinstance(error, flags.Error) else f"{type(error).__name__}: {error}"


def parse_flags(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
  """absl's parsing of `argv`, config file loaded; a mistake in them is a ConfigError."""
  try:
    rest = flag_values(argv)
    flag_values.config.keys()  # a config file that failed to load raises only when it is used
  except COMMAND_LINE_ERRORS as e:
    raise errors.ConfigError([command_line_problem(e, argv[1:])], "The command line") from e
  return rest


def parse_command_line(args: list[str]) -> tuple[ml_collections.ConfigDict, str]:
  """The config and workdir that `python train.py <args>` trains with (a ConfigError for a
  command line absl or ml_collections refuses)."""
  values, argv = flags.FlagValues(), ["train.py", *args]
  define_flags(values, argv)
  parse_flags(values, argv)
  return values.config, values.workdir or default_workdir(values.config)


def parse_flags_or_exit(argv: list[str]) -> list[str]:
  """app.run's flag parser: a bad command line is one message and exit code 2, no traceback."""
  with user_errors_as_messages(debug="--debug" in argv):
    return parse_flags(FLAGS, argv)


# Errors whose message tells the user what to do: no traceback needed.
USER_ERRORS = (
  errors.ConfigError,
  errors.DataNotFoundError,
  errors.StorageError,
  errors.MetricsFileError,
  errors.WorkdirInUseError,
)
# What the user sets right (exit EXIT_CONFIG); every other error of USER_ERRORS stopped a run (EXIT_FAILURE).
CONFIG_ERRORS = (errors.ConfigError, errors.DataNotFoundError)


@contextlib.contextmanager
def user_errors_as_messages(debug: bool = False, also: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
  """Prints a user's mistake (USER_ERRORS and `also`) as one message and exits with its code
  instead of a traceback; `debug` lets the traceback through."""
  try:
    yield
  except USER_ERRORS + also as e:
    if debug:
      raise
    print(f"Error: {e}", file=sys.stderr, flush=True)
    if isinstance(e, errors.StorageError):
      # A failed orbax save leaves threads that wait ~300 s for it before Python may exit.
      sys.stdout.flush()
      os._exit(EXIT_FAILURE)
    raise SystemExit(EXIT_CONFIG if isinstance(e, CONFIG_ERRORS) else EXIT_FAILURE) from None


# Errors whose message says what to do, besides USER_ERRORS: printed without a traceback.
RUN_ERRORS = (
  errors.ConfigMismatchError,
  errors.CorruptCheckpointError,
  errors.CoordinatorUnreachableError,
  FloatingPointError,
  errors.TrainingCollapsed,
)


class ConsoleForMainThread:
  """sys.stderr while a command works in a workdir: what the main thread writes (our messages,
  warnings) reaches the console; what other threads write goes to the workdir's library.log.
  After a failed asynchronous checkpoint save or read, orbax's and tensorstore's threads print
  dozens of tracebacks ("Event loop is closed"), until the process ends; they belong in the log."""

  def __init__(self, console, log):
    self._console, self._log = console, log

  def write(self, text: str) -> int:
    if threading.current_thread() is threading.main_thread():
      return self._console.write(text)
    try:
      return self._log.write(text)
    except (OSError, ValueError):  # a full disk, or the log closed at exit: dropped
      return len(text)

  def flush(self) -> None:
    self._console.flush()
    with contextlib.suppress(OSError, ValueError):
      self._log.flush()

  def __getattr__(self, name):  # fileno, isatty, encoding, ...: the console's
    return getattr(self._console, name)


@contextlib.contextmanager
def libraries_logged_to(path: str) -> Iterator[None]:
  """Within `with`, absl logging (orbax's and jax's messages, their tracebacks on a failed save)
  and other threads' writes to stderr go to the file `path` (a workdir's library.log) instead
  of the console, which keeps to progress and our messages. After an error they stay there
  until the process ends, since the libraries' threads go on printing until then."""
  handler, console = logging.get_absl_handler().python_handler, sys.stderr
  absl_stream, raise_exceptions = handler.stream, python_logging.raiseExceptions
  log = open(path, "a", buffering=1)
  handler.stream, sys.stderr = log, ConsoleForMainThread(console, log)
  # A log line that cannot be written (a full disk) is dropped, not told on the console as
  # "--- Logging error ---" and a traceback.
  python_logging.raiseExceptions = False
  yield
  handler.stream, sys.stderr, python_logging.raiseExceptions = absl_stream, console, raise_exceptions
  log.close()
