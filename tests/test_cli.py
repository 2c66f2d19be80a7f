"""depthlab/cli.py and naming.py: what `python train.py <flags>` trains, what the run is
called and where it writes."""

from depthlab import cli, naming
from tests.conftest import parse_flags


def test_command_line_overrides_any_field():
  config = parse_flags(
    "--config=configs/plain56.py",
    "--config.model.depth=110",
    "--config.dataset.data_dir=/data",
    "--config.wandb.mode=disabled",
  )
  assert (config.model.depth, config.model.residual) == (110, False)
  assert config.dataset.data_dir == "/data" and config.wandb.mode == "disabled"


def test_run_names_say_what_is_trained():
  config = parse_flags("--config=configs/resnet32.py", "--config.model.shortcut=B", "--config.seed=3")
  assert naming.run_name(config) == "resnet32-B-seed3"
  assert naming.run_name(parse_flags("--config=configs/plain20.py")) == "plain20"
  assert naming.run_name(parse_flags("--config=configs/vgg16.py")) == "vgg16"
  assert naming.run_name(parse_flags("--config=configs/preact_resnet164.py")) == "preact_resnet164"
  assert naming.run_name(parse_flags("--config=configs/resnet56.py", "--config.num_seeds=4")) == "resnet56-seeds0-3"


def test_workdir_follows_from_the_experiment_and_run_name_unless_given():
  assert cli.parse_command_line(["--config=configs/plain20.py"])[1] == "runs/plain20"
  assert (
    cli.parse_command_line(["--config=configs/resnet56.py", "--config.experiment=fig6", "--config.seed=2"])[1]
    == "runs/fig6/resnet56-seed2"
  )
  assert cli.parse_command_line(["--config=configs/resnet56.py", "--workdir=/tmp/x"])[1] == "/tmp/x"
