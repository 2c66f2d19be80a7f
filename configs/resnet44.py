"""ResNet-44 on CIFAR-10 with the paper's recipe and configs/default.py's 400-step warm-up.

Train it with:

    python train.py --config=configs/resnet44.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.depth = 44
  config.model.residual = True
  return config
