"""The CIFAR ResNet of He et al. 2015 (section 4.2) and its SGD train step, in PyTorch.

The baseline that bench.py times against our Flax step. It follows the paper, as
nets/cifar_resnet.py does: a 3x3 conv with 16 filters, three stages of n blocks of two
3x3 convs (16, 32, 64 filters, stride 2 at the first block of stages 2 and 3), batch
norm after every conv, ReLU, global average pooling and a dense layer; shortcut option A
(subsample, zero-pad the new channels) or B (1x1 conv + batch norm); He-normal convs.
Same layers, so the same parameter count as ours at every depth.

PyTorch is an optional dependency (benchmarks/requirements-torch.txt): train.py and
the tests never need it.
"""

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nets.cifar_resnet import SHORTCUTS, STAGE_WIDTHS, blocks_per_stage

# The momentum of our BatchNorm (0.9, the weight of the old running average) is
# PyTorch's 0.1 (the weight of the new batch).
BN_MOMENTUM = 0.1
BN_EPSILON = 1e-5


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)


def batch_norm(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)


class ShortcutA(nn.Module):
  """Parameter-free shortcut: stride-2 subsampling, new channels zero."""

  def __init__(self, out_channels: int, stride: int):
    super().__init__()
    self.out_channels, self.stride = out_channels, stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x[:, :, ::self.stride, ::self.stride]
    return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


class BasicBlock(nn.Module):
  """Two 3x3 conv + BN layers; with `residual`, the input is added before the last ReLU."""

  def __init__(self, in_channels: int, out_channels: int, stride: int, residual: bool, shortcut: str):
    super().__init__()
    self.conv1, self.bn1 = conv3x3(in_channels, out_channels, stride), batch_norm(out_channels)
    self.conv2, self.bn2 = conv3x3(out_channels, out_channels), batch_norm(out_channels)
    self.residual = residual
    if not residual or (in_channels == out_channels and stride == 1):
      self.shortcut = nn.Identity()
    elif shortcut == "A":
      self.shortcut = ShortcutA(out_channels, stride)
    else:
      self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                    batch_norm(out_channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.residual:
      y = y + self.shortcut(x)
    return F.relu(y)


class CifarResNet(nn.Module):
  """ResNet (or plain net) of depth 6n+2 for 32x32 inputs, NCHW."""

  def __init__(self, depth: int = 56, residual: bool = True, shortcut: str = "A", num_classes: int = 10):
    super().__init__()
    n = blocks_per_stage(depth)
    if shortcut not in SHORTCUTS:
      raise ValueError(f"model.shortcut must be one of {SHORTCUTS}; got {shortcut!r}.")
    self.stem = nn.Sequential(conv3x3(3, STAGE_WIDTHS[0]), batch_norm(STAGE_WIDTHS[0]), nn.ReLU())
    blocks, in_channels = [], STAGE_WIDTHS[0]
    for stage, channels in enumerate(STAGE_WIDTHS):
      for block in range(n):
        stride = 2 if stage > 0 and block == 0 else 1
        blocks.append(BasicBlock(in_channels, channels, stride, residual, shortcut))
        in_channels = channels
    self.blocks = nn.Sequential(*blocks)
    self.classifier = nn.Linear(STAGE_WIDTHS[-1], num_classes)
    for module in self.modules():
      if isinstance(module, nn.Conv2d):  # He et al. 2015: normal, std sqrt(2 / fan_in)
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.blocks(self.stem(x))
    return self.classifier(x.mean(dim=(2, 3)))


def count_params(model: nn.Module) -> int:
  """Number of trainable parameters (batch-norm weight and bias included), as nets.count_params."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def create_optimizer(model: nn.Module, learning_rate: float, momentum: float,
                     weight_decay: float) -> torch.optim.SGD:
  """The paper's SGD: momentum without Nesterov, weight decay added to the gradient (as ours)."""
  return torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum,
                         weight_decay=weight_decay, nesterov=False)


def make_train_step(model: nn.Module, optimizer: torch.optim.Optimizer,
                    autocast_dtype: torch.dtype | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """A function (images, labels) -> loss that takes one SGD step, under autocast to `autocast_dtype` if given."""
  device_type = next(model.parameters()).device.type

  def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    autocast = (torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())
    with autocast:
      loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()
  return step
