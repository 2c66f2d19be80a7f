"""Layers the nets share: initialisation, conv and batch-norm factories, and the table rows.

Each net is written as a sequence of child modules that are the rows of its paper's
table (a conv layer, a pooling layer, an inception module, a residual block, a fully
connected layer), so that `python -m nets.summary` can list them. Pooling is therefore
a module here, not a bare function.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import cpu_conv

# He et al. 2015 ("Delving deep into rectifiers"): zero-mean normal, std sqrt(2 / fan_in).
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def conv_factory(dtype: Any, weight_grad: str, use_bias: bool = False) -> Callable[..., nn.Module]:
  """`conv(features, kernel, strides=1, padding=None, **kw)`: a He-initialised conv.

  padding None is symmetric, k//2 on each side (a "VALID" conv pads nothing).

  Symmetric padding of k//2, as in the papers (Caffe, Torch): XLA's "SAME" would pad a
  stride-2 conv on the bottom/right only and shift the sampling grid. The convolution is
  cpu_conv's: lax's, with the weight gradient `weight_grad` says (cpu_conv.MODES; "auto":
  one that XLA runs fast on CPU). It goes in through `conv_general_dilated_cls`: flax
  deprecates the `conv_general_dilated` field.
  """
  conv_general_dilated_cls = cpu_conv.conv_general_dilated_cls(weight_grad)
  return lambda features, kernel, strides=1, padding=None, **kw: nn.Conv(
    features,
    kernel,
    strides,
    padding=padding or [(k // 2, k // 2) for k in kernel],
    use_bias=use_bias,
    kernel_init=he_normal,
    dtype=dtype,
    conv_general_dilated_cls=conv_general_dilated_cls,
    **kw,
  )


def norm_factory(
  train: bool, dtype: Any, axis_name: str | None, momentum: float = 0.9, epsilon: float = 1e-5
) -> Callable[..., nn.Module]:
  """`norm(**kw)`: batch norm on the batch's statistics in training, the running ones otherwise."""
  return lambda **kw: nn.BatchNorm(
    use_running_average=not train,
    momentum=momentum,
    epsilon=epsilon,
    dtype=dtype,
    axis_name=axis_name if train else None,
    **kw,
  )


def local_response_norm(
  x: jax.Array, size: int = 5, k: float = 2.0, alpha: float = 1e-4, beta: float = 0.75
) -> jax.Array:
  """Krizhevsky et al. 2012, section 3.3: each activation divided by
  (k + alpha * sum of squares over `size` neighbouring channels) ** beta."""
  squares = jnp.square(x)
  pad = [(0, 0)] * (x.ndim - 1) + [(size // 2, size // 2)]
  window = (1,) * (x.ndim - 1) + (size,)
  sums = jax.lax.reduce_window(squares, 0.0, jax.lax.add, window, (1,) * x.ndim, pad)
  return x / (k + alpha * sums) ** beta


class Pool(nn.Module):
  """Max or average pooling over `window` x `window` patches: one row of a table."""

  window: int
  strides: int
  kind: str = "max"  # or "avg"
  padding: str = "VALID"  # "SAME": ceil(size / strides) outputs, as Caffe's pooling gives

  @nn.compact
  def __call__(self, x):
    pool = nn.max_pool if self.kind == "max" else nn.avg_pool
    return pool(x, (self.window, self.window), (self.strides, self.strides), self.padding)


class ConvReLU(nn.Module):
  """A conv layer of a table: convolution (+ batch norm) + ReLU.

  Without batch norm the convolution has a bias, as in the papers; with it, the bias is
  the batch norm's.
  """

  features: int
  kernel: int
  strides: int = 1
  padding: str | None = None  # None: k//2 on each side; "VALID": none
  groups: int = 1  # AlexNet's two-GPU split: each half of the filters sees half the inputs
  batch_norm: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  conv_weight_grad: str = "auto"  # cpu_conv.MODES

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = conv_factory(self.dtype, self.conv_weight_grad, use_bias=not self.batch_norm)
    x = conv(self.features, (self.kernel, self.kernel), self.strides, self.padding, feature_group_count=self.groups)(x)
    if self.batch_norm:
      x = norm_factory(train, self.dtype, self.axis_name)()(x)
    return nn.relu(x)


class DenseReLU(nn.Module):
  """A hidden fully connected layer of a table: dense + ReLU + dropout (flattens its input)."""

  features: int
  dropout: float = 0.5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.features, dtype=self.dtype)(x))
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class Classifier(nn.Module):
  """The last fully connected layer (flattens its input); logits in float32."""

  num_classes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.num_classes, dtype=self.dtype)(x.reshape(x.shape[0], -1))
    return jnp.asarray(x, jnp.float32)
