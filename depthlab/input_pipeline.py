"""CIFAR-10 (or any TFDS image dataset) into memory once, and the augmentation that runs on the device.

Loading (host, once per run): `load_dataset` reads the splits with `tfds.data_source`
(array_record, no TensorFlow), caches the decoded uint8 arrays, holds out a validation
split if asked, and computes the per-pixel mean image of the training images. With
`dataset.image_size` set (ImageNet-sized input, e.g. imagenette), each image is stored
with its shorter side resized to image_size * 8/7 (256 for 224) and centre-cropped to a
square, and the mean is per channel.

Per step (device, inside the jitted step): `batch_indices` draws the step's examples
from a per-epoch permutation (`epoch_orders`, computed once per epoch) and `augment`
turns them into the network's input:
CIFAR's pad, crop and flip (`dataset.augmentation = "pad_crop_flip"`), or the standard
ImageNet random-resized crop and flip (`"random_resized_crop"`). Evaluation sees the
images as stored (`eval_images`: centre-cropped to image_size).
All of it is a pure function of (key, step), so the data order does not depend on the
number of devices or hosts, and a resumed run sees the same batches.
"""

from collections.abc import Callable
import dataclasses
import hashlib
import os
import socket
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

# Where TFDS downloads each dataset from; probed before a download so that an
# offline machine fails in seconds instead of retrying for minutes.
DOWNLOAD_HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu", "imagenette": "s3.amazonaws.com"}
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
DECODE_REPORT_EVERY = 10_000  # examples between progress lines of a first decode


class DataNotFoundError(RuntimeError):
  """The dataset is neither prepared in the data dir nor downloadable from here."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in host memory: uint8 images [N, H, W, C] and int32 labels [N]."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What a run trains and evaluates on."""

  train: Split
  eval_splits: dict[str, Split]  # "test", and "val" when a validation split is held out
  mean_image: np.ndarray  # float32 in [0, 1]: per-pixel mean of `train` [H, W, C], or per channel [C]
  num_classes: int


def resolve_data_dir(data_dir: str | None) -> str:
  """The config's data dir, else $TFDS_DATA_DIR, else TFDS's default, expanded.

  Always handed to TFDS explicitly, because TFDS reads $TFDS_DATA_DIR only once, when
  it is imported.
  """
  return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR)


def prepare_command(name: str, data_dir: str) -> str:
  return (
    f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', "
    f"data_dir='{data_dir}').download_and_prepare(file_format='array_record')\""
  )


