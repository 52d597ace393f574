"""Pre-activation ResNet (He et al., 2016) as used for CIFAR in SAGE.

PreActResNet18: 3x3 stem conv 3 -> 64 (stride 1, no bias, no BN/ReLU after
it), four stages of two pre-activation blocks with widths 64/128/256/512 and
strides 1/2/2/2, *no* final BN/ReLU, global average pooling, and a biased
dense classifier. 11,171,146 parameters for 10 classes.

PreActResNet8 is a small smoke-test variant: the same stem and block, three
stages of one block each with widths w/2w/4w and strides 1/2/2 (w = 16).

All weights use PyTorch's default initialisation (see ``init.py``).

Manifold Mixup hooks (``manifold_mix``, see ``sage_jax.augment.manifold``):
point 0 is the input image, point 1 the output of ``stem`` + stage 1 (the
last ``stage1_block*``'s raw residual sum, no BN/ReLU), point 2 the output of
stage 2 (the last ``stage2_block*``), as in the reference forward.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from sage_jax.augment.manifold import ManifoldMix, mix_at
from sage_jax.models.init import batch_norm, conv, pooled_logits

Dtype = Any

PREACTRESNET18_WIDTH = 64
PREACTRESNET8_WIDTH = 16


class PreActBlock(nn.Module):
  """Pre-activation basic block.

  Computes, for input x of shape (N, H, W, C_in)::

      o = relu(bn1(x))
      shortcut = conv1x1(o, stride)   if stride != 1 or C_in != features
                 x                    otherwise
      o = conv3x3(o, stride)
      o = conv3x3(relu(bn2(o)))
      return o + shortcut             # (N, H/stride, W/stride, features)

  Note the projection shortcut reads the *pre-activated* ``o``, not x, as in
  the reference implementation. All convs are bias-free.

  Attributes:
    features: output channels.
    strides: stride of the first 3x3 conv and of the projection shortcut.
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
    preact = nn.relu(batch_norm(train=train, axis_name=self.bn_axis_name,
                                dtype=self.dtype, name="bn1")(x))
    if self.strides != 1 or in_features != self.features:
      shortcut = conv(self.features, 1, in_features=in_features,
                      strides=self.strides, use_bias=False, dtype=self.dtype,
                      name="shortcut")(preact)
    else:
      shortcut = x
    out = conv(self.features, 3, in_features=in_features, strides=self.strides,
               use_bias=False, dtype=self.dtype, name="conv1")(preact)
    out = nn.relu(batch_norm(train=train, axis_name=self.bn_axis_name,
                             dtype=self.dtype, name="bn2")(out))
    out = conv(self.features, 3, in_features=self.features, use_bias=False,
               dtype=self.dtype, name="conv2")(out)
    return out + shortcut


class PreActResNet(nn.Module):
  """Pre-activation ResNet for 32x32-style inputs.

  Maps images (N, H, W, 3) (NHWC, any float dtype) to float32 logits
  (N, num_classes). Stage ``i`` has ``blocks_per_stage[i]`` PreActBlocks of
  ``stage_widths[i]`` channels; its first block uses ``stage_strides[i]``.

  Use :func:`preactresnet18` / :func:`preactresnet8` to build the named
  architectures.

  ``__call__(x, *, train, manifold_mix=None)``: ``train`` selects batch
  statistics (True) or running averages (False) in every BatchNorm.
  ``manifold_mix`` (a ``sage_jax.augment.ManifoldMix`` or None) mixes the
  batch ``h <- lam * h + (1 - lam) * h[perm]`` at its drawn point:
  0 = the input images, 1 = the output of stage 1 (raw residual sum of the
  last ``stage1_block*``, before any BN/ReLU), 2 = the output of stage 2
  (last ``stage2_block*``). Every BatchNorm after the point sees the mixed
  activations. The point may be traced: one compiled program covers every
  point. None (the default) is the plain forward; the argument adds no
  variables, so the parameter tree is the same either way.

  Attributes:
    num_classes: number of output logits.
    stem_features: output channels of the 3x3 stem conv.
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
    x = conv(self.stem_features, 3, in_features=x.shape[-1], use_bias=False,
             dtype=self.dtype, name="stem")(x)
    for stage, (width, num_blocks, stride) in enumerate(
        zip(self.stage_widths, self.blocks_per_stage, self.stage_strides)):
      for block in range(num_blocks):
        x = PreActBlock(features=width, strides=stride if block == 0 else 1,
                        dtype=self.dtype, bn_axis_name=self.bn_axis_name,
                        name=f"stage{stage + 1}_block{block + 1}")(
                            x, train=train)
      if stage < 2:
        # Points 1 and 2: the stage's raw residual sum, as the reference
        # mixes `layer1` / `layer2` outputs (the next block's bn1 follows).
        x = mix_at(x, manifold_mix, stage + 1)
    # No final BN/ReLU: the reference network pools the raw residual stream.
    return pooled_logits(x, self.num_classes, self.dtype)


def preactresnet18(*, num_classes: int, width: int = PREACTRESNET18_WIDTH,
                   dtype: Dtype = jnp.float32,
                   bn_axis_name: str | None = None) -> PreActResNet:
  """PreActResNet18: stem ``width``, stages width * (1, 2, 4, 8), 2 blocks each.

  ``width=64`` (default) is the paper model: stem 64, stages 64/128/256/512,
  strides 1/2/2/2, 512 pooled features.
  """
  return PreActResNet(
      num_classes=num_classes,
      stem_features=width,
      stage_widths=(width, 2 * width, 4 * width, 8 * width),
      blocks_per_stage=(2, 2, 2, 2),
      stage_strides=(1, 2, 2, 2),
      dtype=dtype,
      bn_axis_name=bn_axis_name)


def preactresnet8(*, num_classes: int, width: int = PREACTRESNET8_WIDTH,
                  dtype: Dtype = jnp.float32,
                  bn_axis_name: str | None = None) -> PreActResNet:
  """Small PreActResNet for smoke runs: stem ``width``, stages w * (1, 2, 4).

  One block per stage, strides 1/2/2; default width 16 (16/32/64 channels).
  """
  return PreActResNet(
      num_classes=num_classes,
      stem_features=width,
      stage_widths=(width, 2 * width, 4 * width),
      blocks_per_stage=(1, 1, 1),
      stage_strides=(1, 2, 2),
      dtype=dtype,
      bn_axis_name=bn_axis_name)
