"""CIFAR-10 (or any TFDS image dataset) into memory once, on the host; the batches and their
augmentation, which run on the devices, are depthlab/batches.py.

Loading (host, once per run): `load_dataset` reads the splits with `tfds.data_source`
(array_record, no TensorFlow), caches the decoded uint8 arrays, holds out a validation
split if asked, and computes the per-pixel mean image of the training images. With
`dataset.image_size` set (ImageNet-sized input, e.g. imagenette), each image is stored
with its shorter side resized to image_size * 8/7 (256 for 224) and centre-cropped to a
square, and the mean is per channel.
"""

import dataclasses
import hashlib
import os
import socket
import time
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from depthlab import errors

# Where TFDS downloads each dataset from; probed before a download so that an
# offline machine fails in seconds instead of retrying for minutes.
DOWNLOAD_HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu", "imagenette": "s3.amazonaws.com"}
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
DECODE_REPORT_EVERY = 10_000  # examples between progress lines of a first decode


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
  """Makes sure TFDS has `name` in array_record format in `data_dir`, or raises errors.DataNotFoundError."""
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return
  if not download:
    raise errors.DataNotFoundError(_missing_data_message(name, data_dir, "downloading is off (dataset.download=False)"))
  host = DOWNLOAD_HOSTS.get(name.split("/")[0], "storage.googleapis.com")
  if not _host_reachable(host):
    raise errors.DataNotFoundError(_missing_data_message(name, data_dir, f"{host} cannot be reached to download it"))
  print(f"Preparing {name} in {data_dir} with TFDS (first use only)...", flush=True)
  try:
    builder.download_and_prepare(file_format="array_record")
  except ImportError as e:
    raise errors.DataNotFoundError(
      f"Preparing {name} needs TensorFlow (CPU build): pip install -e '.[prepare]' ({e})."
    ) from e


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
  data_dir = resolve_data_dir(config.data_dir)
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise errors.DataNotFoundError(
      f"The TFDS data dir {data_dir} is a file, not a folder: set TFDS_DATA_DIR (or --config.dataset.data_dir) "
      f"to the folder that holds {config.name}/."
    )
  start, size = time.time(), stored_size(config)
  try:
    train = load_split(config.name, "train", data_dir, config.cache_dir, size)
  except Exception:
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
