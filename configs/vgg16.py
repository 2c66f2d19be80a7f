"""VGG-16 (configuration D) on CIFAR-10: the paper's convs unchanged (the five poolings leave
1x1x512), 512-unit hidden fully connected layers, and batch norm after every conv so that the
ResNet recipe's learning rate of 0.1 trains it; the paper's weight decay of 5e-4.

Train it with:

    python train.py --config=configs/vgg16.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = ml_collections.ConfigDict({"name": "vgg16", "batch_norm": True, "classifier_width": 512})
  config.weight_decay = 5e-4
  return config
