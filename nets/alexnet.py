"""AlexNet (Krizhevsky, Sutskever and Hinton 2012, ImageNet Classification with Deep
Convolutional Neural Networks, section 3 and Fig. 2).

    layer   kernel/stride   output       groups   then
    input                   227x227x3
    conv1   11x11/4, 96     55x55x96     1        ReLU, LRN
    pool1   3x3/2           27x27x96              (overlapping max pooling)
    conv2   5x5/1, 256      27x27x256    2        ReLU, LRN
    pool2   3x3/2           13x13x256
    conv3   3x3/1, 384      13x13x384    1        ReLU
    conv4   3x3/1, 384      13x13x384    2        ReLU
    conv5   3x3/1, 256      13x13x256    2        ReLU
    pool5   3x3/2           6x6x256
    fc6     4096                                  ReLU, dropout 0.5
    fc7     4096                                  ReLU, dropout 0.5
    fc8     1000

"groups 2" is the paper's two-GPU split: each GPU's half of the filters reads only the
half of the previous layer on the same GPU (conv1 reads the whole image on both GPUs,
conv3 reads both halves). With it, 60,965,224 parameters; `grouped=False`, one stream,
62,378,344. The paper's 224x224 input must be 227x227 for its 55x55 conv1 output.

`cifar_stem` (32x32 input): conv1 is 3x3 with stride 1, padded, so that the three
poolings leave 3x3x256; with a narrower `classifier_width` this is a CIFAR-sized net.
Departures: initialisation is He normal (the paper: N(0, 0.01), biases 1 in conv2, 4, 5
and the fully connected layers, 0 elsewhere); no PCA colour augmentation.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nets.layers import Classifier, ConvReLU, DenseReLU, Pool, local_response_norm

# (filters, kernel, stride, groups, LRN after it, max pool after it)
LAYERS = (
  (96, 11, 4, 1, True, True),
  (256, 5, 1, 2, True, True),
  (384, 3, 1, 1, False, False),
  (384, 3, 1, 2, False, False),
  (256, 3, 1, 2, False, True),
)


class AlexNet(nn.Module):
  """AlexNet for 227x227 inputs, or with `cifar_stem` for 32x32 ones."""

  num_classes: int = 1000
  grouped: bool = True  # the paper's two-GPU channel grouping in conv2, conv4 and conv5
  cifar_stem: bool = False  # 3x3/1 conv1 for 32x32 inputs
  classifier_width: int = 4096  # units of fc6 and fc7
  dtype: Any = jnp.float32
  axis_name: str | None = None  # unused (no batch norm); every net takes it
  conv_weight_grad: str = "auto"  # convolutions' weight gradient: nets/cpu_conv.py's MODES

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    for i, (features, kernel, strides, groups, lrn, pool) in enumerate(LAYERS, start=1):
      if i == 1 and self.cifar_stem:
        kernel, strides = 3, 1
      padding = "VALID" if i == 1 and not self.cifar_stem else None
      x = ConvReLU(
        features,
        kernel,
        strides,
        padding,
        groups if self.grouped else 1,
        dtype=self.dtype,
        conv_weight_grad=self.conv_weight_grad,
        name=f"conv{i}",
      )(x)
      if lrn:
        x = local_response_norm(x)
      if pool:
        x = Pool(3, 2, name=f"pool{i}")(x)
    x = DenseReLU(self.classifier_width, 0.5, self.dtype, name="fc6")(x, train)
    x = DenseReLU(self.classifier_width, 0.5, self.dtype, name="fc7")(x, train)
    return Classifier(self.num_classes, self.dtype, name="fc8")(x)
