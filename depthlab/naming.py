"""Names a run goes by: what it trains (net_name), its short name (run_name) and where it lives (default_workdir)."""

import os

import ml_collections


def net_name(config: ml_collections.ConfigDict) -> str:
  """What the run trains, seed aside: resnet56, plain20, resnet32-B, vgg16, ..."""
  model = config.model
  if model.name != "cifar_resnet":
    return model.name + (str(model.depth) if "depth" in model else "")  # preact_resnet164
  name = f"{'resnet' if model.residual else 'plain'}{model.depth}"
  return name + (f"-{model.shortcut}" if model.residual and model.shortcut != "A" else "")


def run_name(config: ml_collections.ConfigDict) -> str:
  """A short name that says what the run trains: resnet56, plain20, resnet32-B-seed3, ..."""
  if config.num_seeds > 1:
    return net_name(config) + f"-seeds{config.seed}-{config.seed + config.num_seeds - 1}"
  return net_name(config) + (f"-seed{config.seed}" if config.seed else "")


def default_workdir(config: ml_collections.ConfigDict) -> str:
  """runs/<experiment>/<run name>: a run's parameters, not a wandb id, say where it lives,
  so that a sweep run that is stopped and started again finds its checkpoints."""
  return os.path.join("runs", config.experiment, run_name(config))
