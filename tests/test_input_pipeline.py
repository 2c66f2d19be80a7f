"""The input pipeline: loading from TFDS, caching, splitting, and the on-device augmentation."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from depthlab import batches, cli, errors, input_pipeline
from tests.conftest import REPO, config_flags, make_tiny_config, process_env, real_cifar10_dir, requires_cifar10


def imagenette_config(tiny_config):
  config = tiny_config
  config.dataset.name, config.dataset.test_split = "imagenette/160px-v2", "validation"
  config.dataset.image_size, config.dataset.augmentation = 28, "random_resized_crop"
  return config


def missing_data_config(tmp_path, download):
  config = default.get_config().dataset
  config.data_dir, config.cache_dir, config.download = str(tmp_path), "", download
  return config


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


def test_imagenette_loads_at_8_7_of_the_image_size_with_a_per_channel_mean(tiny_config):
  with tfds.testing.mock_data(num_examples=20):  # random images of random sizes
    dataset = input_pipeline.load_dataset(imagenette_config(tiny_config).dataset)
  assert dataset.train.images.shape == (20, 32, 32, 3) and dataset.eval_splits["test"].images.shape[1:] == (32, 32, 3)
  assert dataset.mean_image.shape == (3,) and dataset.num_classes == 10
  assert batches.input_shape(tiny_config.dataset, dataset.train.images.shape[1:]) == (28, 28, 3)


def test_data_dir_comes_from_config_then_environment(monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", "/from/env")
  assert input_pipeline.resolve_data_dir("/from/config") == "/from/config"
  assert input_pipeline.resolve_data_dir(None) == "/from/env"
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert input_pipeline.resolve_data_dir(None) == os.path.expanduser("~/tensorflow_datasets")


def test_missing_data_without_download_says_how_to_get_it(tmp_path):
  with pytest.raises(errors.DataNotFoundError) as error:
    input_pipeline.load_dataset(missing_data_config(tmp_path, download=False))
  message = str(error.value)
  assert str(tmp_path) in message and "TFDS_DATA_DIR" in message and "download_and_prepare" in message


def test_missing_data_offline_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setattr(input_pipeline, "_host_reachable", lambda host, timeout=5.0: False)
  with pytest.raises(errors.DataNotFoundError, match="cannot be reached"):
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
