"""LeNet-5 (LeCun, Bottou, Bengio and Haffner 1998, Gradient-Based Learning Applied to
Document Recognition, section II-B and Fig. 2).

    layer   output     connections
    input   32x32x1
    C1      28x28x6    5x5 conv
    S2      14x14x6    2x2 subsampling, stride 2
    C3      10x10x16   5x5 conv (full, or the paper's Table I: 60 of the 96 S2->C3 pairs)
    S4      5x5x16     2x2 subsampling, stride 2
    C5      1x1x120    5x5 conv (a full connection at 32x32 input)
    F6      84         full connection
    output  10         full connection (or the paper's Euclidean RBF units)

With one input channel, full C3 and a dense output this has 61,706 parameters; the
paper's form (sparse C3, trainable subsampling, RBF output) has 60,840. Every layer
but the output squashes with the paper's scaled tanh, 1.7159 tanh(2a/3).

Departures from the paper, always:
  - initialisation is Flax's LeCun normal, not uniform in +-2.4 / fan_in;
  - the input is whatever the pipeline gives (CIFAR-10: 3 channels, mean-subtracted),
    not 20x20 digits padded to 32x32 and scaled to [-0.1, 1.175];
  - the loss is softmax cross-entropy; the RBF output gives logits = -distances, and its
    centres are random +-1 vectors that are trained, not the paper's 7x12 bitmaps of the
    characters (fixed at first);
  - subsampling without `trainable_pooling` is a plain average (no coefficient, bias or tanh).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nets import cpu_conv
from nets.layers import Classifier

# Table I of the paper: the S2 maps each C3 map reads.
C3_TABLE = (
  (0, 1, 2),
  (1, 2, 3),
  (2, 3, 4),
  (3, 4, 5),
  (4, 5, 0),
  (5, 0, 1),
  (0, 1, 2, 3),
  (1, 2, 3, 4),
  (2, 3, 4, 5),
  (3, 4, 5, 0),
  (4, 5, 0, 1),
  (5, 0, 1, 2),
  (0, 1, 3, 4),
  (1, 2, 4, 5),
  (0, 2, 3, 5),
  (0, 1, 2, 3, 4, 5),
)


def scaled_tanh(x: jax.Array) -> jax.Array:
  """The paper's squashing function (Appendix A): 1.7159 tanh(2x / 3)."""
  return 1.7159 * jnp.tanh(2.0 * x / 3.0)


class ConvTanh(nn.Module):
  """A C layer: a 5x5 "VALID" conv + scaled tanh; with `table`, map j reads only the
  input maps table[j], and only those weights exist."""

  features: int
  table: tuple[tuple[int, ...], ...] | None = None
  dtype: Any = jnp.float32
  conv_weight_grad: str = "auto"

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(
      nn.Conv,
      kernel_size=(5, 5),
      padding="VALID",
      dtype=self.dtype,
      conv_general_dilated_cls=cpu_conv.conv_general_dilated_cls(self.conv_weight_grad),
    )
    if self.table is None:
      return scaled_tanh(conv(self.features)(x))
    # One single-filter conv per C3 map, over the maps it reads: only the table's weights exist.
    maps = [conv(1, name=f"map{j}")(x[..., list(inputs)]) for j, inputs in enumerate(self.table)]
    return scaled_tanh(jnp.concatenate(maps, axis=-1))


class Subsampling(nn.Module):
  """An S layer: 2x2 average with stride 2; `trainable`: the paper's unit, tanh(c * sum + b)
  with one coefficient and one bias per map."""

  trainable: bool = False

  @nn.compact
  def __call__(self, x):
    x = nn.avg_pool(x, (2, 2), (2, 2))
    if not self.trainable:
      return x
    coefficient = self.param("coefficient", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    return scaled_tanh(4.0 * x * coefficient + bias)  # 4 * mean = sum of the 2x2 inputs


class DenseTanh(nn.Module):
  """F6: a full connection + scaled tanh."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return scaled_tanh(nn.Dense(self.features, dtype=self.dtype)(x.reshape(x.shape[0], -1)))


class RBFOutput(nn.Module):
  """The paper's output layer: unit i gives the squared distance of F6 to its centre w_i;
  returned negated, as logits."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    centres = self.param(
      "centres", lambda key, shape: jax.random.rademacher(key, shape, jnp.float32), (self.num_classes, x.shape[-1])
    )
    x = jnp.asarray(x, jnp.float32)
    return -jnp.sum(jnp.square(x[:, None, :] - centres), axis=-1)


class LeNet5(nn.Module):
  """LeNet-5 for 32x32 inputs of any number of channels."""

  num_classes: int = 10
  sparse_c3: bool = False  # the paper's Table I connections between S2 and C3
  trainable_pooling: bool = False  # the paper's S2/S4 units: tanh(coefficient * sum + bias)
  rbf_output: bool = False  # the paper's Euclidean RBF output units instead of a dense layer
  dtype: Any = jnp.float32
  axis_name: str | None = None  # unused (no batch norm); every net takes it
  conv_weight_grad: str = "auto"  # convolutions' weight gradient: nets/cpu_conv.py's MODES

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    x = ConvTanh(6, dtype=self.dtype, conv_weight_grad=self.conv_weight_grad, name="C1")(x)
    x = Subsampling(self.trainable_pooling, name="S2")(x)
    x = ConvTanh(16, C3_TABLE if self.sparse_c3 else None, self.dtype, self.conv_weight_grad, name="C3")(x)
    x = Subsampling(self.trainable_pooling, name="S4")(x)
    x = ConvTanh(120, dtype=self.dtype, conv_weight_grad=self.conv_weight_grad, name="C5")(x)
    x = DenseTanh(84, dtype=self.dtype, name="F6")(x)
    if self.rbf_output:
      return RBFOutput(self.num_classes, name="output")(x)
    return Classifier(self.num_classes, dtype=self.dtype, name="output")(x)
