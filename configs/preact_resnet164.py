"""Pre-activation bottleneck ResNet-164 on CIFAR-10 (He et al. 2016): the 2015 recipe with the
learning rate warmed up at 0.01 for 400 steps (configs/default.py's), as the paper does for 164 and
1001 layers.

Train it with:

    python train.py --config=configs/preact_resnet164.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = ml_collections.ConfigDict({"name": "preact_resnet", "depth": 164, "bottleneck": True})
  return config
