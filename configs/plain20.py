"""Plain-20 (no shortcuts) on CIFAR-10 with the paper's recipe."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.depth = 20
  config.model.residual = False
  return config
