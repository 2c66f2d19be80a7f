"""Convolutions that run fast on XLA's CPU backend: a weight gradient by patches, and XLA's flags.

The nets' convolutions (`layers.conv_factory`) call `conv_general_dilated` here instead of
`lax.conv_general_dilated`, through flax's nn.Conv(conv_general_dilated_cls=
conv_general_dilated_cls(weight_grad)). The forward pass and the input gradient are lax's. The
weight gradient, on CPU, is computed from patches instead:

    dW[i, j, c, d] = sum over n, h, w of  x_pad[n, s*h + i, s*w + j, c] * dy[n, h, w, d]

that is, one matrix product of the input's patches ([images*positions, kh*kw*c]) with the
output gradient ([images*positions, d]), taken a few images at a time (`IMAGES_PER_CHUNK`,
a lax.scan) so that each chunk's patches stay in the cache. XLA's own CPU lowering of
this gradient is a convolution with the whole feature map as its kernel, which runs
3-10x slower than the forward convolution on a CIFAR ResNet's layers (16 channels at
32x32 the worst); the gradient by patches runs 2-7x faster than XLA's (see docs/performance.md,
'What makes the step fast'). On GPU and TPU the vendors' libraries are fast, so there it is lax's.

`use_fast_xla_cpu_flags()` keeps XLA's CPU convolutions its own rather than YNNPACK's
(XLA_CPU_FLAGS) where the backend will be the CPU; the entry points call it before JAX starts.

Each convolution is given its weight gradient where the model is created: every net takes a
field `conv_weight_grad`, one of MODES: "auto" (patches on CPU, lax elsewhere), "patches"
or "lax"; depthlab/trainer.py's create_model passes config.conv_weight_grad. Nothing else decides it.
"""

from collections.abc import Callable, Mapping, Sequence
import functools
import importlib.metadata
import importlib.util
import os
import pkgutil
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

MODES = ("auto", "patches", "lax")
# Images whose patches one step of the scan multiplies: measured best at 4-8 for CIFAR
# ResNet layers (a chunk's patches are then 1-5 MB).
IMAGES_PER_CHUNK = 8

NHWC = ("NHWC", "HWIO", "NHWC")  # the layout of the nets (flax's default)

# XLA's CPU backend hands convolutions to YNNPACK by default. On a CIFAR ResNet's layers
# its own (Eigen) convolutions are faster: 16x16x32 and 8x8x64 layers 2x, the whole
# ResNet-56 step 1.3x (docs/performance.md, "What makes the step fast"). Only where the backend is
# CPU: an XLA built without the flag (another version, another platform) aborts on it.
XLA_CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}


