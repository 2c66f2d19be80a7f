"""LeNet-5 on CIFAR-10: the 1998 net unchanged but for its 3 input channels (61,706 -> 62,006
parameters); a lower learning rate than the ResNet recipe, as tanh nets without batch norm need.
--config.model.sparse_c3=True (and trainable_pooling, rbf_output) gives the paper's form.

Train it with:

    python train.py --config=configs/lenet5.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = ml_collections.ConfigDict(
    {"name": "lenet5", "sparse_c3": False, "trainable_pooling": False, "rbf_output": False}
  )
  config.learning_rate = 0.01
  return config
