"""Saliency maps from input gradients (docs/method.md §1, steps 2-3)."""

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.augment import _checks


def gaussian_taps(sigma: float, kernel_size: int) -> jax.Array:
  """1-D Gaussian taps `exp(-t²/2σ²)`, t = -(k//2)..k//2, normalised to sum 1.

  Returns:
    float32 (kernel_size,). The 2-D smoothing kernel is their outer product.
  """
  half = kernel_size // 2
  t = jnp.arange(-half, half + 1, dtype=jnp.float32)
  taps = jnp.exp(-(t * t) / (2.0 * jnp.asarray(sigma, jnp.float32) ** 2))
  return taps / jnp.sum(taps)


def _smooth_axis(x: jax.Array, taps: jax.Array, axis: int) -> jax.Array:
  """Correlates the (already padded) `x` with `taps` along `axis` ('valid')."""
  out_len = x.shape[axis] - taps.shape[0] + 1
  terms = [
      taps[k] * jax.lax.slice_in_dim(x, k, k + out_len, axis=axis)
      for k in range(taps.shape[0])
  ]
  return sum(terms[1:], terms[0])


def saliency_map(input_grads: jax.Array, *, sigma: float = 1.0,
                 kernel_size: int = 5) -> jax.Array:
  """SAGE saliency: mean |∂ℓ/∂x| over channels, then Gaussian smoothing.

  Follows the released code (docs/method.md §1, steps 2-3): the channel reduction is the mean
  absolute value (the paper's text says ℓ2 norm), and the smoothing is a
  separable `kernel_size`² Gaussian with *reflect* padding (the edge pixel is
  not repeated, as `jnp.pad(mode='reflect')`).

  Args:
    input_grads: (B, H, W, C) float gradient of the loss w.r.t. the normalised
      input images.
    sigma: standard deviation of the Gaussian, > 0.
    kernel_size: odd positive int (a Python int: it fixes shapes).

  Returns:
    float32 (B, H, W) non-negative saliency maps. Gradients do not flow
    through them (they are a constant for the mixing).

  Raises:
    ValueError: if `input_grads` is not rank 4, looks NCHW (see `sage`'s
      `images`) or is not floating, if `kernel_size` is not an odd positive
      int, or `sigma` is not > 0.
    TypeError: if `kernel_size` is traced (mark it static under jit).
  """
  _checks.check_rank("input_grads", input_grads, 4, "(B, H, W, C)")
  _checks.check_layout("input_grads", input_grads)
  _checks.check_static("kernel_size", kernel_size, "augment.saliency_map",
                       ("kernel_size",))
  if not jnp.issubdtype(jnp.result_type(input_grads), jnp.floating):
    raise ValueError(
        f"`input_grads` must be floating; got {jnp.result_type(input_grads)}.")
  if (not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1
      or kernel_size % 2 == 0):
    raise ValueError(f"`kernel_size` must be an odd positive int; got {kernel_size!r}.")
  _checks.check_positive("sigma", sigma)
  grads = jax.lax.stop_gradient(jnp.asarray(input_grads, jnp.float32))
  saliency = jnp.mean(jnp.abs(grads), axis=-1)
  half = kernel_size // 2
  if half == 0:
    return saliency
  padded = jnp.pad(saliency, ((0, 0), (half, half), (half, half)), mode="reflect")
  taps = gaussian_taps(sigma, kernel_size)
  return _smooth_axis(_smooth_axis(padded, taps, axis=1), taps, axis=2)