def accelerator_plugins() -> list[str]:
  """The installed modules that give JAX a GPU or TPU backend: PJRT plugins (the
  `jax_plugins` namespace package or entry points, as jax finds them) and libtpu."""
  found = []
  try:
    import jax_plugins

    found += [name for _, name, _ in pkgutil.iter_modules(jax_plugins.__path__)]
  except ImportError:
    pass
  found += [entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")]
  if importlib.util.find_spec("libtpu") is not None:
    found.append("libtpu")
  return sorted(set(found))


def requested_platforms() -> str:
  """JAX_PLATFORMS (or jax.config.update("jax_platforms", ...) before JAX started): "" for any."""
  return jax.config.jax_platforms or ""


def backend_will_be_cpu(platforms: str, plugins: Sequence[str], environ: Mapping[str, str]) -> bool:
  """Whether JAX's default backend, once started, will be the CPU.

  XLA reads XLA_FLAGS when the backend starts, so this is decided before, from what is
  known then: the platforms asked for (JAX_PLATFORMS, first one wins), else whether any
  accelerator plugin is installed (or named in PJRT_NAMES_AND_LIBRARY_PATHS). A plugin
  without its device makes JAX fall back to the CPU without the flag: slower, never aborted.
  """
  if platforms.strip():
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not plugins and not environ.get("PJRT_NAMES_AND_LIBRARY_PATHS")


def use_fast_xla_cpu_flags() -> None:
  """Adds XLA_CPU_FLAGS to $XLA_FLAGS where the backend will be the CPU, leaving any of them
  the user set alone.

  Call it before JAX starts its backends (train.py, eval.py and benchmarks/bench.py do so first thing in main).
  """
  if not backend_will_be_cpu(requested_platforms(), accelerator_plugins(), os.environ):
    return
  flags = os.environ.get("XLA_FLAGS", "")
  added = [f"--{name}={value}" for name, value in XLA_CPU_FLAGS.items() if f"--{name}" not in flags]
  os.environ["XLA_FLAGS"] = " ".join([flags, *added]).strip()


def check_mode(weight_grad: str) -> str:
  """`weight_grad` if it is one of MODES, else a ValueError naming them."""
  if weight_grad not in MODES:
    raise ValueError(f"conv_weight_grad must be one of {MODES}; got {weight_grad!r}.")
  return weight_grad


def uses_patches(weight_grad: str) -> bool:
  """Whether a convolution of mode `weight_grad`, traced now, takes its weight gradient by patches."""
  return weight_grad == "patches" or (weight_grad == "auto" and jax.default_backend() == "cpu")


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding: str | Sequence[tuple[int, int]],
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: Any = None,
  *,
  weight_grad: str = "auto",
) -> jax.Array:
  """lax.conv_general_dilated; for the nets' plain NHWC convolutions, with the gradient above
  where `weight_grad` (one of MODES) says so."""
  conv = functools.partial(
    lax.conv_general_dilated,
    window_strides=window_strides,
    padding=padding,
    lhs_dilation=lhs_dilation,
    rhs_dilation=rhs_dilation,
    dimension_numbers=dimension_numbers,
    feature_group_count=feature_group_count,
    batch_group_count=batch_group_count,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  plain = (
    lhs.ndim == 4
    and feature_group_count == 1
    and batch_group_count == 1
    and all(d == 1 for d in (lhs_dilation or (1, 1)))
    and all(d == 1 for d in (rhs_dilation or (1, 1)))
    and preferred_element_type is None
    and is_nhwc_hwio(dimension_numbers, lhs.shape, rhs.shape)
  )
  if not (plain and uses_patches(check_mode(weight_grad))):
    return conv(lhs, rhs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision)


class ConvGeneralDilated:
  """`conv_general_dilated` above with the weight gradient `weight_grad` (one of MODES)."""

  def __init__(self, weight_grad: str):
    self.weight_grad = check_mode(weight_grad)

  def __call__(self, *args, **kwargs) -> jax.Array:
    return conv_general_dilated(*args, weight_grad=self.weight_grad, **kwargs)


@functools.cache
def conv_general_dilated_cls(weight_grad: str) -> Callable[[], ConvGeneralDilated]:
  """What flax's nn.Conv(conv_general_dilated_cls=...) wants: flax calls it with no arguments,
  then calls what it gives. A bad mode is a ValueError now; one object per mode, so that
  two convs of the same mode compare equal."""
  return functools.partial(ConvGeneralDilated, check_mode(weight_grad))


def is_nhwc_hwio(dimension_numbers: Any, lhs_shape: Sequence[int], rhs_shape: Sequence[int]) -> bool:
  """Whether the convolution is laid out as NHWC input, HWIO kernel, NHWC output."""
  numbers = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
  return numbers == lax.conv_dimension_numbers(lhs_shape, rhs_shape, NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC, precision=precision)


def _conv_forward(x, w, strides, padding, precision):
  return _conv(x, w, strides, padding, precision), (x, w)


def _conv_backward(strides, padding, precision, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(
    lambda x: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC, precision=precision), x
  )
  (dx,) = input_vjp(dy)
  return dx, weight_grad_by_patches(x, dy, w.shape, strides, padding).astype(w.dtype)


_conv.defvjp(_conv_forward, _conv_backward)


def weight_grad_by_patches(
  x: jax.Array, dy: jax.Array, kernel_shape: Sequence[int], strides: Sequence[int], padding: Sequence[tuple[int, int]]
) -> jax.Array:
  """The gradient of an NHWC/HWIO convolution's kernel, from its input and output gradient."""
  kh, kw, c, d = kernel_shape
  (sh, sw), (ho, wo) = strides, dy.shape[1:3]
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  # The padded input's row (column) under output row (column) h and kernel row (column) i.
  rows = sh * np.arange(ho)[:, None] + np.arange(kh)  # [ho, kh]
  cols = sw * np.arange(wo)[:, None] + np.arange(kw)  # [wo, kw]

  def chunk_grad(x, dy):
    # One gather writes the patches [n, ho, wo, kh, kw, c]; XLA's CPU code for it is 1.1-1.4x
    # faster than concatenating kh*kw slices along the channels, which writes them 16-64
    # floats at a time.
    patches = x[:, rows[:, None, :, None], cols[None, :, None, :], :]
    return jnp.dot(patches.reshape(-1, kh * kw * c).T, dy.reshape(-1, d), preferred_element_type=jnp.float32)

  n = x.shape[0]
  per_chunk = max(k for k in range(1, min(n, IMAGES_PER_CHUNK) + 1) if n % k == 0)
  if per_chunk == n:
    grad = chunk_grad(x, dy)
  else:
    chunks = lambda a: a.reshape(n // per_chunk, per_chunk, *a.shape[1:])
    grad, _ = lax.scan(
      lambda total, xd: (total + chunk_grad(*xd), None),
      jnp.zeros((kh * kw * c, d), jnp.float32),
      (chunks(x), chunks(dy)),
    )
  return grad.reshape(kh, kw, c, d)
