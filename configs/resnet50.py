"""ImageNet ResNet-50 on CIFAR-10: a 3x3/1 conv1 and no max pool, so the four stages run at
32, 16, 8 and 4 pixels; the CIFAR recipe of configs/default.py otherwise, with its warm-up
(0.01 for 400 steps): at 0.1 from the start the loss rose to 28 in the first steps.

Train it with:

    python train.py --config=configs/resnet50.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = ml_collections.ConfigDict({"name": "resnet50", "cifar_stem": True})
  return config
