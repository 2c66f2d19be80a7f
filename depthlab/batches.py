"""The batches, on the devices, inside the jitted step: `batch_indices` draws a step's examples
from a per-epoch permutation (`epoch_orders`, computed once per epoch) and `augment` turns them
into the network's input: CIFAR's pad, crop and flip (`dataset.augmentation = "pad_crop_flip"`),
or the standard ImageNet random-resized crop and flip (`"random_resized_crop"`). Evaluation sees
the images as stored (`eval_images`: centre-cropped to image_size).

All of it is a pure function of (key, step), so the data order does not depend on the number of
devices or hosts, and a resumed run sees the same batches.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Whole batches in an epoch: the last num_examples % batch_size examples of its order are skipped."""
  if batch_size > num_examples:
    raise ValueError(f"batch_size {batch_size} is larger than the {num_examples} training examples.")
  return num_examples // batch_size


def epoch_order(key: jax.Array, epoch: jax.Array | int, num_examples: int) -> jax.Array:
  """The order in which epoch `epoch` visits the examples: permutation(fold_in(key, epoch))."""
  return jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)


def epoch_orders(key: jax.Array, first_epoch: jax.Array | int, num_epochs: int, num_examples: int) -> jax.Array:
  """The orders of epochs first_epoch .. first_epoch + num_epochs - 1 [num_epochs, num_examples],
  epoch e's in row e % num_epochs (where `batch_indices` looks for it)."""
  rows = jnp.arange(num_epochs)
  epochs = first_epoch + (rows - first_epoch) % num_epochs  # the epoch each row holds
  return jax.vmap(lambda e: epoch_order(key, e, num_examples))(epochs)


def batch_indices(orders: jax.Array, step: jax.Array, batch_size: int) -> jax.Array:
  """The indices of the examples in the global batch of `step`, read from `epoch_orders`
  that hold its epoch: the same as `global_batch_indices`, without permuting in every step.

  Permuting 50k indices is a sort; on an accelerator's 2-3 ms step it costs several percent.
  """
  num_epochs, num_examples = orders.shape
  epoch, position = jnp.divmod(step, steps_per_epoch(num_examples, batch_size))
  order = jax.lax.dynamic_index_in_dim(orders, epoch % num_epochs, keepdims=False)
  return jax.lax.dynamic_slice(order, (position * batch_size,), (batch_size,))


def global_batch_indices(key: jax.Array, step: jax.Array, num_examples: int, batch_size: int) -> jax.Array:
  """The indices of the examples in the global batch of `step`: the definition of the data order.

  Epoch e visits the examples in the order of permutation(fold_in(key, e)); the last
  num_examples % batch_size examples of a permutation are skipped. The train step reads
  the same batches from orders computed once per epoch (`epoch_orders`, `batch_indices`).
  """
  epoch = step // steps_per_epoch(num_examples, batch_size)
  return batch_indices(epoch_orders(key, epoch, 1, num_examples), step, batch_size)


def sample_augmentation(key: jax.Array, batch_size: int, padding: int, flip: bool) -> tuple[jax.Array, jax.Array]:
  """Random crop offsets [B, 2] in [0, 2 * padding] and flip decisions [B] (bool)."""
  offset_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (batch_size, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (batch_size,)) if flip else jnp.zeros((batch_size,), bool)
  return offsets, flips


def normalize(images: jax.Array, mean_image: jax.Array) -> jax.Array:
  """uint8 images -> float32 in [0, 1] minus the per-pixel mean (the paper's only preprocessing)."""
  return images.astype(jnp.float32) / 255.0 - mean_image


def pad_crop_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, padding: int) -> jax.Array:
  """Zero-pads each side by `padding`, crops back to the input size at `offsets`, then flips.

  Applied after `normalize`, so the padding is the mean image's value, as in the paper.
  """
  _, height, width, channels = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  crop = lambda image, offset: jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))
  cropped = jax.vmap(crop)(padded, offsets)
  return jnp.where(flips[:, None, None, None], cropped[:, :, ::-1, :], cropped)


AUGMENTATIONS = ("pad_crop_flip", "random_resized_crop")


def input_shape(config: Any, stored_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The network's input [H, W, C]: image_size square when set, else the images as stored."""
  image_size = config.image_size
  return (image_size, image_size, stored_shape[-1]) if image_size else tuple(stored_shape)


def sample_crop_boxes(
  key: jax.Array,
  batch_size: int,
  size: int,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> jax.Array:
  """Random crops [B, 4] (top, left, height, width) of a size x size image: the area a
  uniform fraction `scale` of the image's, the aspect ratio log-uniform in `ratio` (the
  standard ImageNet augmentation; a side longer than the image is cut to it)."""
  area_key, ratio_key, top_key, left_key = jax.random.split(key, 4)
  area = size * size * jax.random.uniform(area_key, (batch_size,), minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(ratio_key, (batch_size,), minval=np.log(ratio[0]), maxval=np.log(ratio[1])))
  width = jnp.minimum(jnp.sqrt(area * aspect), size)
  height = jnp.minimum(jnp.sqrt(area / aspect), size)
  top = jax.random.uniform(top_key, (batch_size,)) * (size - height)
  left = jax.random.uniform(left_key, (batch_size,)) * (size - width)
  return jnp.stack([top, left, height, width], axis=1)


def crop_and_resize(images: jax.Array, boxes: jax.Array, out_size: int) -> jax.Array:
  """Each image's box [top, left, height, width] resized (bilinear) to out_size x out_size, float32."""

  def one(image, box):
    scale = out_size / box[2:]
    return jax.image.scale_and_translate(
      image.astype(jnp.float32),
      (out_size, out_size, image.shape[-1]),
      (0, 1),
      scale,
      -box[:2] * scale,
      method="linear",
      antialias=False,
    )

  return jax.vmap(one)(images, boxes)


def augment(
  images: jax.Array,
  mean_image: jax.Array,
  key: jax.Array,
  config: Any,
  global_batch: int,
  select: Callable[[jax.Array], jax.Array],
) -> jax.Array:
  """This device's training images (uint8), augmented as config.augmentation says and normalised
  (validation has checked that it fits the image size).

  The random draws are made for the whole global batch, then `select` keeps this
  device's, so the augmentation does not depend on the number of devices.
  """
  augmentation = config.augmentation
  if augmentation == "pad_crop_flip":
    offsets, flips = sample_augmentation(key, global_batch, config.crop_padding, config.random_flip)
    return pad_crop_flip(normalize(images, mean_image), select(offsets), select(flips), config.crop_padding)
  box_key, flip_key = jax.random.split(key)
  boxes = sample_crop_boxes(box_key, global_batch, images.shape[1])
  flips = select(jax.random.bernoulli(flip_key, 0.5, (global_batch,)) & config.random_flip)
  cropped = crop_and_resize(images, select(boxes), config.image_size)
  cropped = jnp.where(flips[:, None, None, None], cropped[:, :, ::-1, :], cropped)
  return normalize(cropped, mean_image)


def eval_images(images: jax.Array, mean_image: jax.Array, image_size: int) -> jax.Array:
  """Evaluation's view of stored uint8 images: normalised, centre-cropped to image_size if set."""
  if image_size and images.shape[1] > image_size:
    top, left = (images.shape[1] - image_size) // 2, (images.shape[2] - image_size) // 2
    images = images[:, top : top + image_size, left : left + image_size]
  return normalize(images, mean_image)
