"""ResNeXt-29 (4x24d) (Xie et al., 2017) as used for CIFAR in SAGE.

Stem: 3x3 conv 3 -> 64 (no bias) + BN + ReLU. Then 3 stages x 3 bottleneck
blocks ((29 - 2) / 9 = 3) with planes 64/128/256 and strides 1/2/2 (on the
first block of a stage), cardinality 4 and base width 24, so the grouped
conv's width is D = cardinality * base_width * planes / 64 = 96/192/384 and
each block outputs 4 * planes = 256/512/1024 channels. Global average pooling
and a dense classifier follow. 4,845,002 parameters for 10 classes.

Initialisation follows the reference: conv kernels N(0, 2 / (k * k * out)),
BN scale 1 / bias 0, and the classifier keeps PyTorch's default init.

Manifold Mixup hooks (``manifold_mix``, see ``sage_jax.augment.manifold``):
point 0 is the input image, points 1 and 2 the post-ReLU outputs of stage 1
(``stage1_block3``) and stage 2 (``stage2_block3``), as in the reference's
``CifarResNeXt_new`` forward.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from sage_jax.augment.manifold import ManifoldMix, mix_at
from sage_jax.models.batchnorm import BatchNorm
from sage_jax.models.init import (batch_norm, conv, pooled_logits,
                                  kaiming_normal_fan_out, scaled_channels)

Dtype = Any

RESNEXT29_WIDTH = 64
_RESNEXT29_CARDINALITY = 4
_RESNEXT29_BASE_WIDTH = 24
# Bottleneck output channels are EXPANSION * planes.
EXPANSION = 4


class ResNeXtBottleneck(nn.Module):
  """ResNeXt bottleneck with a grouped 3x3 conv.

  For input x of shape (N, H, W, C_in), with D = cardinality * group_width::

      o = relu(bn1(conv1x1(x)))                   # C_in -> D
      o = relu(bn2(grouped_conv3x3(o, stride s))) # D -> D, `cardinality` groups
      o = bn3(conv1x1(o))                         # D -> 4 * planes
      shortcut = bn(conv1x1(x, stride s))  if s != 1 or C_in != 4 * planes
                 x                         otherwise
      return relu(o + shortcut)                   # (N, H/s, W/s, 4 * planes)

  All convs are bias-free.

  Attributes:
    planes: bottleneck "planes"; the block outputs EXPANSION * planes channels.
    group_width: channels per group of the grouped conv (D / cardinality).
    cardinality: number of groups of the 3x3 conv.
    strides: stride of the grouped conv and of the projection shortcut.
    dtype: computation dtype.
    bn_axis_name: mapped axis to average BN batch statistics over, or None.
  """
  planes: int
  group_width: int
  cardinality: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    in_features = x.shape[-1]
    inner_features = self.cardinality * self.group_width
    out_features = EXPANSION * self.planes

    def bn(name: str) -> BatchNorm:
      return batch_norm(train=train, axis_name=self.bn_axis_name,
                        dtype=self.dtype, name=name)

    out = conv(inner_features, 1, in_features=in_features, use_bias=False,
               kernel_init=kaiming_normal_fan_out, dtype=self.dtype,
               name="conv_reduce")(x)
    out = nn.relu(bn("bn_reduce")(out))
    out = conv(inner_features, 3, in_features=inner_features,
               strides=self.strides, use_bias=False,
               feature_group_count=self.cardinality,
               kernel_init=kaiming_normal_fan_out, dtype=self.dtype,
               name="conv_grouped")(out)
    out = nn.relu(bn("bn_grouped")(out))
    out = conv(out_features, 1, in_features=inner_features, use_bias=False,
               kernel_init=kaiming_normal_fan_out, dtype=self.dtype,
               name="conv_expand")(out)
    out = bn("bn_expand")(out)
    if self.strides != 1 or in_features != out_features:
      shortcut = conv(out_features, 1, in_features=in_features,
                      strides=self.strides, use_bias=False,
                      kernel_init=kaiming_normal_fan_out, dtype=self.dtype,
                      name="shortcut_conv")(x)
      shortcut = bn("shortcut_bn")(shortcut)
    else:
      shortcut = x
    return nn.relu(out + shortcut)


class ResNeXt(nn.Module):
  """ResNeXt for 32x32-style inputs.

  Maps images (N, H, W, 3) (NHWC) to float32 logits (N, num_classes).
  Stage ``i`` has ``blocks_per_stage[i]`` bottlenecks with
  ``stage_planes[i]`` planes and ``stage_group_widths[i]`` channels per group;
  its first block uses ``stage_strides[i]``.

  ``__call__(x, *, train, manifold_mix=None)``: ``train`` selects batch
  statistics (True) or running averages (False) in every BatchNorm.
  ``manifold_mix`` (a ``sage_jax.augment.ManifoldMix`` or None) mixes the
  batch ``h <- lam * h + (1 - lam) * h[perm]`` at its drawn point:
  0 = the input images, 1 = the output of stage 1 (post-ReLU output of the
  last ``stage1_block*``), 2 = the output of stage 2 (last
  ``stage2_block*``). Every BatchNorm after the point sees the mixed
  activations. The point may be traced: one compiled program covers every
  point. None (the default) is the plain forward; the argument adds no
  variables.

  Attributes:
    num_classes: number of output logits.
    stem_features: output channels of the stem conv.
    stage_planes: planes of each stage (outputs are EXPANSION * planes).
    stage_group_widths: per-group channels of each stage's grouped conv.
    cardinality: groups of every grouped conv.
    blocks_per_stage: number of bottlenecks in each stage.
    stage_strides: stride of the first block of each stage.
    dtype: computation dtype (parameters stay float32).
    bn_axis_name: mapped axis for cross-device BN statistics, or None.
  """
  num_classes: int
  stem_features: int
  stage_planes: Sequence[int]
  stage_group_widths: Sequence[int]
  cardinality: int
  blocks_per_stage: Sequence[int]
  stage_strides: Sequence[int]
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               manifold_mix: ManifoldMix | None = None) -> jax.Array:
    x = mix_at(x, manifold_mix, 0)
    x = conv(self.stem_features, 3, in_features=x.shape[-1], use_bias=False,
             kernel_init=kaiming_normal_fan_out, dtype=self.dtype,
             name="stem")(x)
    x = nn.relu(batch_norm(train=train, axis_name=self.bn_axis_name,
                           dtype=self.dtype, name="stem_bn")(x))
    for stage, (planes, group_width, num_blocks, stride) in enumerate(
        zip(self.stage_planes, self.stage_group_widths, self.blocks_per_stage,
            self.stage_strides)):
      for block in range(num_blocks):
        x = ResNeXtBottleneck(planes=planes, group_width=group_width,
                              cardinality=self.cardinality,
                              strides=stride if block == 0 else 1,
                              dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                              name=f"stage{stage + 1}_block{block + 1}")(
                                  x, train=train)
      if stage < 2:
        # Points 1 and 2: the stage output after the block's final ReLU, as
        # the reference mixes `stage_1` / `stage_2` outputs.
        x = mix_at(x, manifold_mix, stage + 1)
    return pooled_logits(x, self.num_classes, self.dtype)


def resnext29_4_24(*, num_classes: int, width: int = RESNEXT29_WIDTH,
                   dtype: Dtype = jnp.float32,
                   bn_axis_name: str | None = None) -> ResNeXt:
  """ResNeXt-29 (4x24d): stem ``width``, planes width * (1, 2, 4).

  Width scaling keeps cardinality 4 and scales the base width 24 by
  ``width / 64``, so every channel count stays proportional to ``width``::

      stem         = width                       (64)
      planes       = width * m, m in (1, 2, 4)   (64/128/256)
      outputs      = 4 * planes                  (256/512/1024)
      group_width  = max(1, round(24 * (width / 64) * m))   (24/48/96)
      inner D      = 4 * group_width             (96/192/384)

  Here ``m = nominal_planes / 64`` is the stage multiplier, so at the default
  width D = cardinality * base_width * planes / 64 exactly as in the paper.
  Rounding the *per-group* width (rather than D) keeps the grouped conv's
  channel count divisible by the cardinality at any width.
  """
  width_scale = width / RESNEXT29_WIDTH
  stage_multipliers = (1, 2, 4)
  return ResNeXt(
      num_classes=num_classes,
      stem_features=width,
      stage_planes=tuple(width * m for m in stage_multipliers),
      stage_group_widths=tuple(
          scaled_channels(_RESNEXT29_BASE_WIDTH * m, width_scale)
          for m in stage_multipliers),
      cardinality=_RESNEXT29_CARDINALITY,
      blocks_per_stage=(3, 3, 3),
      stage_strides=(1, 2, 2),
      dtype=dtype,
      bn_axis_name=bn_axis_name)
