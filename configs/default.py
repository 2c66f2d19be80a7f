"""The base config: He et al. 2015's CIFAR-10 recipe (section 4.2) for ResNet-56, with one departure:
a warm-up at every depth, the rate rising from 0.01 to 0.1 over the first 400 steps (see
warmup_steps below).

Train it with:

    python train.py --config=configs/default.py     # ResNet-56, as configs/resnet56.py

Every experiment file in configs/ imports `get_config` from here and overrides a few
fields. Any field can be overridden on the command line, e.g. `--config.model.depth=110`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  # fmt: off
  # One field a line, its comment beside it: the recipe reads as a table (and a test checks
  # that every field has its comment), so the formatter leaves this function's lines alone.
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = "cifar_resnet"  # a name in nets.names()
  config.model.depth = 56  # 6n+2 layers: 20, 32, 44, 56, 110, 1202
  config.model.residual = True  # False: the plain net, same layers without shortcuts
  config.model.shortcut = "A"  # where the shape changes: "A" zero-pad (no params), "B" 1x1 conv
  config.model.zero_init_residual = False  # residual blocks start as the identity (not the paper's; no plain equivalent)

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "cifar10"  # a TFDS image classification dataset
  config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # None: $TFDS_DATA_DIR, else ~/tensorflow_datasets
  config.dataset.download = True  # prepare the data with TFDS when it is missing (needs a network)
  config.dataset.validation_size = 0  # hold out the last N train images (the paper's 45k/5k split: 5000)
  config.dataset.cache_dir = "~/.cache/depthlab"  # decoded uint8 arrays are cached here; "" turns it off
  config.dataset.crop_padding = 4  # zero-pad each side by this, then crop back at random
  config.dataset.random_flip = True  # horizontal flip with probability 1/2
  config.dataset.test_split = "test"  # the split reported as test_* (imagenette: "validation")
  config.dataset.image_size = 0  # ImageNet-sized input: the net sees image_size^2 crops of images stored at 8/7 of it; 0: as stored
  config.dataset.augmentation = "pad_crop_flip"  # CIFAR's; "random_resized_crop": ImageNet's (needs image_size)

  config.batch_size = 128  # global: split evenly over all devices of all processes
  config.total_steps = 64_000  # training iterations
  config.learning_rate = 0.1  # SGD learning rate after warm-up
  config.lr_boundaries = (32_000, 48_000)  # steps at which the rate is multiplied by lr_decay
  config.lr_decay = 0.1  # factor applied at each boundary
  # Departs from the paper, which warms up only its 110-layer net: every depth, plain and
  # residual alike, warms up, since the paper's 0.1 from step 1 blows up and kills ResNet-56
  # at some seeds (docs/recipe.md). The paper's exact recipe: --config.warmup_steps=0.
  config.warmup_steps = 400  # the warm-up's length, in steps
  config.warmup_learning_rate = 0.01  # where the warm-up starts ("linear"), or its rate throughout ("constant")
  # Linear: the step to 0.1 after a constant 0.01 sent ResNet-56's training error up 34 points; a ramp, 2 at most (docs/recipe.md).
  config.warmup_shape = "linear"  # "linear": a ramp from warmup_learning_rate to learning_rate; "constant": the paper's 110-layer warm-up, then a step
  config.momentum = 0.9  # SGD momentum
  config.weight_decay = 1e-4  # L2 penalty on every parameter, added to the gradient
  config.aux_loss_weight = 0.3  # weight of each auxiliary classifier's loss (GoogLeNet's two heads; the paper's 0.3)

  config.dtype = "float32"  # compute dtype of the network; params and BN statistics stay float32
  config.parallelism = "pmap"  # "pmap" or "shard_map" (jax.jit over a device mesh)
  config.num_devices = 0  # local devices to train on; 0: all of them
  config.cross_replica_bn = False  # batch-norm statistics over the global batch instead of per device
  config.steps_per_dispatch = 1  # train steps per host dispatch (a lax.scan); more hides dispatch latency on accelerators
  config.compilation_cache_dir = "~/.cache/depthlab/jax"  # compiled steps kept for the next start (a resume skips compiling); "": off
  config.conv_weight_grad = "auto"  # convolutions' weight gradient: "patches" (fast on CPU), "lax", "auto": patches on CPU only
  config.num_seeds = 1  # K > 1: train seeds seed .. seed+K-1 in one step (see docs/sweeps.md)
  config.seed_batching = "auto"  # several seeds: "vmap" (fills an accelerator), "loop" (faster on CPU), auto: loop on CPU

  config.log_every_steps = 100  # write training metrics (averaged since the last line) this often
  config.collapse_steps = 2_000  # steps in a row at chance (every log line), after the warm-up, that raise the alarm
  config.stop_on_collapse = True  # and then stop, the checkpoint kept (docs/recipe.md); False trains on
  config.log_grad_norms = False  # also log the gradient norm of each block (grad_norm/<block>)
  config.eval_every_steps = 1_000  # evaluate the whole test split this often, and at the end
  config.checkpoint_every_steps = 1_000  # save the train state this often, and at the end
  config.keep_checkpoints = 3  # how many of the newest checkpoints to keep
  config.profile_first_step = 0  # trace profile_steps steps from this one into <workdir>/profile (jax.profiler); 0: off
  config.profile_steps = 5  # how many steps the profile traces
  config.restart = False  # delete the workdir's checkpoints and train from step 0
  config.eval_batch_size = 1_000  # images per evaluation chunk (global)
  config.seed = 0  # seeds the initialisation, the data order and the augmentation
  config.experiment = ""  # runs of one experiment (sweep) share it: workdir runs/<experiment>/<run name>

  config.wandb = ml_collections.ConfigDict()
  config.wandb.mode = "auto"  # auto: $WANDB_MODE, else online with credentials, else offline; or online/offline/disabled
  config.wandb.project = "depthlab"  # wandb project
  config.wandb.entity = ml_collections.config_dict.placeholder(str)  # wandb entity (team); None: your default
  config.wandb.group = ml_collections.config_dict.placeholder(str)  # runs grouped under this name

  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialize = False  # join a multi-process run (also done when a coordinator address is set, or under srun/mpirun with several tasks)
  config.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)  # host:port of process 0; None: $JAX_COORDINATOR_ADDRESS, else detected
  config.distributed.num_processes = ml_collections.config_dict.placeholder(int)  # None: $JAX_NUM_PROCESSES, else detected
  config.distributed.process_id = ml_collections.config_dict.placeholder(int)  # None: $JAX_PROCESS_ID, else detected
  config.distributed.initialization_timeout = 120  # seconds to wait for the coordinator and all processes
  # fmt: on

  return config
