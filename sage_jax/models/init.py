"""PyTorch-default initialisers and the layer constructors that apply them.

The reference SAGE code is PyTorch, so every model here starts from the
distributions PyTorch's ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d``
draw from when constructed:

* weights (conv and dense kernels): ``kaiming_uniform_(a=sqrt(5))``, i.e.
  U(-b, b) with b = gain * sqrt(3 / fan_in) and gain = sqrt(2 / (1 + 5)), so
  b = sqrt(1 / fan_in). That is exactly flax's
  ``variance_scaling(1/3, 'fan_in', 'uniform')`` (bound sqrt(3 * scale / fan_in)).
* biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), where fan_in is the fan-in of
  the layer's *kernel*. A flax ``bias_init`` only sees the bias shape
  ``(features,)``, so :func:`pytorch_bias_init` is a closure over fan_in and the
  constructors below compute fan_in from the layer's input channels.
* BatchNorm: scale 1, bias 0 (flax's defaults already); running variance
  updated with the unbiased batch variance (see ``batchnorm.py``).

Fan-in of a conv kernel of shape (kh, kw, in_channels / groups, out_channels)
is kh * kw * in_channels / groups, matching PyTorch's weight layout
(out, in / groups, kh, kw) for grouped convolutions.

The layer constructors return ordinary flax modules; call them inside a
parent's ``@nn.compact`` method so they bind to it under the given ``name``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

from sage_jax.models.batchnorm import BatchNorm

Initializer = Callable[..., jax.Array]
Dtype = Any

# PyTorch's default weight init for nn.Conv2d / nn.Linear (see module docstring).
pytorch_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform")

# He/Kaiming normal with fan_out = kh * kw * out_channels: N(0, 2 / fan_out).
# The ResNeXt reference re-initialises its convs with exactly this
# (``normal_(0, sqrt(2 / n))`` with ``n = k * k * out_channels``). flax's
# fan_out for a (kh, kw, in/groups, out) kernel is kh * kw * out, matching the
# reference even for grouped convs. 'normal' (not 'truncated_normal') because
# the reference draws from an untruncated normal.
kaiming_normal_fan_out: Initializer = nn.initializers.variance_scaling(
    2.0, "fan_out", "normal")

# PyTorch BatchNorm momentum 0.1 (weight of the new batch statistic) is flax
# momentum 0.9 (weight of the old running statistic).
DEFAULT_BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def pytorch_bias_init(fan_in: int) -> Initializer:
  """Returns a bias initialiser drawing U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Args:
    fan_in: fan-in of the kernel this bias belongs to (for a conv:
      kh * kw * in_channels / groups; for a dense layer: in_features).
  """
  if fan_in <= 0:
    raise ValueError(f"fan_in must be positive, got {fan_in}")
  bound = 1.0 / math.sqrt(fan_in)

  def init(key: jax.Array, shape, dtype: Dtype = jnp.float32) -> jax.Array:
    return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

  return init


def conv(features: int,
         kernel_size: int,
         *,
         in_features: int,
         strides: int = 1,
         use_bias: bool,
         feature_group_count: int = 1,
         kernel_init: Initializer = pytorch_kernel_init,
         dtype: Dtype = jnp.float32,
         name: str | None = None) -> nn.Conv:
  """A square 2-D convolution laid out and initialised like ``nn.Conv2d``.

  Padding is PyTorch's ``padding=kernel_size // 2`` written as explicit
  symmetric padding (1 for 3x3, 0 for 1x1). flax's 'SAME' would pad strided
  convs asymmetrically and sample different pixels than PyTorch does.

  Args:
    features: output channels.
    kernel_size: odd kernel side length k.
    in_features: input channels of the tensor the conv will be applied to;
      only used to compute the bias fan-in.
    strides: spatial stride.
    use_bias: whether to add a bias (initialised U(+-1/sqrt(fan_in))).
    feature_group_count: number of groups (``groups`` in PyTorch).
    kernel_init: kernel initialiser; PyTorch default unless overridden.
    dtype: computation dtype; parameters are always float32.
    name: submodule name inside the calling compact module.

  Returns:
    An unbound ``nn.Conv`` mapping (N, H, W, in_features) to
    (N, ceil(H / strides), ceil(W / strides), features).
  """
  if kernel_size % 2 != 1:
    raise ValueError(f"kernel_size must be odd, got {kernel_size}")
  pad = kernel_size // 2
  fan_in = (in_features // feature_group_count) * kernel_size * kernel_size
  return nn.Conv(
      features=features,
      kernel_size=(kernel_size, kernel_size),
      strides=(strides, strides),
      padding=((pad, pad), (pad, pad)),
      feature_group_count=feature_group_count,
      use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=pytorch_bias_init(fan_in),
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name)


def dense(features: int,
          *,
          in_features: int,
          dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """A biased dense layer initialised like ``nn.Linear`` (kernel and bias).

  Args:
    features: output features.
    in_features: input features; only used for the bias fan-in.
    dtype: computation dtype; parameters are always float32.
    name: submodule name inside the calling compact module.
  """
  return nn.Dense(
      features=features,
      use_bias=True,
      kernel_init=pytorch_kernel_init,
      bias_init=pytorch_bias_init(in_features),
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name)


def pooled_logits(x: jax.Array, num_classes: int, dtype: Any) -> jax.Array:
  """Global average pool of (B, H, W, C) features, then the dense "head".

  Call inside a compact ``__call__``: the head becomes a submodule named
  ``head`` of the calling module. Returns float32 (B, num_classes) logits.
  """
  pooled = jnp.mean(x, axis=(1, 2))
  logits = dense(num_classes, in_features=pooled.shape[-1], dtype=dtype,
                 name="head")(pooled)
  return logits.astype(jnp.float32)


def batch_norm(*,
               train: bool,
               axis_name: str | None,
               dtype: Dtype = jnp.float32,
               momentum: float = DEFAULT_BN_MOMENTUM,
               name: str | None = None) -> BatchNorm:
  """BatchNorm over the channel (last) axis with PyTorch's defaults.

  The layer is this package's :class:`~sage_jax.models.batchnorm.BatchNorm`,
  not flax's: it folds the *unbiased* batch variance into the running
  variance, as PyTorch's ``BatchNorm2d`` does (flax uses the biased one);
  normalisation and variable names are flax's.

  Args:
    train: True normalises with (and updates) batch statistics; False uses the
      running averages in the 'batch_stats' collection.
    axis_name: if set, batch statistics are averaged over this mapped axis
      (e.g. the data axis of a ``shard_map``), giving cross-device BN; the
      unbiased correction then uses the global count.
    dtype: computation dtype of the output; the statistics are reduced in
      float32 regardless, and scale/bias/running stats are float32.
    momentum: flax momentum, the weight of the *old* running statistic
      (flax 0.9 == PyTorch 0.1).
    name: submodule name inside the calling compact module.
  """
  return BatchNorm(
      use_running_average=not train,
      momentum=momentum,
      epsilon=BN_EPSILON,
      axis_name=axis_name,
      dtype=dtype,
      name=name)


def scaled_channels(base_channels: float, scale: float) -> int:
  """``base_channels * scale`` rounded to the nearest int, at least 1."""
  return max(1, int(round(base_channels * scale)))
