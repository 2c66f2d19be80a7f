"""The CIFAR-10 networks of He et al. 2015 (Deep Residual Learning, section 4.2).

    layer          output    filters   blocks
    conv 3x3       32x32     16        -
    stage 1        32x32     16        n blocks of two 3x3 convs
    stage 2        16x16     32        n blocks (stride 2 in the first)
    stage 3        8x8       64        n blocks (stride 2 in the first)
    global avg pool, 10-way dense, softmax

Depth is 6n + 2 (20, 32, 44, 56, 110, 1202). Batch norm follows every convolution,
ReLU follows batch norm. `residual=False` gives the plain counterpart: the same
layers without shortcuts. Where a residual block changes the shape, the shortcut is
option A (subsample by 2 and pad the new channels with zeros: no parameters, the
paper's choice for CIFAR) or option B (1x1 convolution + batch norm).

Not in the paper: `zero_init_residual` starts the scale of each block's last batch norm
at zero, so that every residual block begins as the identity (Goyal et al. 2017). Plain
nets have no equivalent: it would start every block's output at zero.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from nets.layers import conv_factory, norm_factory

STAGE_WIDTHS = (16, 32, 64)
SHORTCUTS = ("A", "B")


def blocks_per_stage(depth: int) -> int:
  """Returns n for a depth 6n+2, or raises ValueError naming valid depths."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(
      f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, 1202, ...); got {depth}."
      " Set --config.model.depth to one of those."
    )
  return (depth - 2) // 6


def check_options(depth: int, residual: bool, shortcut: str, zero_init_residual: bool) -> int:
  """Returns n for a depth 6n+2; raises ValueError naming the field and the fix for options
  the net cannot be built with."""
  n = blocks_per_stage(depth)
  if shortcut not in SHORTCUTS:
    raise ValueError(f"model.shortcut must be one of {SHORTCUTS}; got {shortcut!r}.")
  if zero_init_residual and not residual:
    raise ValueError(
      "model.zero_init_residual needs a residual net: a plain net's blocks would all start "
      "at zero. Set --config.model.zero_init_residual=False for model.residual=False."
    )
  return n


class ShortcutA(nn.Module):
  """Parameter-free shortcut: stride-2 subsampling, new channels zero."""

  features: int
  strides: int

  @nn.compact
  def __call__(self, x):
    x = x[:, :: self.strides, :: self.strides, :]
    extra = self.features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


class BasicBlock(nn.Module):
  """Two 3x3 conv + BN layers; with `residual`, the input is added before the last ReLU."""

  features: int
  strides: int
  residual: bool
  shortcut: str
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.features, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.features, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones)(y)
    if not self.residual:
      return nn.relu(y)
    if x.shape == y.shape:
      shortcut = x
    elif self.shortcut == "A":
      shortcut = ShortcutA(self.features, self.strides)(x)
    else:
      shortcut = self.conv(self.features, (1, 1), self.strides, name="proj_conv")(x)
      shortcut = self.norm(name="proj_bn")(shortcut)
    return nn.relu(y + shortcut)


class CifarResNet(nn.Module):
  """ResNet (or plain net) of depth 6n+2 for 32x32 inputs."""

  depth: int = 56
  residual: bool = True
  shortcut: str = "A"
  zero_init_residual: bool = False  # residual blocks start as the identity (not in the paper)
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: str | None = None  # set to the device axis for cross-replica batch norm
  conv_weight_grad: str = "auto"  # convolutions' weight gradient: nets/cpu_conv.py's MODES

  @nn.compact
  def __call__(self, x, train: bool = True):
    n = check_options(self.depth, self.residual, self.shortcut, self.zero_init_residual)
    conv = conv_factory(self.dtype, self.conv_weight_grad)
    norm = norm_factory(train, self.dtype, self.axis_name, self.bn_momentum, self.bn_epsilon)

    # Named stem_*, block1 ... block3n, classifier: per-block metrics read input to output.
    x = jnp.asarray(x, self.dtype)
    x = nn.relu(norm(name="stem_bn")(conv(STAGE_WIDTHS[0], (3, 3), name="stem_conv")(x)))
    for stage, features in enumerate(STAGE_WIDTHS):
      for block in range(n):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(
          features,
          strides,
          self.residual,
          self.shortcut,
          conv,
          norm,
          self.zero_init_residual,
          name=f"block{stage * n + block + 1}",
        )(x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
    return jnp.asarray(x, jnp.float32)
