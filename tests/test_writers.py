"""depthlab/writers.py: wandb never reaches its login prompt; configs flatten to sweep names; metrics.jsonl
survives a torn write; storage failures are one clear error."""

import os
import shutil

import pytest

from configs import default
from depthlab import errors, run_files, writers


@pytest.fixture
def no_netrc(tmp_path):
  path = tmp_path / "netrc"
  path.write_text("")
  return str(path)


def test_auto_mode_is_offline_without_credentials(no_netrc):
  assert writers.resolve_wandb_mode("auto", {}, no_netrc) == "offline"


def test_auto_mode_is_online_with_an_api_key_or_a_netrc_entry(tmp_path, no_netrc):
  assert writers.resolve_wandb_mode("auto", {"WANDB_API_KEY": "x" * 40}, no_netrc) == "online"
  netrc = tmp_path / "with_entry"
  netrc.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
  netrc.chmod(0o600)
  assert writers.resolve_wandb_mode("auto", {}, str(netrc)) == "online"


def test_wandb_mode_variable_wins_in_auto_mode(no_netrc):
  assert writers.resolve_wandb_mode("auto", {"WANDB_MODE": "disabled", "WANDB_API_KEY": "k"}, no_netrc) == "disabled"


def test_online_without_credentials_falls_back_to_offline(no_netrc):
  assert writers.resolve_wandb_mode("online", {}, no_netrc) == "offline"
  assert writers.resolve_wandb_mode("disabled", {}, no_netrc) == "disabled"


def test_flat_config_uses_the_sweep_parameter_names():
  flat = run_files.flatten_config(default.get_config())
  assert flat["config.model.depth"] == 56 and flat["config.batch_size"] == 128
  assert flat["config.lr_boundaries"] == [32_000, 48_000]


def test_offline_run_writes_wandb_files_and_a_resume_continues_the_same_wandb_run(
  mock_cifar10, tiny_config, tmp_path, monkeypatch, capsys
):
  from depthlab import loop

  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  tiny_config.wandb.mode, tiny_config.checkpoint_every_steps = "auto", 2
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  runs = list((tmp_path / "wandb").glob("offline-run-*"))
  assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
  tiny_config.total_steps = 6  # the same run, resumed
  loop.train_and_evaluate(tiny_config, str(tmp_path))
  run_id = (tmp_path / "wandb_run_id").read_text()
  segments = sorted((tmp_path / "wandb").glob("offline-run-*"))
  assert len(segments) == 2 and all(folder.name.endswith(f"-{run_id}") for folder in segments)
  out = capsys.readouterr().out
  assert f"upload this run (all its segments, as one run) with: wandb sync {tmp_path}/wandb/offline-run-*" in out


class FakeWandbRun:
  def __init__(self, **kwargs):
    self.init_kwargs, self.summary, self.preempting = kwargs, {}, False

  def mark_preempting(self):
    self.preempting = True

  def finish(self, exit_code=0):
    self.exit_code = exit_code


@pytest.mark.parametrize("in_sweep", [False, True])
def test_sweep_runs_take_the_agents_run_id_and_report_preemption(tmp_path, monkeypatch, in_sweep):
  import wandb

  monkeypatch.setattr(wandb, "init", FakeWandbRun)
  if in_sweep:
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
  config = default.get_config()
  config.wandb.mode, config.experiment = "offline", "fig6"
  with writers.MetricWriter(str(tmp_path), config, "resnet56", 850_000) as writer:
    writer.mark_preempted()
    run = writer._wandb_run
  assert run.preempting and run.init_kwargs["group"] == "fig6" and run.init_kwargs["name"] == "resnet56"
  if in_sweep:  # the agent's WANDB_RUN_ID, project and entity apply; a requeued run keeps its id
    assert "id" not in run.init_kwargs and "project" not in run.init_kwargs
  else:  # the id lives in the workdir, so a resumed run continues its wandb run
    assert run.init_kwargs["id"] == (tmp_path / "wandb_run_id").read_text()


# ------------------------------------------------------------------------ metrics.jsonl


def write_lines(path, *lines):
  path.write_text("".join(lines))
  return path


def test_a_torn_last_line_is_skipped_with_a_warning_naming_file_and_line(tmp_path, capsys):
  write_lines(tmp_path / "metrics.jsonl", '{"step": 2, "train_loss": 1.5}\n', '{"step": 4, "train_lo')
  assert run_files.read_metrics(tmp_path) == [{"step": 2, "train_loss": 1.5}]
  assert f"{tmp_path / 'metrics.jsonl'}: line 2 is incomplete" in capsys.readouterr().err


def test_a_bad_line_before_the_last_is_an_error_naming_file_and_line(tmp_path):
  write_lines(tmp_path / "metrics.jsonl", '{"step": 2}\n', 'garbage\n', '{"step": 4}\n')
  with pytest.raises(errors.MetricsFileError, match=r"metrics\.jsonl: line 2 is not a metrics line"):
    run_files.read_metrics(tmp_path)


def test_resume_drops_a_torn_tail_so_that_appends_start_a_line_of_their_own(tmp_path, tiny_config):
  write_lines(tmp_path / "metrics.jsonl", '{"step": 2, "train_loss": 1.5}\n', '{"step": 4, "tr')
  with writers.MetricWriter(str(tmp_path), tiny_config, "resnet8", 1000, first_step=2) as writer:
    writer.write(4, {"train_loss": 1.25})
  assert run_files.read_metrics(tmp_path) == [{"step": 2, "train_loss": 1.5}, {"step": 4, "train_loss": 1.25}]


def test_a_write_cut_short_by_a_full_disk_is_a_storage_error_naming_the_file(tmp_path, tiny_config, monkeypatch):
  with writers.MetricWriter(str(tmp_path), tiny_config, "resnet8", 1000) as writer:
    write = os.write
    monkeypatch.setattr(writers.os, "write", lambda fd, data: write(fd, data[:5]))
    with pytest.raises(errors.StorageError, match=r"metrics of step 2 to .*metrics\.jsonl: .*disk full"):
      writer.write(2, {"train_loss": 1.5})
  monkeypatch.undo()
  assert run_files.read_metrics(tmp_path) == []  # the torn line is skipped


def test_writing_into_a_deleted_workdir_is_a_storage_error(tmp_path, tiny_config):
  workdir = tmp_path / "run"
  with writers.MetricWriter(str(workdir), tiny_config, "resnet8", 1000) as writer:
    shutil.rmtree(workdir)
    with pytest.raises(errors.StorageError, match="deleted during the run"):
      writer.write(2, {"train_loss": 1.5})
    with pytest.raises(errors.StorageError, match="config.json"):
      writer.check_on_disk()


def test_a_workdir_that_is_a_file_is_a_storage_error_naming_it(tmp_path):
  (tmp_path / "run").write_text("")
  with pytest.raises(errors.StorageError, match=f"{tmp_path / 'run'}: it is a file"):
    run_files.check_writable(str(tmp_path / "run"))
