"""The CIFAR ResNet of He et al. 2015 (section 4.2) and its SGD train step, in PyTorch.

The baseline that benchmarks/bench.py times against our Flax step. It follows the paper, as
nets/cifar_resnet.py does: a 3x3 conv with 16 filters, three stages of n blocks of two
3x3 convs (16, 32, 64 filters, stride 2 at the first block of stages 2 and 3), batch
norm after every conv, ReLU, global average pooling and a dense layer; shortcut option A
(subsample, zero-pad the new channels) or B (1x1 conv + batch norm); He-normal convs.
Same layers, so the same parameter count as ours at every depth.

PyTorch is an optional dependency (benchmarks/requirements-torch.txt): train.py and
the tests never need it.

benchmarks/bench.py runs this side in a process of its own, `python -m benchmarks.torch_resnet`,
which builds one variant and times its steps on request (`serve`, below).
"""

from collections.abc import Callable
import contextlib
import json
import os
import sys
import time
from typing import IO, Any

import torch
from torch import nn
import torch.nn.functional as F

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
    x = x[:, :, :: self.stride, :: self.stride]
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
      self.shortcut = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), batch_norm(out_channels)
      )

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


def create_optimizer(model: nn.Module, learning_rate: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
  """The paper's SGD: momentum without Nesterov, weight decay added to the gradient (as ours)."""
  return torch.optim.SGD(
    model.parameters(), lr=learning_rate, momentum=momentum, weight_decay=weight_decay, nesterov=False
  )


def make_train_step(
  model: nn.Module, optimizer: torch.optim.Optimizer, autocast_dtype: torch.dtype | None = None
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """A function (images, labels) -> loss that takes one SGD step, under autocast to `autocast_dtype` if given."""
  device_type = next(model.parameters()).device.type

  def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(device_type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with autocast:
      loss = F.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step


# ------------------------------------------------------------------- benchmarks/bench.py's PyTorch process


class TimedStep:
  """One variant's train step on one fixed random batch, ready to time.

  It runs on the GPU when asked to and PyTorch sees one, else on the CPU. It has no data
  pipeline: its batch is made once, where benchmarks/bench.py's is gathered and augmented every step.
  """

  def __init__(
    self,
    depth: int,
    residual: bool,
    shortcut: str,
    num_classes: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    weight_decay: float,
    seed: int,
    channels_last: bool,
    bf16: bool,
    gpu: bool,
  ):
    self.device = torch.device("cuda" if gpu and torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    torch.manual_seed(seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = CifarResNet(depth, residual, shortcut, num_classes).to(self.device, memory_format=memory_format)
    self.num_params = count_params(model)
    optimizer = create_optimizer(model, learning_rate, momentum, weight_decay)
    self.step = make_train_step(model, optimizer, torch.bfloat16 if bf16 else None)
    self.images = torch.randn(batch_size, 3, 32, 32, device=self.device).contiguous(memory_format=memory_format)
    self.labels = torch.randint(0, num_classes, (batch_size,), device=self.device)
    self.loss = None
    self.peak_bytes = None

  def run(self, steps: int) -> float:
    """Runs `steps` steps; returns their seconds."""
    on_gpu = self.device.type == "cuda"
    if on_gpu:
      torch.cuda.reset_peak_memory_stats(self.device)
    start = time.perf_counter()
    for _ in range(steps):
      self.loss = self.step(self.images, self.labels)
    if on_gpu:  # kernels run asynchronously: wait for the last one
      torch.cuda.synchronize(self.device)
    seconds = time.perf_counter() - start
    if on_gpu:
      self.peak_bytes = max(self.peak_bytes or 0, torch.cuda.max_memory_allocated(self.device))
    return seconds


def serve(requests: IO[str], replies: IO[str]) -> None:
  """Answers benchmarks/bench.py, one JSON line per request, until `requests` ends.

  The first request holds TimedStep's arguments and is answered with what was built
  (device, parameter count, PyTorch's version); each later one, {"steps": N}, runs N steps
  and is answered with their seconds, the last loss and the GPU's peak allocation.
  """
  timed = TimedStep(**json.loads(requests.readline()))
  reply(replies, device=str(timed.device), num_params=timed.num_params, version=torch.__version__)
  for line in requests:
    seconds = timed.run(json.loads(line)["steps"])
    reply(replies, seconds=seconds, loss=float(timed.loss), peak_bytes=timed.peak_bytes)


def reply(replies: IO[str], **fields: Any) -> None:
  replies.write(json.dumps(fields) + "\n")
  replies.flush()


def main() -> None:
  # The replies get their own copy of stdout; whatever else writes to stdout, Python or a
  # library's C code, goes to stderr and cannot break a reply.
  replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
  os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
  serve(sys.stdin, replies)


if __name__ == "__main__":
  main()
