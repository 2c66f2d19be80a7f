"""ImageNet ResNet-18 on CIFAR-10: a 3x3/1 conv1 and no max pool, so the four stages run at
32, 16, 8 and 4 pixels; the CIFAR recipe of He et al. 2015 otherwise.

Train it with:

    python train.py --config=configs/resnet18.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = ml_collections.ConfigDict({"name": "resnet18", "cifar_stem": True})
  return config
