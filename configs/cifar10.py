"""CIFAR-10, PreActResNet18, SAGE: the paper's run with the released code's settings.

    python main.py --config configs/cifar10.py [--config.dataset.data_dir=DIR]

CIFAR-10 comes from tfds: from DIR (default $TFDS_DATA_DIR or
~/tensorflow_datasets), downloaded there when missing and online
(--config.dataset.download=False forbids it). Any image folder works instead:
--config.dataset.name=image_folder --config.dataset.data_dir=ROOT. Every field
is documented in sage_jax/config.py and the README, and the source of each
number in docs/method.md; override any of them on the command line as
--config.<field>=<value>.
"""
from sage_jax import config as config_lib


def get_config():
  # The base configuration is this run: PreActResNet18, u = 0.6, η = 0.7.
  config = config_lib.base_config()
  # Co-Mixup's published CIFAR-10 lr (--config.method=co_mixup); the
  # supplement reports that 0.2, every other method's lr, diverged.
  config.co_mixup.learning_rate = 0.12
  return config
