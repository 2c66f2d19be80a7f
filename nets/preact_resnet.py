"""Pre-activation ResNets for CIFAR (He, Zhang, Ren and Sun 2016, Identity Mappings in
Deep Residual Networks, Fig. 1(b), Table 2, section 4).

    layer       output   basic (6n+2 layers)       bottleneck (9n+2 layers)
    conv 3x3    32x32    16 filters
    stage 1     32x32    n x [3x3, 16; 3x3, 16]    n x [1x1, 16; 3x3, 16; 1x1, 64]
    stage 2     16x16    n x [3x3, 32; 3x3, 32]    n x [1x1, 32; 3x3, 32; 1x1, 128]
    stage 3     8x8      n x [3x3, 64; 3x3, 64]    n x [1x1, 64; 3x3, 64; 1x1, 256]
    batch norm, ReLU, global average pool, 10-way fc

Each unit is "full pre-activation": batch norm and ReLU come before each conv, and the
addition is followed by nothing, so the shortcut path is an identity from block to
block. Where a unit changes the shape (the first of each stage; stride 2 in the first
unit of stages 2 and 3, in its 3x3 conv), the shortcut is a 1x1 conv of the
pre-activated input. ResNet-164 (bottleneck, n=18): 1,703,258 parameters; ResNet-1001
(bottleneck, n=111): 10,327,706 (the paper rounds it to 10.2M); ResNet-110 (basic, n=18):
1,730,522.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nets.layers import Classifier, conv_factory, norm_factory

STAGE_WIDTHS = (16, 32, 64)
EXPANSION = 4  # a bottleneck unit's output is 4x its width


def units_per_stage(depth: int, bottleneck: bool) -> int:
  """n for a depth 9n+2 (bottleneck) or 6n+2 (basic), or a ValueError naming valid depths."""
  layers_per_unit = 3 if bottleneck else 2
  if depth < 3 * layers_per_unit + 2 or (depth - 2) % (3 * layers_per_unit):
    kind, examples = ("9n+2", "164, 1001") if bottleneck else ("6n+2", "20, 56, 110")
    raise ValueError(
      f"A {'bottleneck' if bottleneck else 'basic'} pre-activation ResNet has "
      f"depth {kind} (e.g. {examples}); got {depth}. Set --config.model.depth."
    )
  return (depth - 2) // (3 * layers_per_unit)


class PreActUnit(nn.Module):
  """BN-ReLU-conv, twice (basic) or three times (bottleneck); the input added to the output."""

  features: int
  strides: int
  bottleneck: bool
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]

  @nn.compact
  def __call__(self, x):
    out_features = EXPANSION * self.features if self.bottleneck else self.features
    y = nn.relu(self.norm()(x))
    # Where the shape changes the shortcut needs a conv too; it reads the pre-activated input.
    shortcut = x
    if x.shape[-1] != out_features or self.strides != 1:
      shortcut = self.conv(out_features, (1, 1), self.strides, name="proj_conv")(y)
    if self.bottleneck:
      y = self.conv(self.features, (1, 1))(y)
      y = self.conv(self.features, (3, 3), self.strides)(nn.relu(self.norm()(y)))
      y = self.conv(out_features, (1, 1))(nn.relu(self.norm()(y)))
    else:
      y = self.conv(self.features, (3, 3), self.strides)(y)
      y = self.conv(self.features, (3, 3))(nn.relu(self.norm()(y)))
    return y + shortcut


class PreActResNet(nn.Module):
  """A pre-activation ResNet of depth 9n+2 (bottleneck) or 6n+2 (basic) for 32x32 inputs."""

  depth: int = 164
  bottleneck: bool = True
  num_classes: int = 10
  dtype: Any = jnp.float32
  axis_name: str | None = None  # for cross-replica batch norm
  conv_weight_grad: str = "auto"  # convolutions' weight gradient: nets/cpu_conv.py's MODES

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = units_per_stage(self.depth, self.bottleneck)
    conv = conv_factory(self.dtype, self.conv_weight_grad)
    norm = norm_factory(train, self.dtype, self.axis_name)

    x = conv(STAGE_WIDTHS[0], (3, 3), name="conv1")(jnp.asarray(x, self.dtype))
    for stage, features in enumerate(STAGE_WIDTHS):
      for unit in range(n):
        strides = 2 if stage > 0 and unit == 0 else 1
        x = PreActUnit(features, strides, self.bottleneck, conv, norm, name=f"stage{stage + 1}_{unit + 1}")(x)
    x = nn.relu(norm(name="final_bn")(x))
    x = jnp.mean(x, axis=(1, 2))
    return Classifier(self.num_classes, self.dtype, name="fc")(x)
