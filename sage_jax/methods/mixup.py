"""Mixup (Zhang et al., 2018): x' = λ·x_i + (1-λ)·x_π(i), λ ~ Beta(α, α) per batch."""
import ml_collections

from sage_jax import augment
from sage_jax.methods import base


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.alpha = 1.0   # Beta(α, α); the paper's CIFAR setting
  return config


METHOD = base.input_mixing_method(
    "mixup", "Mixup: one λ ~ Beta(α, α) per batch, images and labels mixed",
    augment.mixup, default_config, {"alpha": base.POSITIVE})
