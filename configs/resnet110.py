"""ResNet-110 on CIFAR-10 with the paper's recipe (the 400-step warm-up at 0.01 that the paper gives
this depth is configs/default.py's for every depth).

Train it with:

    python train.py --config=configs/resnet110.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model.depth = 110
  config.model.residual = True
  return config
