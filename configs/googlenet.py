"""GoogLeNet on CIFAR-10: a stride-1 stem without its two max pools (inception 3 at 32x32,
4 at 16x16, 5 at 8x8), batch norm after every conv, and the two auxiliary classifiers,
weighted 0.3 in the loss (config.aux_loss_weight); the ResNet recipe otherwise.

Train it with:

    python train.py --config=configs/googlenet.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = ml_collections.ConfigDict(
    {"name": "googlenet", "aux_heads": True, "batch_norm": True, "cifar_stem": True}
  )
  return config
