"""GoogLeNet, Inception v1 (Szegedy et al. 2015, Going Deeper with Convolutions, Table 1
and section 5).

    type            patch/stride   output       #1x1  #3x3 reduce  #3x3  #5x5 reduce  #5x5  pool proj
    convolution     7x7/2          112x112x64
    max pool        3x3/2          56x56x64
    convolution     3x3/1          56x56x192          64           192
    max pool        3x3/2          28x28x192
    inception (3a)                 28x28x256    64    96           128   16           32    32
    inception (3b)                 28x28x480    128   128          192   32           96    64
    max pool        3x3/2          14x14x480
    inception (4a)                 14x14x512    192   96           208   16           48    64
    inception (4b)                 14x14x512    160   112          224   24           64    64
    inception (4c)                 14x14x512    128   128          256   24           64    64
    inception (4d)                 14x14x528    112   144          288   32           64    64
    inception (4e)                 14x14x832    256   160          320   32           128   128
    max pool        3x3/2          7x7x832
    inception (5a)                 7x7x832      256   160          320   32           128   128
    inception (5b)                 7x7x1024     384   192          384   48           128   128
    avg pool        7x7/1          1x1x1024
    dropout (40%)                  1x1x1024
    linear                         1x1x1000

The "convolution 3x3/1" row is two layers: the 1x1 reduction to 64 and the 3x3 conv.
Local response normalisation follows the first max pool and the second convolution
(Fig. 3). Each inception module concatenates a 1x1 conv, a 1x1 reduction + 3x3 conv, a
1x1 reduction + 5x5 conv (a real 5x5), and a 3x3/1 max pool + 1x1 projection; every conv
is followed by ReLU. Without the auxiliary classifiers and without batch norm:
6,998,552 parameters.

The two auxiliary classifiers (section 5) read the outputs of 4a and 4d: 5x5/3 average
pooling, a 1x1 conv with 128 filters, a fully connected layer of 1024 units, 70% dropout,
and a linear layer to the classes. They exist only in training: with `train=True` the
net returns `(logits, (aux_4a, aux_4d))` and the train step (depthlab/steps.py) adds each auxiliary loss with
weight config.aux_loss_weight (the paper's 0.3); at evaluation it returns the logits.

Options beyond the paper: `batch_norm` (between each conv and its ReLU, replacing the
LRNs and the convs' biases; 7,005,832 parameters without the auxiliary heads) and
`cifar_stem` for 32x32 inputs: the stem keeps stride 1 and drops its two max pools, so
that inception 3 runs at 32x32, 4 at 16x16 (the auxiliary pooling still gives 4x4) and
5 at 8x8.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nets.layers import Classifier, ConvReLU, DenseReLU, Pool, local_response_norm

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
INCEPTION = {
  "3a": (64, 96, 128, 16, 32, 32),
  "3b": (128, 128, 192, 32, 96, 64),
  "4a": (192, 96, 208, 16, 48, 64),
  "4b": (160, 112, 224, 24, 64, 64),
  "4c": (128, 128, 256, 24, 64, 64),
  "4d": (112, 144, 288, 32, 64, 64),
  "4e": (256, 160, 320, 32, 128, 128),
  "5a": (256, 160, 320, 32, 128, 128),
  "5b": (384, 192, 384, 48, 128, 128),
}
MAX_POOL_AFTER = ("3b", "4e")
AUX_AFTER = ("4a", "4d")


class Inception(nn.Module):
  """Four branches, concatenated along the channels."""

  widths: tuple[int, int, int, int, int, int]
  batch_norm: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  conv_weight_grad: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    c1, c3_reduce, c3, c5_reduce, c5, pool_proj = self.widths
    conv = lambda features, kernel, name: ConvReLU(
      features,
      kernel,
      batch_norm=self.batch_norm,
      dtype=self.dtype,
      axis_name=self.axis_name,
      conv_weight_grad=self.conv_weight_grad,
      name=name,
    )
    branches = [
      conv(c1, 1, "1x1")(x, train),
      conv(c3, 3, "3x3")(conv(c3_reduce, 1, "3x3_reduce")(x, train), train),
      conv(c5, 5, "5x5")(conv(c5_reduce, 1, "5x5_reduce")(x, train), train),
      conv(pool_proj, 1, "pool_proj")(Pool(3, 1, padding="SAME")(x), train),
    ]
    return jnp.concatenate(branches, axis=-1)


class AuxClassifier(nn.Module):
  """Section 5's auxiliary classifier on an intermediate output."""

  num_classes: int
  batch_norm: bool = False
  dtype: Any = jnp.float32
  axis_name: str | None = None
  conv_weight_grad: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = Pool(5, 3, kind="avg")(x)
    x = ConvReLU(
      128,
      1,
      batch_norm=self.batch_norm,
      dtype=self.dtype,
      axis_name=self.axis_name,
      conv_weight_grad=self.conv_weight_grad,
    )(x, train)
    x = DenseReLU(1024, 0.7, self.dtype)(x, train)
    return Classifier(self.num_classes, self.dtype)(x)


class GoogLeNet(nn.Module):
  """GoogLeNet for 224x224 inputs, or with `cifar_stem` for 32x32 ones."""

  num_classes: int = 1000
  aux_heads: bool = True  # the two auxiliary classifiers (training only)
  batch_norm: bool = False
  cifar_stem: bool = False  # stride-1 stem without max pools, for 32x32 inputs
  dtype: Any = jnp.float32
  axis_name: str | None = None  # for cross-replica batch norm
  conv_weight_grad: str = "auto"  # convolutions' weight gradient: nets/cpu_conv.py's MODES

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = lambda features, kernel, strides, name: ConvReLU(
      features,
      kernel,
      strides,
      batch_norm=self.batch_norm,
      dtype=self.dtype,
      axis_name=self.axis_name,
      conv_weight_grad=self.conv_weight_grad,
      name=name,
    )
    lrn = (lambda x: x) if self.batch_norm else local_response_norm
    x = jnp.asarray(x, self.dtype)
    if self.cifar_stem:
      x = conv(64, 3, 1, "conv1")(x, train)
    else:
      x = lrn(Pool(3, 2, padding="SAME", name="pool1")(conv(64, 7, 2, "conv1")(x, train)))
    x = conv(64, 1, 1, "conv2_reduce")(x, train)
    x = lrn(conv(192, 3, 1, "conv2")(x, train))
    if not self.cifar_stem:
      x = Pool(3, 2, padding="SAME", name="pool2")(x)

    aux_logits = []
    for name, widths in INCEPTION.items():
      x = Inception(
        widths, self.batch_norm, self.dtype, self.axis_name, self.conv_weight_grad, name=f"inception_{name}"
      )(x, train)
      # Built at initialisation too, so that the parameters exist for training.
      if name in AUX_AFTER and self.aux_heads and (train or self.is_initializing()):
        aux_logits.append(
          AuxClassifier(
            self.num_classes, self.batch_norm, self.dtype, self.axis_name, self.conv_weight_grad, name=f"aux_{name}"
          )(x, train)
        )
      if name in MAX_POOL_AFTER:
        x = Pool(3, 2, padding="SAME", name=f"pool{name[0]}")(x)

    x = jnp.mean(x, axis=(1, 2))  # the 7x7/1 average pool (8x8 with cifar_stem)
    x = nn.Dropout(0.4, deterministic=not train, name="dropout")(x)
    logits = Classifier(self.num_classes, self.dtype, name="linear")(x)
    return (logits, tuple(aux_logits)) if train and aux_logits else logits
