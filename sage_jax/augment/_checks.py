"""Input validation shared by the augmentation functions.

Shape checks always run (shapes are static under `jax.jit`). Value checks
(negative saliency, out-of-range labels, ...) need concrete arrays, so they run
only when the argument is not a tracer: eagerly, or on Python/NumPy inputs.
Under `jax.jit`, int labels can still be checked on request
(`check_labels=True` with `jax.experimental.checkify`, see `to_targets`).
"""
import sys
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
  """True when `x` holds actual values (not a tracer inside jit/vmap/grad)."""
  return not isinstance(x, jax.core.Tracer)


def describe(value: Any) -> str:
  """A short description of `value` for error messages."""
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    return f"an array of shape {tuple(value.shape)}"
  if isinstance(value, (tuple, list)):
    return f"a {type(value).__name__} of {len(value)}"
  return f"a {type(value).__name__}"


def check_scalar_loss(name: str, loss: Any) -> None:
  """Raises TypeError unless the loss function `name` returned a scalar loss."""
  if jnp.shape(loss) != ():
    raise TypeError(
        f"`{name}` must return a scalar loss; got {describe(loss)}. Reduce it, "
        "e.g. with `.mean()`.")


def check_rank(name: str, x: Any, rank: int, layout: str) -> None:
  if jnp.ndim(x) != rank:
    raise ValueError(
        f"`{name}` must have rank {rank} with layout {layout}; got shape "
        f"{jnp.shape(x)}.")


# The most channels of a common image format (gray, gray+alpha, RGB, RGBA).
_MAX_IMAGE_CHANNELS = 4


def check_static(name: str, value: Any, function: str,
                 static_argnames: Sequence[str]) -> None:
  """Raises TypeError when `value` (an option fixing shapes) is traced.

  `jax.jit(f)(..., num_classes=10)` traces every argument, keyword ones
  included, so shape-setting options arrive as tracers; the fix is to mark
  them static, which the message spells out for `function`.
  """
  if isinstance(value, jax.core.Tracer):
    raise TypeError(
        f"`{name}` is traced, but it fixes array shapes, so it must be a Python "
        f"value: jit with `jax.jit({function}, static_argnames="
        f"{tuple(static_argnames)!r})`, or bind it first with "
        f"`functools.partial({function}, {name}=...)`.")


def check_layout(name: str, x: Any) -> None:
  """Rejects a rank-4 array that looks NCHW where NHWC is expected.

  It looks NCHW when its last dimension is larger than any image format's
  channel count (> 4) and larger than dimension 1 (an image has more rows
  than channels; an NCHW batch has fewer). A genuine NHWC input with more
  than 4 channels and no more rows than channels is therefore rejected too.
  """
  shape = jnp.shape(x)
  if (len(shape) == 4 and shape[3] > _MAX_IMAGE_CHANNELS
      and shape[3] > shape[1]):
    raise ValueError(
        f"`{name}` has shape {shape}, which looks like NCHW (B, C, H, W); the "
        "augmentations take NHWC (B, H, W, C). Transpose first: "
        f"`{name}.transpose(0, 2, 3, 1)`.")


def check_images(images: Any) -> None:
  check_rank("images", images, 4, "(B, H, W, C)")
  check_layout("images", images)
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


def reject_nnx_modules(name: str, tree: Any) -> None:
  """Raises TypeError when `tree` is or holds a Flax NNX `Module`.

  A module where a pytree of arrays is expected still flattens (NNX modules
  are pytrees), so `jax.grad` runs, but the updates its call makes to the
  module (BatchNorm statistics, RNG counts) land on a traced copy and are
  dropped. flax is only looked up if the caller already imported it.
  """
  nnx = sys.modules.get("flax.nnx")
  if nnx is None:
    return
  is_module = lambda node: isinstance(node, nnx.Module)
  if any(is_module(leaf) for leaf in jax.tree.leaves(tree, is_leaf=is_module)):
    raise TypeError(
        f"`{name}` holds an nnx.Module; here it would be traced as a plain "
        "pytree and its BatchNorm statistics would never be updated. Use "
        "`augment.nnx_sage_value_and_grad`, which takes the module (or "
        "`nnx.split(model, nnx.Param, ...)`), or pass the `nnx.split` states "
        "and merge them in your loss function.")


def _check_labels_traced(labels: jax.Array, num_classes: int) -> None:
  """`checkify` check that traced int labels lie in [0, num_classes)."""
  from jax.experimental import checkify  # pylint: disable=g-import-not-at-top
  in_range = jnp.all((labels >= 0) & (labels < num_classes))
  # Staged without `checkify.checkify`, JAX fails at lowering with "Cannot
  # abstractly evaluate a checkify.check which was not functionalized".
  checkify.check(
      in_range, f"`labels` must lie in [0, num_classes={num_classes}); got "
      "values in [{low}, {high}].", low=jnp.min(labels), high=jnp.max(labels))


def to_targets(labels: Any, batch_size: int, num_classes: Optional[int],
               check_labels: bool = False) -> jax.Array:
  """Returns float32 targets (B, K) from int labels (B,) or float labels (B, K).

  Concrete int labels are always range-checked. Traced ones (under jit) are
  not by default: an out-of-range label then becomes an all-zero target row
  (`jax.nn.one_hot`). With `check_labels=True` a `checkify` check is added
  instead, reported when the caller runs under
  `jax.experimental.checkify.checkify`.

  Raises:
    ValueError: on a wrong rank or batch size, int labels without
      `num_classes`, labels outside [0, num_classes), or a `num_classes` that
      disagrees with float labels. (With `check_labels=True` under jit but
      not under `checkify.checkify`, JAX raises its own ValueError, "Cannot
      abstractly evaluate a checkify.check which was not functionalized".)
    TypeError: if `num_classes` is traced.
  """
  labels_dtype = jnp.result_type(labels)
  shape = jnp.shape(labels)
  check_static("num_classes", num_classes, "f", ("num_classes",))
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
    elif check_labels:
      _check_labels_traced(labels, num_classes)
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


def check_saliency(saliency: Any, images_shape, example: str) -> None:
  """`saliency` must be (B, H, W) matching `images` and non-negative (when concrete).

  `example` names a function that gives valid maps, for the error message.
  """
  batch, height, width = images_shape[:3]
  check_rank("saliency", saliency, 3, "(B, H, W)")
  if jnp.shape(saliency) != (batch, height, width):
    raise ValueError(
        f"`saliency` must have shape (B, H, W) = {(batch, height, width)} to "
        f"match `images`; got {jnp.shape(saliency)}.")
  if is_concrete(saliency) and np.any(np.asarray(saliency) < 0):
    raise ValueError(
        f"`saliency` must be non-negative (e.g. {example}); got negative values.")
