"""CIFAR classifiers used by SAGE, as flax linen modules.

Every model maps NHWC float images (N, H, W, 3) to float32 logits
(N, num_classes) and follows one calling convention::

    variables = model.init(key, x, train=False)   # {'params', 'batch_stats'}
    logits, updates = model.apply(variables, x, train=True,
                                  mutable=['batch_stats'])
    logits = model.apply(variables, x, train=False)   # eval: running stats

Manifold Mixup: every model also takes a keyword-only
``manifold_mix=None`` (a ``sage_jax.augment.ManifoldMix``: traced int32 mix
point ``layer``, float32 ``lam``, int32 ``perm`` (N,))::

    mix = augment.draw_manifold_mix(key, x.shape[0])   # k ~ U{0,1,2}, λ ~ Beta(2,2)
    logits, updates = model.apply(variables, x, train=True,
                                  manifold_mix=mix, mutable=['batch_stats'])
    targets = augment.manifold_mixup_targets(labels, mix, num_classes=K)

The batch is mixed, ``h <- lam * h + (1 - lam) * h[perm]``, at point 0 (the
input images), 1 (output of the first stage) or 2 (output of the second
stage) — where the reference code mixes, see each model's docstring — and
every BatchNorm after the point sees the mixed batch. The point is selected
with ``jnp.where`` on the traced ``layer``, so one jit compilation serves
all three. ``None`` is the plain forward and adds no variables.

``width`` is the number of channels of the first stage; every other channel
count scales proportionally (rounded, at least 1). ``None`` selects each
architecture's default, which reproduces the paper model exactly:

=================  =======  ============================================
name               default  channels at the default width
=================  =======  ============================================
preactresnet18     64       stem 64, stages 64/128/256/512
wrn16_8            128      stem 16 (scaled by width/128), 128/256/512
resnext29_4_24     64       stem 64, planes 64/128/256, D 96/192/384,
                            outputs 256/512/1024 (cardinality 4 fixed)
preactresnet8      16       stem 16, stages 16/32/64 (one block each)
=================  =======  ============================================

Every BatchNorm is :class:`sage_jax.models.batchnorm.BatchNorm`: flax's
forward and variables, but the running variance takes the *unbiased* batch
variance (x n/(n-1)), as PyTorch's ``BatchNorm2d`` in the reference code.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import flax.linen as nn

from sage_jax.models.batchnorm import BatchNorm
from sage_jax.models.preactresnet import (PREACTRESNET8_WIDTH,
                                          PREACTRESNET18_WIDTH, PreActResNet,
                                          preactresnet8, preactresnet18)
from sage_jax.models.resnext import RESNEXT29_WIDTH, ResNeXt, resnext29_4_24
from sage_jax.models.wrn import WRN16_8_WIDTH, WideResNet, wrn16_8

MODEL_NAMES = ("preactresnet18", "wrn16_8", "resnext29_4_24", "preactresnet8")

# name -> (constructor, default first-stage width)
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], int]] = {
    "preactresnet18": (preactresnet18, PREACTRESNET18_WIDTH),
    "wrn16_8": (wrn16_8, WRN16_8_WIDTH),
    "resnext29_4_24": (resnext29_4_24, RESNEXT29_WIDTH),
    "preactresnet8": (preactresnet8, PREACTRESNET8_WIDTH),
}
assert tuple(_REGISTRY) == MODEL_NAMES


def _is_positive_int(value: Any) -> bool:
  # bool is an int subclass; True as a class count is certainly a bug.
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and value >= 1)


def create_model(name: str,
                 *,
                 num_classes: int,
                 width: int | None = None,
                 dtype: Any = jnp.float32,
                 bn_axis_name: str | None = None) -> nn.Module:
  """Builds one of the :data:`MODEL_NAMES` architectures.

  Args:
    name: one of MODEL_NAMES.
    num_classes: number of logits, a positive int.
    width: channels of the first stage (positive int); None for the
      architecture's default (see the module docstring).
    dtype: computation dtype, e.g. jnp.bfloat16 for mixed precision.
      Parameters and batch statistics stay float32; logits are float32.
    bn_axis_name: if set, BatchNorm averages batch statistics over this mapped
      axis (e.g. the 'data' axis of a shard_map) instead of per device; the
      running variance's n/(n-1) then uses the global count n.

  Returns:
    An unbound flax module; call it as ``model.apply(variables, x, train=...)``.

  Raises:
    ValueError: unknown name, or num_classes / width not a positive int.
  """
  if name not in _REGISTRY:
    raise ValueError(
        f"Unknown model name {name!r}; valid names are {', '.join(MODEL_NAMES)}")
  if not _is_positive_int(num_classes):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  if width is not None and not _is_positive_int(width):
    raise ValueError(f"width must be a positive int or None, got {width!r}")
  constructor, default_width = _REGISTRY[name]
  return constructor(num_classes=int(num_classes),
                     width=default_width if width is None else int(width),
                     dtype=dtype, bn_axis_name=bn_axis_name)


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter pytree.

  Pass ``variables['params']`` (not batch_stats) to match PyTorch's
  ``sum(p.numel() for p in model.parameters())``. Works on concrete arrays
  and on ``jax.ShapeDtypeStruct`` leaves (e.g. from ``jax.eval_shape``).
  """
  return sum(int(math.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


__all__ = [
    "MODEL_NAMES",
    "create_model",
    "count_params",
    "PreActResNet",
    "WideResNet",
    "ResNeXt",
    "BatchNorm",
]
