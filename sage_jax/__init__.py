"""sage_jax: SAGE (Saliency-Guided Mixup with Optimal Rearrangements) in JAX/Flax.

The library is `sage_jax.augment` (jax and numpy only); the training program
is `sage_jax.cli.run` (the `sage-jax-train` command, or `python main.py`).
"""

# The package version, written only here: pyproject.toml reads it.
__version__ = "0.1.0"
