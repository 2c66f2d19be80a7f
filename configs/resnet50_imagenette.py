"""ImageNet ResNet-50 as the paper built it (7x7/2 stem, max pool), on ImageNet-sized input:
imagenette (10 ImageNet classes, ~9.5k training images) at 224x224, with the standard
ImageNet augmentation (random-resized crops of 8-100% of the area, flips) and evaluation on
the centre 224x224 of images resized to 256. The recipe is the paper's ImageNet one
scaled to the small set: batch 256, SGD at 0.1 with momentum 0.9 and weight decay 1e-4,
divided by 10 twice. An accelerator's job; the training images take 1.9 GB of device memory.

Train it with:

    python train.py --config=configs/resnet50_imagenette.py

    python train.py --config=configs/resnet50_imagenette.py
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = ml_collections.ConfigDict({"name": "resnet50"})
  config.dataset.name = "imagenette/320px-v2"  # images with a shorter side of 320 pixels
  config.dataset.test_split = "validation"
  config.dataset.image_size = 224
  config.dataset.augmentation = "random_resized_crop"
  config.batch_size = 256
  config.eval_batch_size = 250
  config.total_steps = 3_700  # 100 epochs of 9,469 images
  config.lr_boundaries = (1_850, 2_775)  # half and three quarters of the way
  config.warmup_steps = 0
  config.eval_every_steps = 370
  config.checkpoint_every_steps = 370
  config.log_every_steps = 37
  return config
