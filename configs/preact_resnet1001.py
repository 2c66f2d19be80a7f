"""Pre-activation bottleneck ResNet-1001 on CIFAR-10 (He et al. 2016): ResNet-164's recipe
(400 warm-up steps at 0.01), 111 instead of 18 units per stage.

Train it with:

    python train.py --config=configs/preact_resnet1001.py
"""

import ml_collections

from configs import preact_resnet164


def get_config() -> ml_collections.ConfigDict:
  config = preact_resnet164.get_config()
  config.model.depth = 1001
  return config
