"""The model registry: `create(name, **kwargs)` builds any network by its config name.

Every net takes `num_classes`, `dtype`, a batch-norm `axis_name` and `conv_weight_grad`,
how its convolutions take their weight gradient (nets/cpu_conv.py; depthlab/trainer.py passes all
four) and is called as `model.apply(variables, images, train=...)`. It returns logits,
except a net with auxiliary classifiers in training (GoogLeNet), which returns
`(logits, (aux_logits, ...))`; the train step (depthlab/steps.py) adds the auxiliary losses with
config.aux_loss_weight.
"""

from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from nets import alexnet, cifar_resnet, googlenet, lenet, preact_resnet, resnet, vgg

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
  "cifar_resnet": cifar_resnet.CifarResNet,
  "preact_resnet": preact_resnet.PreActResNet,
  "lenet5": lenet.LeNet5,
  "alexnet": alexnet.AlexNet,
  "googlenet": googlenet.GoogLeNet,
  **{f"vgg{depth}": functools.partial(vgg.VGG, depth=depth) for depth in vgg.STAGES},
  **{f"resnet{depth}": functools.partial(resnet.ResNet, depth=depth) for depth in resnet.STAGES},
}


def names() -> list[str]:
  """The names `create` knows, sorted."""
  return sorted(_REGISTRY)


def create(name: str, **kwargs: Any) -> nn.Module:
  """Builds the network registered as `name` with its keyword arguments."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; set --config.model.name to one of {names()}.")
  return _REGISTRY[name](**kwargs)


def count_params(params: Any) -> int:
  """Number of trainable parameters (batch-norm scale and bias included)."""
  return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
