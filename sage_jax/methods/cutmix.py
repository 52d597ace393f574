"""CutMix (Yun et al., 2019): a box of the partner pasted into each image."""
import ml_collections

from sage_jax import augment
from sage_jax.methods import base


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.alpha = 1.0   # Beta(α, α) of the box area; the paper's CIFAR setting
  return config


METHOD = base.input_mixing_method(
    "cutmix", "CutMix: one random box per batch, label weight = kept area",
    augment.cutmix, default_config, {"alpha": base.POSITIVE})
