"""Wide ResNet (Zagoruyko & Komodakis, 2016) WRN-16-8 as used for CIFAR in SAGE.

Depth 16 gives (16 - 4) / 6 = 2 blocks per stage; widen factor 8 gives stage
widths 16*8 / 32*8 / 64*8 = 128/256/512 after a 16-channel stem. Every conv
(stem, block, shortcut) carries a bias, as in the reference code. 10,965,866
parameters for 10 classes. There is no dropout layer (the spec has none).

All weights use PyTorch's default initialisation (see ``init.py``).

Manifold Mixup hooks (``manifold_mix``, see ``sage_jax.augment.manifold``):
point 0 is the input image, points 1 and 2 the raw residual sums that leave
stage 1 (``stage1_block2``) and stage 2 (``stage2_block2``), as in the
reference forward.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from sage_jax.augment.manifold import ManifoldMix, mix_at
from sage_jax.models.init import batch_norm, conv, pooled_logits, scaled_channels

Dtype = Any

WRN16_8_WIDTH = 128
_WRN_STEM_FEATURES = 16

# The reference builds its final BN as ``nn.BatchNorm2d(C, momentum=0.9)``.
# PyTorch's momentum is the weight of the *new* batch statistic, so that layer
# tracks the latest batches almost exclusively; in flax's convention (weight of
# the old running value) this is 0.1. Kept deliberately to reproduce the
# reference's eval-mode behaviour, even though it is probably unintended there.
_FINAL_BN_MOMENTUM = 0.1


class WideBasicBlock(nn.Module):
  """WRN basic block (pre-activation, stride on the second conv).

  For input x of shape (N, H, W, C_in)::

      o = conv1(relu(bn1(x)))            # 3x3, stride 1, C_in -> features
      o = conv2(relu(bn2(o)))            # 3x3, stride s, features -> features
      shortcut = conv1x1(x, stride s)    if s != 1 or C_in != features
                 x                       otherwise
      return o + shortcut                # (N, H/s, W/s, features)

  Unlike PreActResNet, the projection shortcut reads the *raw* x. All convs
  are biased.

  Attributes:
    features: output channels.
    strides: stride of conv2 and of the projection shortcut.
    dtype: computation dtype.
    bn_axis_name: mapped axis to average BN batch statistics over, or None.
  """
  features: int
  strides: int = 1
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    in_features = x.shape[-1]
    out = nn.relu(batch_norm(train=train, axis_name=self.bn_axis_name,
                             dtype=self.dtype, name="bn1")(x))
    out = conv(self.features, 3, in_features=in_features, use_bias=True,
               dtype=self.dtype, name="conv1")(out)
    out = nn.relu(batch_norm(train=train, axis_name=self.bn_axis_name,
                             dtype=self.dtype, name="bn2")(out))
    out = conv(self.features, 3, in_features=self.features,
               strides=self.strides, use_bias=True, dtype=self.dtype,
               name="conv2")(out)
    if self.strides != 1 or in_features != self.features:
      shortcut = conv(self.features, 1, in_features=in_features,
                      strides=self.strides, use_bias=True, dtype=self.dtype,
                      name="shortcut")(x)
    else:
      shortcut = x
    return out + shortcut


class WideResNet(nn.Module):
  """Wide ResNet for 32x32-style inputs.

  Maps images (N, H, W, 3) (NHWC) to float32 logits (N, num_classes):
  biased 3x3 stem conv, stages of :class:`WideBasicBlock`, then a final
  relu(bn(.)) (flax momentum 0.1, see ``_FINAL_BN_MOMENTUM``), global average
  pooling and a dense classifier.

  ``__call__(x, *, train, manifold_mix=None)``: ``train`` selects batch
  statistics (True) or running averages (False) in every BatchNorm.
  ``manifold_mix`` (a ``sage_jax.augment.ManifoldMix`` or None) mixes the
  batch ``h <- lam * h + (1 - lam) * h[perm]`` at its drawn point:
  0 = the input images, 1 = the output of stage 1 (raw residual sum of the
  last ``stage1_block*``), 2 = the output of stage 2 (last
  ``stage2_block*``). Every BatchNorm after the point, including
  ``final_bn``, sees the mixed activations. The point may be traced: one
  compiled program covers every point. None (the default) is the plain
  forward; the argument adds no variables.

  Attributes:
    num_classes: number of output logits.
    stem_features: output channels of the stem conv.
    stage_widths: channels of each stage.
    blocks_per_stage: number of blocks in each stage.
    stage_strides: stride of the first block of each stage.
    dtype: computation dtype (parameters stay float32).
    bn_axis_name: mapped axis for cross-device BN statistics, or None.
  """
  num_classes: int
  stem_features: int
  stage_widths: Sequence[int]
  blocks_per_stage: Sequence[int]
  stage_strides: Sequence[int]
  dtype: Dtype = jnp.float32
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               manifold_mix: ManifoldMix | None = None) -> jax.Array:
    x = mix_at(x, manifold_mix, 0)
    x = conv(self.stem_features, 3, in_features=x.shape[-1], use_bias=True,
             dtype=self.dtype, name="stem")(x)
    for stage, (width, num_blocks, stride) in enumerate(
        zip(self.stage_widths, self.blocks_per_stage, self.stage_strides)):
      for block in range(num_blocks):
        x = WideBasicBlock(features=width, strides=stride if block == 0 else 1,
                           dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                           name=f"stage{stage + 1}_block{block + 1}")(
                               x, train=train)
      if stage < 2:
        # Points 1 and 2: the stage's raw residual sum, as the reference
        # mixes `layer1` / `layer2` outputs.
        x = mix_at(x, manifold_mix, stage + 1)
    x = nn.relu(batch_norm(train=train, axis_name=self.bn_axis_name,
                           dtype=self.dtype, momentum=_FINAL_BN_MOMENTUM,
                           name="final_bn")(x))
    return pooled_logits(x, self.num_classes, self.dtype)


def wrn16_8(*, num_classes: int, width: int = WRN16_8_WIDTH,
            dtype: Dtype = jnp.float32,
            bn_axis_name: str | None = None) -> WideResNet:
  """WRN-16-8: stages width * (1, 2, 4), 2 blocks each, strides 1/2/2.

  ``width`` is the first stage's channel count (default 128, the paper model:
  stages 128/256/512). The stem scales with it too:
  ``max(1, round(16 * width / 128))`` channels (16 by default).
  """
  return WideResNet(
      num_classes=num_classes,
      stem_features=scaled_channels(_WRN_STEM_FEATURES, width / WRN16_8_WIDTH),
      stage_widths=(width, 2 * width, 4 * width),
      blocks_per_stage=(2, 2, 2),
      stage_strides=(1, 2, 2),
      dtype=dtype,
      bn_axis_name=bn_axis_name)
