"""VGG nets (Simonyan and Zisserman 2015, Very Deep Convolutional Networks for Large-Scale
Image Recognition, Table 1), configurations A, B, D and E.

    configuration   A (11)   B (13)   D (16)   E (19)      output at 224x224
    stage 1         64       64 x2    64 x2    64 x2       224x224, then maxpool 112x112
    stage 2         128      128 x2   128 x2   128 x2      112x112, then maxpool 56x56
    stage 3         256 x2   256 x2   256 x3   256 x4      56x56, then maxpool 28x28
    stage 4         512 x2   512 x2   512 x3   512 x4      28x28, then maxpool 14x14
    stage 5         512 x2   512 x2   512 x3   512 x4      14x14, then maxpool 7x7
    FC-4096, FC-4096 (ReLU, dropout 0.5), FC-1000

Every conv is 3x3, stride 1, padded by 1, followed by ReLU; every pool is 2x2 with stride
2. VGG-16 (D) at 224x224 with 1000 classes: 138,357,544 parameters. `batch_norm=True`
puts batch norm between each conv and its ReLU (not in the paper; the convs then have no
bias). Configuration C (D with three 1x1 convs) is left out.

For CIFAR-10 (32x32) nothing changes in the convs: the five pools leave 1x1x512, and a
narrower `classifier_width` (512) keeps the fully connected layers in proportion.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nets.layers import Classifier, ConvReLU, DenseReLU, Pool

STAGES = {
  11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
  13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
  16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
  19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(nn.Module):
  """VGG-11/13/16/19 (configurations A/B/D/E)."""

  depth: int = 16
  num_classes: int = 1000
  batch_norm: bool = False
  classifier_width: int = 4096  # units of the two hidden fully connected layers
  dtype: Any = jnp.float32
  axis_name: str | None = None  # for cross-replica batch norm
  conv_weight_grad: str = "auto"  # convolutions' weight gradient: nets/cpu_conv.py's MODES

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.depth not in STAGES:
      raise ValueError(f"VGG depth must be one of {sorted(STAGES)}; got {self.depth}.")
    x = jnp.asarray(x, self.dtype)
    for stage, widths in enumerate(STAGES[self.depth], start=1):
      for i, features in enumerate(widths, start=1):
        x = ConvReLU(
          features,
          3,
          batch_norm=self.batch_norm,
          dtype=self.dtype,
          axis_name=self.axis_name,
          conv_weight_grad=self.conv_weight_grad,
          name=f"conv{stage}_{i}",
        )(x, train)
      x = Pool(2, 2, name=f"pool{stage}")(x)
    x = DenseReLU(self.classifier_width, 0.5, self.dtype, name="fc6")(x, train)
    x = DenseReLU(self.classifier_width, 0.5, self.dtype, name="fc7")(x, train)
    return Classifier(self.num_classes, self.dtype, name="fc8")(x)
