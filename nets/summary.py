"""Per-layer tables of the nets, as the papers print them: `python -m nets.summary vgg16`.

    python -m nets.summary vgg16                                # 224x224x3 input, 1000 classes
    python -m nets.summary googlenet aux_heads=False batch_norm=True
    python -m nets.summary resnet50 stride_in_3x3=True
    python -m nets.summary vgg16 num_classes=10 classifier_width=512 --input_size=32

One row per child module of the net (a conv layer, a pooling layer, an inception
module, a residual block, a fully connected layer: the rows of the paper's table), with
its output shape, activations per image (count and bytes; a row's output only, not the
values inside a block), parameters and multiply-adds. Shapes and parameters come from
`jax.eval_shape` (nothing is allocated). Multiply-adds are the papers' measure: one per
kernel entry per output value of every nn.Conv and nn.Dense, zero padding included;
pooling, batch norm and ReLU are not counted. The totals add XLA's cost analysis of the
whole forward pass as a check: it counts a multiply-add as two flops, adds the
element-wise work, and leaves out multiplications by padding (so it runs a few per cent
under twice the multiply-adds where feature maps are small). Everything is at
evaluation, so GoogLeNet's auxiliary classifiers are not among the rows.

nn.tabulate gives shapes, parameters and flops per module too, but no activation memory,
so this walks the same calls with nn.intercept_methods.
"""

import argparse
import ast
import collections
from collections.abc import Sequence
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import nets

# The input each net was published for (height, width, channels) and its classes.
CANONICAL_INPUT = {
  "lenet5": ((32, 32, 1), 10),
  "alexnet": ((227, 227, 3), 1000),
  "cifar_resnet": ((32, 32, 3), 10),
  "preact_resnet": ((32, 32, 3), 10),
}
IMAGENET_INPUT = ((224, 224, 3), 1000)


@dataclasses.dataclass(frozen=True)
class Row:
  """One layer: its output for one image, its parameters and its multiply-adds."""

  name: str
  output_shape: tuple[int, ...]
  bytes_per_activation: int
  params: int
  multiply_adds: int

  @property
  def activations(self) -> int:
    return math.prod(self.output_shape)

  @property
  def activation_bytes(self) -> int:
    return self.activations * self.bytes_per_activation


def abstract_variables(model: nn.Module, input_shape: Sequence[int]) -> Any:
  """The shapes of the model's variables for one image of `input_shape` (nothing allocated)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> list[Row]:
  """The input and one row per child module called at evaluation, in call order."""
  rows = [Row("input", tuple(input_shape), 4, 0, 0)]
  macs = collections.Counter()  # multiply-adds of the convs and dense layers in each row

  def record(call, args, kwargs, context):
    out = call(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__" or not module.path:
      return out
    if isinstance(module, (nn.Conv, nn.Dense)):
      # Each output value takes one multiply-add per kernel entry feeding it.
      kernel = module.variables["params"]["kernel"].shape
      macs[module.path[0]] += math.prod(out.shape[1:]) * math.prod(kernel[:-1])
    if len(module.path) == 1:  # a child of the net: a row (called after its own children)
      rows.append(
        Row(
          module.path[0],
          tuple(out.shape[1:]),
          out.dtype.itemsize,
          nets.count_params(module.variables.get("params", {})),
          macs[module.path[0]],
        )
      )
    return out

  image = jnp.zeros((1, *input_shape))
  variables = abstract_variables(model, input_shape)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda v: model.apply(v, image, train=False), variables)
  return rows


def multiply_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Multiply-adds of the convolutions and dense layers for one image at evaluation, as the
  papers count them (every kernel entry at every output position, padding included)."""
  return sum(row.multiply_adds for row in layer_table(model, input_shape))


def xla_flops(model: nn.Module, input_shape: Sequence[int]) -> float:
  """XLA's cost analysis of one image's forward pass at evaluation: every operation, a
  multiply-add as two flops, and multiplications by a conv's zero padding left out."""
  image = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
  lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(abstract_variables(model, input_shape), image)
  return lowered.cost_analysis()["flops"]


def _si(value: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
    if value >= scale:
      return f"{value / scale:.2f}{unit}"
  return f"{value:.0f}"


def _megabytes(value: int) -> str:
  return f"{value / 1e6:.2f}MB"


def format_table(model: nn.Module, input_shape: Sequence[int]) -> str:
  """The table, with totals: activations (forward only), parameters, multiply-adds."""
  rows = layer_table(model, input_shape)
  params = nets.count_params(abstract_variables(model, input_shape)["params"])
  macs = sum(row.multiply_adds for row in rows)
  header = f"{'layer':<20} {'output':>16} {'activations':>12} {'bytes':>10} {'params':>13} {'mult-adds':>10}"
  lines = [header, "-" * len(header)]
  for row in rows:
    shape = "x".join(map(str, row.output_shape))
    lines.append(
      f"{row.name:<20} {shape:>16} {row.activations:>12,} {_megabytes(row.activation_bytes):>10} "
      f"{row.params:>13,} {_si(row.multiply_adds):>10}"
    )
  activations = sum(row.activations for row in rows)
  activation_bytes = sum(row.activation_bytes for row in rows)
  lines += [
    "-" * len(header),
    f"{'total':<20} {'':>16} {activations:>12,} {_megabytes(activation_bytes):>10} {params:>13,} {_si(macs):>10}",
    f"Activations: {activations:,} per image, {activation_bytes / 1e6:.1f} MB "
    f"({activation_bytes / 2**20:.1f} MiB) forward only (about twice that with the backward pass).",
    f"Parameters: {params:,} ({params * 4 / 1e6:.1f} MB in float32).",
    f"Multiply-adds: {macs:,} in convolutions and dense layers; XLA's cost analysis: "
    f"{xla_flops(model, input_shape) / 1e9:.3g} GFLOPs (everything, padding left out).",
  ]
  in_rows = sum(row.params for row in rows)
  if in_rows != params:
    lines.append(f"  of which {params - in_rows:,} in layers used only in training (not in the rows).")
  return "\n".join(lines)


def parse_options(options: Sequence[str]) -> dict[str, Any]:
  """["batch_norm=True", "depth=110"] -> {"batch_norm": True, "depth": 110}."""
  parsed = {}
  for option in options:
    key, sep, value = option.partition("=")
    if not sep:
      raise ValueError(f"Options are key=value (e.g. batch_norm=True); got {option!r}.")
    try:
      parsed[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      parsed[key] = value  # a bare string, e.g. shortcut=B
  return parsed


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("name", nargs="?", help=f"one of {nets.names()}")
  parser.add_argument("options", nargs="*", help="the net's keyword arguments, key=value")
  parser.add_argument("--input_size", type=int, help="image height and width (default: the paper's)")
  parser.add_argument("--channels", type=int, help="image channels (default: the paper's)")
  args = parser.parse_args(argv)
  if args.name is None:
    print(f"The nets: {', '.join(nets.names())}. Their table: python -m nets.summary <net>, e.g.\n")
    print(__doc__.split("\n\n")[1])
    return
  if args.name not in nets.names():
    parser.error(f"unknown net {args.name!r}; give one of {', '.join(nets.names())}")
  (size, _, channels), num_classes = CANONICAL_INPUT.get(args.name, IMAGENET_INPUT)
  input_shape = (args.input_size or size, args.input_size or size, args.channels or channels)
  model = nets.create(args.name, **{"num_classes": num_classes, **parse_options(args.options)})
  print(f"{args.name} at {'x'.join(map(str, input_shape))}, {model.num_classes} classes\n")
  print(format_table(model, input_shape))


if __name__ == "__main__":
  main()
