"""ResNet-110 on CIFAR-10 with the paper's recipe."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.depth = 110
  config.model.residual = True
  # The paper warms the 110-layer net up at 0.01 until training error is below 80%
  # (about 400 iterations), then returns to 0.1.
  config.warmup_steps = 400
  return config
