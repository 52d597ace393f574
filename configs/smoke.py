"""The paper's pipeline shrunk to a few minutes on a CPU.

    python main.py --config configs/smoke.py
    python main.py --config configs/smoke.py \
        --config.dataset.name=image_folder --config.dataset.data_dir=ROOT

A small PreActResNet (3 stages of one block, width 16), batch 128, 3 epochs
with the learning rate 0.1 divided by 10 after epoch 2, SAGE with the
CIFAR-10 settings. The data is CIFAR-10 from tfds (downloaded into the tfds
data dir on first use when online), or any image folder ROOT with
ROOT/train/<class>/* and ROOT/test/<class>/* (`python -m sage_jax.datasets
subset` writes a small one). Not a paper setting: see docs/method.md.
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