def _host_reachable(host: str, timeout: float = 5.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def _missing_data_message(name: str, data_dir: str, why: str) -> str:
  return (
    f"Dataset {name!r} is not prepared in {data_dir} and {why}.\n"
    f"  - If a prepared copy exists elsewhere, point to it with TFDS_DATA_DIR=/path/to/tensorflow_datasets"
    f" or --config.dataset.data_dir=/path/to/tensorflow_datasets.\n"
    f"  - Otherwise prepare it on a connected machine (needs TensorFlow: pip install -e '.[prepare]') with\n"
    f"      {prepare_command(name, data_dir)}\n"
    f"    and copy {os.path.join(data_dir, name)} here."
  )


def ensure_prepared(name: str, data_dir: str, download: bool) -> None:
  """Makes sure TFDS has `name` in array_record format in `data_dir`, or raises DataNotFoundError."""
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return
  if not download:
    raise DataNotFoundError(_missing_data_message(name, data_dir, "downloading is off (dataset.download=False)"))
  host = DOWNLOAD_HOSTS.get(name.split("/")[0], "storage.googleapis.com")
  if not _host_reachable(host):
    raise DataNotFoundError(_missing_data_message(name, data_dir, f"{host} cannot be reached to download it"))
  print(f"Preparing {name} in {data_dir} with TFDS (first use only)...", flush=True)
  try:
    builder.download_and_prepare(file_format="array_record")
  except ImportError as e:
    raise DataNotFoundError(f"Preparing {name} needs TensorFlow (CPU build): pip install -e '.[prepare]' ({e}).") from e


def stored_size(config: Any) -> int:
  """The side of the square images kept in memory: image_size * 8/7 (256 for 224), or 0:
  the dataset's own (equal) sizes."""
  image_size = config.image_size
  return round(image_size * 8 / 7) if image_size else 0


def resize_and_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The image with its shorter side resized to `size` (bilinear), then its central square."""
  height, width = image.shape[:2]
  scale = size / min(height, width)
  resized = np.asarray(
    PIL.Image.fromarray(image).resize(
      (max(size, round(width * scale)), max(size, round(height * scale))), PIL.Image.BILINEAR
    )
  )
  top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
  return resized[top : top + size, left : left + size]


def _read_split(name: str, split: str, data_dir: str, size: int = 0) -> Split:
  """Decodes every example of a split with tfds.data_source (resized to size x size if size)."""
  source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  print(f"Decoding {name} {split}: {len(source)} images (once: the arrays are cached for later runs)...", flush=True)
  examples, start = [], time.time()
  for i in range(len(source)):
    examples.append(source[i])
    if (i + 1) % DECODE_REPORT_EVERY == 0 and i + 1 < len(source):
      eta = (time.time() - start) / (i + 1) * (len(source) - i - 1)
      print(f"  {i + 1}/{len(source)} decoded, ETA {eta:.0f}s", flush=True)
  image = lambda e: np.asarray(e["image"], np.uint8)
  images = np.stack([resize_and_center_crop(image(e), size) if size else image(e) for e in examples])
  labels = np.asarray([e["label"] for e in examples], np.int32)
  return Split(images, labels)


def _cache_path(cache_dir: str, name: str, split: str, data_dir: str, size: int = 0) -> str:
  source_dir = os.path.realpath(data_dir)
  key = hashlib.sha1(source_dir.encode()).hexdigest()[:10]
  name = name.replace("/", "-") + (f"-{size}px" if size else "")
  return os.path.join(os.path.expanduser(cache_dir), f"{name}-{split}-{key}.npz")


def load_split(name: str, split: str, data_dir: str, cache_dir: str = "", size: int = 0) -> Split:
  """A whole split as arrays, decoded once and then read from `cache_dir` (if set).

  Decoding CIFAR-10's 60k PNGs takes ~20 s on 2 cores; reading the cached arrays well
  under a second.
  """
  path = _cache_path(cache_dir, name, split, data_dir, size) if cache_dir else ""
  if path and os.path.exists(path):
    try:
      with np.load(path) as cached:
        return Split(cached["images"], cached["labels"])
    except (OSError, ValueError, KeyError):
      print(f"Ignoring unreadable cache {path}; decoding {split} again.", flush=True)
  data = _read_split(name, split, data_dir, size)
  if path:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, images=data.images, labels=data.labels)
    os.replace(tmp, path)  # atomic: a killed run never leaves half a cache behind
  return data


def load_dataset(config: Any) -> Dataset:
  """Loads the train and eval splits named by `config` (the config's `dataset` field)."""
  check_augmentation(config)
  data_dir = resolve_data_dir(config.data_dir)
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise DataNotFoundError(
      f"The TFDS data dir {data_dir} is a file, not a folder: set TFDS_DATA_DIR (or --config.dataset.data_dir) "
      f"to the folder that holds {config.name}/."
    )
  start, size = time.time(), stored_size(config)
  try:
    train = load_split(config.name, "train", data_dir, config.cache_dir, size)
  except Exception:  # pylint: disable=broad-except
    train = None  # tfds.data_source raises all sorts when the data is missing: find out why, below
  if train is None:  # outside the except: the reason is the message, not a chain of tracebacks
    ensure_prepared(config.name, data_dir, config.download)
    train = load_split(config.name, "train", data_dir, config.cache_dir, size)
  test = load_split(config.name, config.test_split, data_dir, config.cache_dir, size)

  eval_splits = {"test": test}
  if config.validation_size:
    if not 0 < config.validation_size < len(train):
      raise ValueError(f"dataset.validation_size must be in [0, {len(train)}); got {config.validation_size}.")
    cut = len(train) - config.validation_size
    eval_splits["val"] = Split(train.images[cut:], train.labels[cut:])
    train = Split(train.images[:cut], train.labels[:cut])

  num_classes = tfds.builder(config.name, data_dir=data_dir).info.features["label"].num_classes
  axes = (0, 1, 2) if config.augmentation == "random_resized_crop" else 0
  mean_image = (train.images.mean(axis=axes, dtype=np.float64) / 255.0).astype(np.float32)
  print(
    f"Loaded {config.name} from {data_dir}: {len(train)} train, "
    + ", ".join(f"{len(s)} {k}" for k, s in eval_splits.items())
    + f" ({time.time() - start:.1f}s)",
    flush=True,
  )
  return Dataset(train, eval_splits, mean_image, num_classes)


# ---------------------------------------------------------------------------------------
# On the device, inside the jitted step.


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


def check_augmentation(config: Any) -> None:
  """The augmentation must fit the image size: random-resized crops need one, CIFAR's crops none."""
  augmentation, image_size = config.augmentation, config.image_size
  if augmentation not in AUGMENTATIONS:
    raise ValueError(f"dataset.augmentation must be one of {AUGMENTATIONS}; got {augmentation!r}.")
  if (augmentation == "random_resized_crop") != bool(image_size):
    raise ValueError(
      f"dataset.augmentation={augmentation!r} with dataset.image_size={image_size}: random_resized_crop "
      "needs an image size (e.g. --config.dataset.image_size=224), pad_crop_flip keeps the images' own "
      "(--config.dataset.image_size=0)."
    )


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
  (`check_augmentation` has checked the config).

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
