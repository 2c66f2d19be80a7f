"""depthlab/batches.py: the data order of each step and epoch, and the augmentation, on the devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from depthlab import batches


def numpy_pad_crop_flip(images, offsets, flips, padding):
  """The reference: pad with zeros, crop each image at its offset, mirror left-right."""
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  out = np.stack([padded[i, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets)])
  return np.where(flips[:, None, None, None], out[:, :, ::-1], out)


def test_pad_crop_flip_matches_numpy():
  images = np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype(np.float32)
  offsets, flips = batches.sample_augmentation(jax.random.key(0), 64, padding=4, flip=True)
  got = jax.jit(batches.pad_crop_flip, static_argnums=3)(images, offsets, flips, 4)
  assert got.dtype == jnp.float32 and got.shape == images.shape
  np.testing.assert_array_equal(got, numpy_pad_crop_flip(images, np.asarray(offsets), np.asarray(flips), 4))


def test_crop_at_the_centre_without_flip_is_the_identity():
  images = np.arange(2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3)
  got = batches.pad_crop_flip(images, jnp.full((2, 2), 4), jnp.zeros(2, bool), 4)
  np.testing.assert_array_equal(got, images)


def test_corner_crop_brings_in_zero_padding_and_flip_mirrors():
  images = np.ones((1, 32, 32, 1), np.float32)
  got = np.asarray(batches.pad_crop_flip(images, jnp.zeros((1, 2), int), jnp.ones(1, bool), 4))
  assert got[0, :4].sum() == 0  # top rows come from the padding
  assert got[0, 4:, -4:].sum() == 0 and got[0, 4:, :-4].min() == 1  # flipped: padding on the right


def test_augmentation_samples_cover_the_range_and_flip_half():
  offsets, flips = batches.sample_augmentation(jax.random.key(1), 20_000, padding=4, flip=True)
  assert offsets.dtype == jnp.int32 and flips.dtype == jnp.bool_
  assert set(np.unique(offsets).tolist()) == set(range(9))
  assert 0.48 < float(flips.mean()) < 0.52
  _, no_flips = batches.sample_augmentation(jax.random.key(1), 100, padding=4, flip=False)
  assert not no_flips.any()


def test_normalize_scales_to_unit_range_and_subtracts_the_mean():
  images = np.full((1, 2, 2, 3), 255, np.uint8)
  mean = np.full((2, 2, 3), 0.25, np.float32)
  got = batches.normalize(images, mean)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, 0.75)


def test_each_epoch_visits_every_example_once_in_a_new_order():
  key, n, batch = jax.random.key(0), 100, 10
  epoch = lambda e: np.concatenate([batches.global_batch_indices(key, s, n, batch) for s in range(e * 10, e * 10 + 10)])
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
  read = jax.jit(batches.batch_indices, static_argnums=2)
  for first_epoch in range(3):
    orders = batches.epoch_orders(key, first_epoch, num_epochs, num_examples)
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
        batches.global_batch_indices(key, step, num_examples, batch_size),
        batch_before_epoch_orders(key, step, num_examples, batch_size),
      )


def test_last_partial_batch_of_an_epoch_is_skipped():
  indices = [batches.global_batch_indices(jax.random.key(0), s, 25, 10) for s in range(2)]
  assert len(set(np.concatenate(indices).tolist())) == 20


def test_batch_larger_than_dataset_is_an_error():
  with pytest.raises(ValueError, match="larger than the 8 training examples"):
    batches.global_batch_indices(jax.random.key(0), 0, 8, 16)


def test_random_crop_boxes_lie_inside_the_image_with_the_asked_areas_and_ratios():
  boxes = np.asarray(batches.sample_crop_boxes(jax.random.key(0), 4096, 256))
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
  whole = batches.crop_and_resize(image, jnp.array([[0.0, 0.0, 16.0, 16.0]]), 8)
  np.testing.assert_allclose(whole, jax.image.resize(image, (1, 8, 8, 3), "linear", antialias=False), atol=1e-3)
  corner = batches.crop_and_resize(image, jnp.array([[0.0, 0.0, 8.0, 8.0]]), 8)
  np.testing.assert_allclose(corner, image[:, :8, :8], atol=1e-3)  # 8x8 to 8x8: the pixels themselves


def test_evaluation_sees_the_centre_crop():
  images = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
  out = batches.eval_images(jnp.asarray(images), jnp.zeros(3), 4)
  np.testing.assert_allclose(out, images[:, 1:5, 1:5] / 255.0, rtol=1e-6)
  assert batches.eval_images(jnp.asarray(images), jnp.zeros(3), 0).shape == (2, 6, 6, 3)


def test_random_resized_crops_do_not_depend_on_the_number_of_devices():
  config = default.get_config().dataset
  config.image_size, config.augmentation = 8, "random_resized_crop"
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 9, 9, 3), np.uint8))
  key, mean = jax.random.key(1), jnp.full(3, 0.5)
  whole = batches.augment(images, mean, key, config, 4, lambda x: x)
  halves = [batches.augment(images[i : i + 2], mean, key, config, 4, lambda x, i=i: x[i : i + 2]) for i in (0, 2)]
  assert whole.shape == (4, 8, 8, 3)
  np.testing.assert_allclose(np.concatenate(halves), whole, rtol=1e-6)
