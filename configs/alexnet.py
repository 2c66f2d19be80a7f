"""AlexNet on CIFAR-10: a 3x3/1 conv1 for 32x32 inputs (the three poolings leave 3x3x256) and
1024-unit fc6/fc7; the paper's recipe otherwise (learning rate 0.01, weight decay 5e-4,
dropout 0.5, the two-GPU grouping).

Train it with:

    python train.py --config=configs/alexnet.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = ml_collections.ConfigDict(
    {"name": "alexnet", "grouped": True, "cifar_stem": True, "classifier_width": 1024}
  )
  config.learning_rate = 0.01
  config.weight_decay = 5e-4
  return config
