"""The model registry: `create(name, **kwargs)` builds any network by its config name."""

from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from nets import cifar_resnet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet": cifar_resnet.CifarResNet,
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
