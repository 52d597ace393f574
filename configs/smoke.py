"""The paper's pipeline shrunk to a few minutes on 2 CPU cores.

    python main.py --config configs/smoke.py \
        --config.dataset.name=image_folder \
        --config.dataset.data_dir=/tmp/cifar10-jpeg

A small PreActResNet (3 stages of one block, width 16), a short learning-rate
schedule, SAGE with the CIFAR-10 settings. /tmp/cifar10-jpeg is CIFAR-10 as
an image folder (train/<class>/*, test/<class>/*).
"""
from sage_jax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.name = "preactresnet8"
  config.model.width = 16
  config.batch_size = 128
  config.eval_batch_size = 1000
  config.num_epochs = 3
  config.learning_rate = 0.1
  config.lr_boundaries = (2,)
  config.log_every_steps = 50
  return config
