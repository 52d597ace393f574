"""BatchNorm with PyTorch's running-variance rule, shared by every model.

Why not ``flax.linen.BatchNorm``: the paper's numbers come from PyTorch's
``nn.BatchNorm2d``, which normalises a training batch with the *biased* batch
variance (divide by n) but folds the *unbiased* one (divide by n - 1) into its
running variance. flax folds the biased one in, so after every step the
running variance is smaller by the factor (n - 1) / n, and eval-mode outputs
drift from the reference (7.7e-5 relative after one step at batch 128, see
issue 12). This module does exactly what flax's BatchNorm does except for that
one factor:

* train mode (``use_running_average=False``): per channel, over every other
  axis, ``mean = E[x]`` and ``var = max(0, E[x^2] - mean^2)`` (biased),
  reduced in at least float32. The output is
  ``(x - mean) * rsqrt(var + epsilon) * scale + bias``. The running statistics
  become::

      running_mean <- momentum * running_mean + (1 - momentum) * mean
      running_var  <- momentum * running_var
                      + (1 - momentum) * var * n / (n - 1)

  with n the number of values each channel's statistic was computed over
  (N * H * W for NHWC input). With ``axis_name`` set (cross-device BN inside
  ``shard_map`` / ``pmap``) the mean and E[x^2] are averaged over that axis
  and n is the *global* count, the local count times the axis size.
* eval mode: normalises with the running statistics and changes nothing.
* while ``init`` runs, the running statistics keep their initial values
  (0 and 1), as in flax, and ``axis_name`` is not used.

``momentum`` follows flax's convention, the weight of the *old* running value:
flax 0.9 is PyTorch's ``momentum=0.1``.

Variables, names and dtypes are those of ``flax.linen.BatchNorm``, so existing
checkpoints load unchanged: params ``scale`` (ones) and ``bias`` (zeros), and
'batch_stats' ``mean`` (zeros) and ``var`` (ones), all float32 of shape (C,).
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
import flax.linen as nn

Dtype = Any


def unbiased_correction(count: int) -> float:
  """Bessel's factor n / (n - 1) that turns a biased variance into PyTorch's
  unbiased running-variance update.

  Args:
    count: values per channel the batch statistic was computed over (global
      count in cross-device BN), a Python int.

  Raises:
    ValueError: count < 2. PyTorch refuses this too ("Expected more than 1
      value per channel when training"); the unbiased variance is undefined.
  """
  if count < 2:
    raise ValueError(
        "BatchNorm in train mode needs more than 1 value per channel to update "
        f"its running variance (PyTorch's unbiased rule divides by n - 1), got "
        f"n = {count}. Use a larger batch or larger images, or run the model "
        "with train=False.")
  return count / (count - 1)


class BatchNorm(nn.Module):
  """Batch normalisation over the last (channel) axis, PyTorch semantics.

  Input x: floating array (..., C), e.g. NHWC (N, H, W, C); the statistics are
  per channel over every other axis. Output: same shape, dtype ``dtype`` (or
  the promoted dtype of x and the float32 parameters when ``dtype`` is None).
  Normalisation arithmetic runs in at least float32 whatever ``dtype`` is, so
  a bfloat16 model keeps float32 statistics, parameters and running values.

  Attributes:
    use_running_average: True (eval) normalises with the running statistics;
      False (train) uses and folds in the batch statistics.
    momentum: flax momentum in [0, 1], the weight of the old running value.
    epsilon: added to the variance before the reciprocal square root, > 0.
    dtype: output (computation) dtype, or None to infer it.
    axis_name: mapped axis to average the batch statistics over, or None.

  Raises (when called):
    TypeError: x is not a floating array.
    ValueError: x has fewer than 2 dimensions; momentum outside [0, 1] or
      epsilon <= 0; a train-mode call whose statistic covers fewer than 2
      values per channel (see :func:`unbiased_correction`).
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Dtype | None = None
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"BatchNorm input x must be a floating array, got dtype "
                      f"{x.dtype}; cast it, e.g. x.astype(jnp.float32)")
    if x.ndim < 2:
      raise ValueError(f"BatchNorm input x must have a batch and a channel "
                       f"axis (ndim >= 2), got shape {x.shape}")
    if not 0.0 <= self.momentum <= 1.0:
      raise ValueError(f"momentum must be in [0, 1] (flax convention, weight "
                       f"of the old value), got {self.momentum}")
    if not self.epsilon > 0:
      raise ValueError(f"epsilon must be > 0, got {self.epsilon}")

    features = x.shape[-1]
    reduction_axes = tuple(range(x.ndim - 1))
    running_mean = self.variable("batch_stats", "mean", jnp.zeros,
                                 (features,), jnp.float32)
    running_var = self.variable("batch_stats", "var", jnp.ones,
                                (features,), jnp.float32)

    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      # Statistics in at least float32 (bf16 sums of 32x32xN values would
      # lose most of their digits), one-pass E[x^2] - E[x]^2 as flax does so
      # the forward pass is unchanged from flax's BatchNorm.
      stats_dtype = jnp.promote_types(
          x.dtype if self.dtype is None else self.dtype, jnp.float32)
      x_stats = x.astype(stats_dtype)
      mean = x_stats.mean(reduction_axes)
      mean_sq = lax.square(x_stats).mean(reduction_axes)
      count = math.prod(x.shape[a] for a in reduction_axes)
      # The axis only exists under shard_map/pmap; init runs outside it.
      if self.axis_name is not None and not self.is_initializing():
        # One collective for both moments; equal shard shapes (shard_map),
        # so the mean of per-device means is the global mean.
        mean, mean_sq = lax.pmean(jnp.stack([mean, mean_sq]), self.axis_name)
        count *= lax.axis_size(self.axis_name)
      # Round-off can make the one-pass variance slightly negative.
      var = jnp.maximum(0.0, mean_sq - lax.square(mean))

      if not self.is_initializing():
        correction = unbiased_correction(count)
        running_mean.value = (self.momentum * running_mean.value
                              + (1.0 - self.momentum) * mean)
        running_var.value = (self.momentum * running_var.value
                             + (1.0 - self.momentum) * (var * correction))

    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    # x - mean promotes a bf16 x to float32: the arithmetic is float32 and
    # only the result is cast to the computation dtype.
    multiplier = lax.rsqrt(var + self.epsilon) * scale
    y = (x - mean) * multiplier + bias
    out_dtype = (jnp.result_type(x, scale, bias) if self.dtype is None
                 else self.dtype)
    return y.astype(out_dtype)
