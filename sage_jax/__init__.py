"""sage_jax: SAGE (Saliency-Guided Mixup with Optimal Rearrangements) in JAX/Flax."""

__version__ = "0.1.0"
