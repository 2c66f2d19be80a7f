"""The input pipeline: loading from TFDS, caching, splitting, and the on-device augmentation."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from depthlab import cli, input_pipeline
from tests.conftest import REPO, config_flags, make_tiny_config, process_env, real_cifar10_dir, requires_cifar10


def numpy_pad_crop_flip(images, offsets, flips, padding):
  """The reference: pad with zeros, crop each image at its offset, mirror left-right."""
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out = np.stack([padded[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
  return np.where(flips[:, None, None, None], out[:, :, ::-1], out)


def test_pad_crop_flip_matches_numpy():
  images = np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype(np.float32)
  offsets, flips = input_pipeline.sample_augmentation(jax.random.key(0), 64, padding=4, flip=True)
  got = jax.jit(input_pipeline.pad_crop_flip, static_argnums=3)(images, offsets, flips, 4)
  assert got.dtype == jnp.float32 and got.shape == images.shape
  np.testing.assert_array_equal(got, numpy_pad_crop_flip(images, np.asarray(offsets), np.asarray(flips), 4))


def test_crop_at_the_centre_without_flip_is_the_identity():
  images = np.arange(2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
  got = input_pipeline.pad_crop_flip(images, jnp.full((2, 2), 4), jnp.zeros(2, bool), 4)
  np.testing.assert_array_equal(got, images)


def test_corner_crop_brings_in_zero_padding_and_flip_mirrors():
  images = np.ones((1, 32, 32, 1), np.float32)
  got = np.asarray(input_pipeline.pad_crop_flip(images, jnp.zeros((1, 2), int), jnp.ones(1, bool), 4))
  assert got[0, :4].sum() == 0  # top rows come from the padding
  assert got[0, 4:, -4:].sum() == 0 and got[0, 4:, :-4].min() == 1  # flipped: padding on the right


def test_augmentation_samples_cover_the_range_and_flip_half():
  offsets, flips = input_pipeline.sample_augmentation(jax.random.key(1), 20_000, padding=4, flip=True)
  assert offsets.dtype == jnp.int32 and flips.dtype == jnp.bool_
  assert set(np.unique(offsets).tolist()) == set(range(9))
  assert 0.48 < float(flips.mean()) < 0.52
  _, no_flips = input_pipeline.sample_augmentation(jax.random.key(1), 100, padding=4, flip=False)
  assert not no_flips.any()


def test_normalize_scales_to_unit_range_and_subtracts_the_mean():
  images = np.full((1, 2, 2, 3), 255, np.uint8)
  mean = np.full((2, 2, 3), 0.25, np.float32)
  got = input_pipeline.normalize(images, mean)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, 0.75)


def test_each_epoch_visits_every_example_once_in_a_new_order():
  key, n, batch = jax.random.key(0), 100, 10
  epoch = lambda e: np.concatenate(
    [input_pipeline.global_batch_indices(key, s, n, batch) for s in range(e * 10, e * 10 + 10)]
  )
  first, second = epoch(0), epoch(1)
  assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
  assert not np.array_equal(first, second)


def batch_before_epoch_orders(key, step, num_examples, batch_size):
  """global_batch_indices as it was before the orders were computed once per epoch: the reference."""
  epoch, position = divmod(step, num_examples // batch_size)
  order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  return order[position * batch_size : (position + 1) * batch_size]


@pytest.mark.parametrize("num_examples, batch_size, num_epochs", [(100, 10, 2), (25, 10, 2), (50_000, 128, 3)])
def test_batches_read_from_the_epochs_orders_are_today_s(num_examples, batch_size, num_epochs):
  key, steps = jax.random.key(7), num_examples // batch_size
  read = jax.jit(input_pipeline.batch_indices, static_argnums=2)
  for first_epoch in range(3):
    orders = input_pipeline.epoch_orders(key, first_epoch, num_epochs, num_examples)
    # Every step of the epochs the orders hold, the last of one and the first of the next included.
    for step in sorted(
      {
        first_epoch * steps,
        (first_epoch + 1) * steps - 1,
        (first_epoch + 1) * steps,
        (first_epoch + num_epochs) * steps - 1,
      }
      | set(range(first_epoch * steps, first_epoch * steps + 3))
    ):
      np.testing.assert_array_equal(
        read(orders, step, batch_size), batch_before_epoch_orders(key, step, num_examples, batch_size)
      )
      np.testing.assert_array_equal(
        input_pipeline.global_batch_indices(key, step, num_examples, batch_size),
        batch_before_epoch_orders(key, step, num_examples, batch_size),
      )


def test_last_partial_batch_of_an_epoch_is_skipped():
  indices = [input_pipeline.global_batch_indices(jax.random.key(0), s, 25, 10) for s in range(2)]
  assert len(set(np.concatenate(indices).tolist())) == 20


def test_batch_larger_than_dataset_is_an_error():
  with pytest.raises(ValueError, match="larger than the 8 training examples"):
    input_pipeline.global_batch_indices(jax.random.key(0), 0, 8, 16)


def test_load_dataset_reads_tfds_and_computes_the_mean_image(mock_cifar10, tiny_config):
  data = input_pipeline.load_dataset(tiny_config.dataset)
  assert data.train.images.shape == (256, 32, 32, 3) and data.train.images.dtype == np.uint8
  assert data.train.labels.dtype == np.int32 and set(data.eval_splits) == {"test"}
  assert data.num_classes == 10
  np.testing.assert_allclose(data.mean_image, data.train.images.mean(0) / 255, rtol=1e-6)


def test_validation_split_is_held_out_of_training(mock_cifar10, tiny_config):
  tiny_config.dataset.validation_size = 56
  data = input_pipeline.load_dataset(tiny_config.dataset)
  assert len(data.train) == 200 and len(data.eval_splits["val"]) == 56 and len(data.eval_splits["test"]) == 256
  np.testing.assert_allclose(data.mean_image, data.train.images.mean(0) / 255, rtol=1e-6)


def test_cache_returns_the_same_arrays(mock_cifar10, tmp_path):
  first = input_pipeline.load_split("cifar10", "test", str(tmp_path / "tfds"), str(tmp_path / "cache"))
  assert len(os.listdir(tmp_path / "cache")) == 1
  second = input_pipeline.load_split("cifar10", "test", str(tmp_path / "tfds"), str(tmp_path / "cache"))
  np.testing.assert_array_equal(first.images, second.images)
  np.testing.assert_array_equal(first.labels, second.labels)


# ---------------------------------------------------------------- ImageNet-sized input


def test_resize_and_center_crop_keeps_the_middle_of_the_shorter_side():
  image = np.zeros((40, 80, 3), np.uint8)
  image[:, 10:70] = 255  # white in the middle, black at the left and right ends
  out = input_pipeline.resize_and_center_crop(image, 20)  # 20x40, then its central 20x20: white
  assert out.shape == (20, 20, 3) and out.min() == 255
  np.testing.assert_array_equal(input_pipeline.resize_and_center_crop(image, 40), image[:, 20:60])  # no resize
  assert input_pipeline.resize_and_center_crop(np.zeros((9, 7, 3), np.uint8), 16).shape == (16, 16, 3)


def test_random_crop_boxes_lie_inside_the_image_with_the_asked_areas_and_ratios():
  boxes = np.asarray(input_pipeline.sample_crop_boxes(jax.random.key(0), 4096, 256))
  top, left, height, width = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + height <= 256 + 1e-3).all() and (left + width <= 256 + 1e-3).all()
  area = height * width / 256**2
  assert area.min() >= 0.08 * 0.99 and area.max() <= 1.0 + 1e-6 and 0.4 < np.median(area) < 0.6
  uncut = (height < 256) & (width < 256)
  ratio = (width / height)[uncut]
  assert ratio.min() >= 3 / 4 - 1e-4 and ratio.max() <= 4 / 3 + 1e-4


def test_crop_and_resize_of_the_whole_image_is_a_resize_and_of_a_corner_a_zoom():
  image = jax.random.uniform(jax.random.key(0), (1, 16, 16, 3)) * 255
  whole = input_pipeline.crop_and_resize(image, jnp.array([[0.0, 0.0, 16.0, 16.0]]), 8)
  np.testing.assert_allclose(whole, jax.image.resize(image, (1, 8, 8, 3), "linear", antialias=False), atol=1e-3)
  corner = input_pipeline.crop_and_resize(image, jnp.array([[0.0, 0.0, 8.0, 8.0]]), 8)
  np.testing.assert_allclose(corner, image[:, :8, :8], atol=1e-3)  # 8x8 to 8x8: the pixels themselves


def test_evaluation_sees_the_centre_crop():
  images = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
  out = input_pipeline.eval_images(jnp.asarray(images), jnp.zeros(3), 4)
  np.testing.assert_allclose(out, images[:, 1:5, 1:5] / 255.0, rtol=1e-6)
  assert input_pipeline.eval_images(jnp.asarray(images), jnp.zeros(3), 0).shape == (2, 6, 6, 3)


def imagenette_config(tiny_config):
  config = tiny_config
  config.dataset.name, config.dataset.test_split = "imagenette/160px-v2", "validation"
  config.dataset.image_size, config.dataset.augmentation = 28, "random_resized_crop"
  return config


def test_imagenette_loads_at_8_7_of_the_image_size_with_a_per_channel_mean(tiny_config):
  with tfds.testing.mock_data(num_examples=20):  # random images of random sizes
    dataset = input_pipeline.load_dataset(imagenette_config(tiny_config).dataset)
  assert dataset.train.images.shape == (20, 32, 32, 3) and dataset.eval_splits["test"].images.shape[1:] == (32, 32, 3)
  assert dataset.mean_image.shape == (3,) and dataset.num_classes == 10
  assert input_pipeline.input_shape(tiny_config.dataset, dataset.train.images.shape[1:]) == (28, 28, 3)


def test_random_resized_crops_do_not_depend_on_the_number_of_devices():
  config = default.get_config().dataset
  config.image_size, config.augmentation = 8, "random_resized_crop"
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 9, 9, 3), np.uint8))
  key, mean = jax.random.key(1), jnp.full(3, 0.5)
  whole = input_pipeline.augment(images, mean, key, config, 4, lambda x: x)
  halves = [
    input_pipeline.augment(images[i : i + 2], mean, key, config, 4, lambda x, i=i: x[i : i + 2]) for i in (0, 2)
  ]
  assert whole.shape == (4, 8, 8, 3)
  np.testing.assert_allclose(np.concatenate(halves), whole, rtol=1e-6)
  config.augmentation = "cutout"
  with pytest.raises(ValueError, match="dataset.augmentation must be one of"):
    input_pipeline.check_augmentation(config)


def test_an_augmentation_that_does_not_fit_the_image_size_is_an_error_naming_the_fix(tiny_config):
  tiny_config.dataset.augmentation = "random_resized_crop"
  with pytest.raises(ValueError, match="needs an image size"):
    input_pipeline.load_dataset(tiny_config.dataset)
  tiny_config.dataset.augmentation, tiny_config.dataset.image_size = "pad_crop_flip", 224
  with pytest.raises(ValueError, match="--config.dataset.image_size=0"):
    input_pipeline.load_dataset(tiny_config.dataset)


def test_data_dir_comes_from_config_then_environment(monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", "/from/env")
  assert input_pipeline.resolve_data_dir("/from/config") == "/from/config"
  assert input_pipeline.resolve_data_dir(None) == "/from/env"
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert input_pipeline.resolve_data_dir(None) == os.path.expanduser("~/tensorflow_datasets")


def missing_data_config(tmp_path, download):
  config = default.get_config().dataset
  config.data_dir, config.cache_dir, config.download = str(tmp_path), "", download
  return config


def test_missing_data_without_download_says_how_to_get_it(tmp_path):
  with pytest.raises(input_pipeline.DataNotFoundError) as error:
    input_pipeline.load_dataset(missing_data_config(tmp_path, download=False))
  message = str(error.value)
  assert str(tmp_path) in message and "TFDS_DATA_DIR" in message and "download_and_prepare" in message


def test_missing_data_offline_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "_host_reachable", lambda host, timeout=5.0: False)
  with pytest.raises(input_pipeline.DataNotFoundError, match="cannot be reached"):
    input_pipeline.load_dataset(missing_data_config(tmp_path, download=True))


@requires_cifar10
def test_real_cifar10_has_the_standard_splits(real_cache_dir):
  config = default.get_config().dataset
  config.data_dir, config.cache_dir, config.validation_size = real_cifar10_dir(), real_cache_dir, 5000
  data = input_pipeline.load_dataset(config)
  assert len(data.train) == 45_000 and len(data.eval_splits["val"]) == 5_000
  assert len(data.eval_splits["test"]) == 10_000 and data.num_classes == 10
  assert np.bincount(data.eval_splits["test"].labels).tolist() == [1000] * 10
  assert 0.4 < float(data.mean_image.mean()) < 0.55  # CIFAR-10's mean pixel is about 0.47


@pytest.mark.parametrize("where", ["an empty folder", "a file"])
def test_train_py_without_the_data_is_one_message_saying_what_to_set(tmp_path, where):
  data_dir = tmp_path / "tensorflow_datasets"
  data_dir.mkdir() if where == "an empty folder" else data_dir.write_text("")
  config = make_tiny_config()  # dataset.download=False: offline, whatever this machine can reach
  command = [
    sys.executable,
    "train.py",
    "--config=configs/default.py",
    *config_flags(config),
    f"--workdir={tmp_path}/r",
  ]
  result = subprocess.run(
    command, cwd=REPO, env=process_env(1, TFDS_DATA_DIR=str(data_dir)), capture_output=True, text=True
  )
  assert result.returncode == cli.EXIT_CONFIG, result.stderr[-2000:]
  assert "Traceback" not in result.stderr and "already prepared" not in result.stderr
  expected = "Dataset 'cifar10' is not prepared in" if where == "an empty folder" else "The TFDS data dir"
  assert result.stderr.startswith(f"Error: {expected} {data_dir}")
  assert "TFDS_DATA_DIR" in result.stderr
