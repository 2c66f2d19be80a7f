"""ResNet-44 on CIFAR-10 with the paper's recipe."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.depth = 44
  config.model.residual = True
  return config
