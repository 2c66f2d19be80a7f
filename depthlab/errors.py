"""The errors a user can cause or fix, each with a message that says what to do: train.py,
eval.py and the sweep runner print them as one line (cli.user_errors_as_messages) instead of
a traceback. Here, in a module that imports nothing, so that catching them loads nothing of
the training side."""


class ConfigError(ValueError):
  """A config (or sweep file) the user must fix; the message lists every problem."""

  def __init__(self, problems: list[str], what: str = "The config"):
    self.problems = problems
    super().__init__(
      f"{what} has {len(problems)} problem{'s' if len(problems) > 1 else ''}; nothing "
      "was started:\n  - " + "\n  - ".join(problems)
    )


class ConfigMismatchError(ConfigError):
  """A workdir's checkpoints were trained with another model or data."""


class CorruptCheckpointError(ValueError):
  """A checkpoint reads back, but not as it was saved."""


class TrainingCollapsed(RuntimeError):
  """A run stopped because its net is at chance (config.stop_on_collapse)."""


class DataNotFoundError(RuntimeError):
  """The dataset is neither prepared in the data dir nor downloadable from here."""


class CoordinatorUnreachableError(RuntimeError):
  """A process of a multi-process run could not reach process 0's coordinator in time."""


class StorageError(OSError):
  """A run's files cannot be written (out of space, an unwritable or vanished folder): one
  message that names the path and the cause, for the user rather than a traceback."""


def storage_error(what: str, path: str, error: BaseException, saved: str = "") -> StorageError:
  """A StorageError saying that `what` could not be written to `path`, and why; `saved`: what
  is safe on disk, as a sentence."""
  cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error) or type(error).__name__
  return StorageError(
    f"Cannot write {what} to {path}: {cause}. {saved}Free space there, make it writable, "
    "or use another --workdir; then run the same command again to resume."
  )


class MetricsFileError(ValueError):
  """A metrics.jsonl that is damaged beyond a torn last line."""


class RunFileError(ValueError):
  """A run's config.json that does not read back as the JSON object train.py wrote."""


class WorkdirInUseError(RuntimeError):
  """Another process holds the workdir."""
