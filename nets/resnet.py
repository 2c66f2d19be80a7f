"""The ImageNet ResNets (He, Zhang, Ren and Sun 2015, Deep Residual Learning for Image
Recognition, Table 1).

    layer    output    18-layer   34-layer   50-layer   101-layer  152-layer
    conv1    112x112   7x7, 64, stride 2
             56x56     3x3 max pool, stride 2
    conv2_x  56x56     basic x2   basic x3   bneck x3   bneck x3   bneck x3     width 64
    conv3_x  28x28     basic x2   basic x4   bneck x4   bneck x4   bneck x8     width 128
    conv4_x  14x14     basic x2   basic x6   bneck x6   bneck x23  bneck x36    width 256
    conv5_x  7x7       basic x2   basic x3   bneck x3   bneck x3   bneck x3     width 512
             1x1       average pool, 1000-d fc, softmax
    FLOPs              1.8e9      3.6e9      3.8e9      7.6e9      11.3e9       (multiply-adds)

"basic" is two 3x3 convs of the stage's width (cifar_resnet.BasicBlock); "bneck" is a
1x1 conv to the width, a 3x3 conv, and a 1x1 conv to 4x the width. Batch norm follows
every conv, ReLU follows batch norm and the addition. Shortcuts are identities, and 1x1
convs + batch norm (projections, option B) where the shape changes. Parameters:
11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 / 60,192,808.

Where a bottleneck block halves the size, the paper strides its first 1x1 conv (3.86 /
7.57 / 11.28 G multiply-adds for 50/101/152 layers); `stride_in_3x3=True` strides the 3x3
conv instead ("ResNet v1.5", as in Facebook's and Flax's ImageNet code: 4.09 / 7.80 /
11.51 G, and more accurate).

`cifar_stem` (32x32 input): conv1 is 3x3 with stride 1 and there is no max pool, so the
stages run at 32, 16, 8 and 4 pixels.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nets.cifar_resnet import BasicBlock
from nets.layers import Classifier, ConvReLU, Pool, conv_factory, norm_factory

STAGE_WIDTHS = (64, 128, 256, 512)
# depth: (bottleneck blocks?, blocks per stage)
STAGES = {
  18: (False, (2, 2, 2, 2)),
  34: (False, (3, 4, 6, 3)),
  50: (True, (3, 4, 6, 3)),
  101: (True, (3, 4, 23, 3)),
  152: (True, (3, 8, 36, 3)),
}


class BottleneckBlock(nn.Module):
  """1x1 (width), 3x3 (width), 1x1 (4 x width) convs with batch norm; shortcut added before the last ReLU."""

  features: int
  strides: int
  stride_in_3x3: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    first, second = (1, self.strides) if self.stride_in_3x3 else (self.strides, 1)
    y = nn.relu(self.norm()(self.conv(self.features, (1, 1), first)(x)))
    y = nn.relu(self.norm()(self.conv(self.features, (3, 3), second)(y)))
    y = self.norm()(self.conv(4 * self.features, (1, 1))(y))
    shortcut = x
    if x.shape != y.shape:
      shortcut = self.conv(4 * self.features, (1, 1), self.strides, name="proj_conv")(x)
      shortcut = self.norm(name="proj_bn")(shortcut)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet-18/34/50/101/152 for 224x224 inputs, or with `cifar_stem` for 32x32 ones."""

  depth: int = 50
  num_classes: int = 1000
  stride_in_3x3: bool = False  # "v1.5": stride 2 in the bottleneck's 3x3 conv, not its first 1x1
  cifar_stem: bool = False  # 3x3/1 conv1 and no max pool, for 32x32 inputs
  dtype: Any = jnp.float32
  axis_name: str | None = None  # for cross-replica batch norm
  conv_weight_grad: str = "auto"  # convolutions' weight gradient: nets/cpu_conv.py's MODES

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.depth not in STAGES:
      raise ValueError(f"ResNet depth must be one of {sorted(STAGES)}; got {self.depth}.")
    bottleneck, counts = STAGES[self.depth]
    conv = conv_factory(self.dtype, self.conv_weight_grad)
    norm = norm_factory(train, self.dtype, self.axis_name)

    x = jnp.asarray(x, self.dtype)
    kernel, strides = (3, 1) if self.cifar_stem else (7, 2)  # conv1: 7x7, 64, stride 2
    x = ConvReLU(
      64,
      kernel,
      strides,
      batch_norm=True,
      dtype=self.dtype,
      axis_name=self.axis_name,
      conv_weight_grad=self.conv_weight_grad,
      name="conv1",
    )(x, train)
    if not self.cifar_stem:
      x = Pool(3, 2, padding="SAME", name="pool1")(x)
    for stage, (features, count) in enumerate(zip(STAGE_WIDTHS, counts)):
      for block in range(count):
        strides = 2 if stage > 0 and block == 0 else 1
        name = f"conv{stage + 2}_{block + 1}"
        if bottleneck:
          x = BottleneckBlock(features, strides, self.stride_in_3x3, conv, norm, name=name)(x)
        else:
          x = BasicBlock(features, strides, True, "B", conv, norm, name=name)(x)
    x = jnp.mean(x, axis=(1, 2))
    return Classifier(self.num_classes, self.dtype, name="fc")(x)
