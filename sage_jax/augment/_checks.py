"""Input validation shared by the augmentation functions.

Shape checks always run (shapes are static under `jax.jit`). Value checks
(negative saliency, out-of-range labels, ...) need concrete arrays, so they run
only when the argument is not a tracer: eagerly, or on Python/NumPy inputs.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` holds actual values (not a tracer inside jit/vmap/grad)."""
  return not isinstance(x, jax.core.Tracer)


def check_rank(name: str, x: Any, rank: int, layout: str) -> None:
  if jnp.ndim(x) != rank:
    raise ValueError(
        f"`{name}` must have rank {rank} with layout {layout}; got shape "
        f"{jnp.shape(x)}.")


def check_images(images: Any) -> None:
  check_rank("images", images, 4, "(B, H, W, C)")
  if any(d < 1 for d in jnp.shape(images)):
    raise ValueError(f"`images` must be non-empty; got shape {jnp.shape(images)}.")
  if not jnp.issubdtype(jnp.result_type(images), jnp.floating):
    raise ValueError(
        "`images` must be a floating array (normalised pixels); got dtype "
        f"{jnp.result_type(images)}. Convert with `images.astype(jnp.float32)`.")


def check_positive(name: str, value: Any) -> None:
  if is_concrete(value) and not float(value) > 0:
    raise ValueError(f"`{name}` must be > 0; got {value}.")


def check_unit_interval(name: str, value: Any) -> None:
  if is_concrete(value) and not 0.0 <= float(value) <= 1.0:
    raise ValueError(f"`{name}` must lie in [0, 1]; got {value}.")


def to_targets(labels: Any, batch_size: int, num_classes: Optional[int]) -> jax.Array:
  """Returns float32 targets (B, K) from int labels (B,) or float labels (B, K).

  Raises:
    ValueError: on a wrong rank or batch size, int labels without
      `num_classes`, labels outside [0, num_classes), or a `num_classes` that
      disagrees with float labels.
  """
  labels_dtype = jnp.result_type(labels)
  shape = jnp.shape(labels)
  if num_classes is not None and (not isinstance(num_classes, (int, np.integer))
                                  or num_classes < 1):
    raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}.")
  if jnp.issubdtype(labels_dtype, jnp.integer):
    if len(shape) != 1:
      raise ValueError(
          f"integer `labels` must have shape (B,); got {shape}. Pass float "
          "one-hot or soft labels of shape (B, K) instead, or flatten them.")
    if num_classes is None:
      raise ValueError(
          "integer `labels` need `num_classes` (e.g. num_classes=10) to build "
          "one-hot targets; or pass float labels of shape (B, K).")
    if shape[0] != batch_size:
      raise ValueError(
          f"`labels` has batch size {shape[0]} but `images` has {batch_size}.")
    if is_concrete(labels):
      values = np.asarray(labels)
      if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"`labels` must lie in [0, num_classes={num_classes}); got values in "
            f"[{values.min()}, {values.max()}].")
    return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if jnp.issubdtype(labels_dtype, jnp.floating):
    if len(shape) != 2:
      raise ValueError(
          f"float `labels` must have shape (B, K) (one-hot or soft); got {shape}.")
    if shape[0] != batch_size:
      raise ValueError(
          f"`labels` has batch size {shape[0]} but `images` has {batch_size}.")
    if num_classes is not None and num_classes != shape[1]:
      raise ValueError(
          f"`num_classes`={num_classes} disagrees with float `labels` of shape "
          f"{shape}; drop `num_classes` or fix the labels.")
    return jnp.asarray(labels, jnp.float32)
  raise ValueError(
      f"`labels` must be int (B,) or float (B, K); got dtype {labels_dtype}.")
