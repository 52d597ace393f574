"""Manifold Mixup (Verma et al. 2019) as the SAGE release runs it.

Per batch (docs/baselines.md §1) one draw, shared by every sample:

  1. a mix point k ~ U{0, 1, 2}: 0 = the normalised input images, 1 = the
     output of the network's first stage, 2 = the output of its second stage
     (the released code's `random.randint(0, 2)` is inclusive and never 3);
  2. λ ~ Beta(α, α) (α = 2.0 on CIFAR) and one permutation π of the batch;
  3. at point k the hidden batch becomes h ← λ·h + (1-λ)·h[π], and the
     target is λ·onehot(y) + (1-λ)·onehot(y[π]).

The models take the draw as ``model.apply(..., manifold_mix=mix)`` and call
`mix_at` at each of their points. `mix_at` selects with `jnp.where` on the
*traced* k, so one compiled training step serves every k (the mix itself is a
cheap elementwise op, far cheaper than three compiled variants):

    mix = augment.draw_manifold_mix(key, batch_size)
    logits, updates = model.apply(variables, images, train=True,
                                  manifold_mix=mix, mutable=["batch_stats"])
    targets = augment.manifold_mixup_targets(labels, mix, num_classes=10)
"""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.augment import _checks
from sage_jax.augment import mixing

# Mix points every model offers: 0 (input), 1 (after stage 1), 2 (after
# stage 2). A layer index the model has no hook for would mix the targets but
# not the activations, so draws are restricted to this range.
NUM_MIX_POINTS = 3


class ManifoldMix(NamedTuple):
  """One Manifold Mixup draw (a pytree, so it passes through jit).

  Attributes:
    layer: int32 scalar, the mix point k: 0 = input images, 1 = after the
      first stage, 2 = after the second stage.
    lam: float32 scalar λ, the weight of each sample's own activations.
    perm: int32 (B,) partner index π(i).
  """
  layer: jax.Array
  lam: jax.Array
  perm: jax.Array


def _is_int(value: Any) -> bool:
  # bool is an int subclass; True as a count is certainly a bug.
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _resolve_layer(layer, key, num_points):
  if layer is None:
    return jax.random.randint(key, (), 0, num_points, dtype=jnp.int32)
  if jnp.ndim(layer) != 0 or not jnp.issubdtype(jnp.result_type(layer),
                                                jnp.integer):
    raise ValueError(
        f"`layer` must be an int scalar; got shape {jnp.shape(layer)} and "
        f"dtype {jnp.result_type(layer)}.")
  if _checks.is_concrete(layer) and not 0 <= int(layer) < num_points:
    raise ValueError(
        f"`layer` must lie in [0, num_points={num_points}); got {int(layer)}.")
  return jnp.asarray(layer, jnp.int32)


def draw_manifold_mix(key: jax.Array, batch_size: int, *, alpha: float = 2.0,
                      num_points: int = NUM_MIX_POINTS,
                      layer: Optional[Any] = None, lam: Optional[Any] = None,
                      perm: Optional[jax.Array] = None) -> ManifoldMix:
  """Draws the per-batch Manifold Mixup parameters (k, λ, π).

  Args:
    key: PRNG key, split as `layer_key, lam_key, perm_key =
      jax.random.split(key, 3)`.
    batch_size: B, a positive Python int (static under jit).
    alpha: Beta(alpha, alpha) parameter of λ, > 0 (2.0 for CIFAR in the
      released code).
    num_points: k is drawn uniformly from {0, ..., num_points - 1}; an int in
      [1, 3] (3, the default, is the released code; 1 is input Mixup).
    layer: optional int scalar k in [0, num_points) used as is; may be traced.
    lam: optional scalar λ in [0, 1] used as is; may be traced.
    perm: optional int (B,) permutation used as is; may be traced.

  Returns:
    `ManifoldMix(layer int32 (), lam float32 (), perm int32 (B,))`.

  Raises:
    ValueError: `batch_size` or `num_points` not a valid int, `alpha` not
      > 0, or an override of the wrong shape/dtype or (when concrete, i.e.
      outside jit) out of range.
  """
  if not _is_int(batch_size) or batch_size < 1:
    raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
  if not _is_int(num_points) or not 1 <= num_points <= NUM_MIX_POINTS:
    raise ValueError(
        f"`num_points` must be an int in [1, {NUM_MIX_POINTS}] (the models mix "
        f"at points 0..{NUM_MIX_POINTS - 1}); got {num_points!r}.")
  _checks.check_positive("alpha", alpha)
  layer_key, lam_key, perm_key = jax.random.split(key, 3)
  layer = _resolve_layer(layer, layer_key, num_points)
  # The Beta draw, and the checks and casts of the two overrides, are exactly
  # those of `mixup`, so both methods read (key, lam, perm) the same way.
  lam = mixing._resolve_lam(lam, lam_key,
                            lambda k: jax.random.beta(k, alpha, alpha))
  perm = mixing._resolve_perm(perm, perm_key, batch_size)
  return ManifoldMix(layer, jnp.asarray(lam, jnp.float32), perm)


def mix_at(hidden: jax.Array, mix: Optional[ManifoldMix],
           point: int) -> jax.Array:
  """Mixes `hidden` along the batch if `point` is the drawn mix point.

  Returns `λ·h + (1-λ)·h[π]` when `mix.layer == point` and `hidden` itself
  otherwise. The choice is a `jnp.where` on the (possibly traced) layer, so a
  jitted model compiles once for every k. The mix is computed in (at least)
  float32 and cast back, so bf16 activations are rounded once, as `mixup`
  rounds bf16 images.

  Args:
    hidden: (B, ...) floating activations (or images at point 0).
    mix: a `ManifoldMix` draw, or None to return `hidden` unchanged.
    point: this hook's index, a Python int (0 = input, 1, 2).

  Returns:
    An array of `hidden`'s shape and dtype; bit-identical to `hidden` when
    this point is not the drawn one.

  Raises:
    ValueError: `hidden` has no batch axis, `mix.perm` is not of shape (B,),
      or `mix.layer` / `mix.lam` are not scalars (shape checks, so they also run under jit).
  """
  if mix is None:
    return hidden
  if jnp.ndim(hidden) < 1:
    raise ValueError(f"`hidden` must have a batch axis; got shape {jnp.shape(hidden)}.")
  batch = jnp.shape(hidden)[0]
  if jnp.shape(mix.perm) != (batch,):
    raise ValueError(
        f"`mix.perm` must have shape (B,) = ({batch},) to match the "
        f"activations of shape {jnp.shape(hidden)}; got {jnp.shape(mix.perm)}.")
  if jnp.ndim(mix.layer) != 0 or jnp.ndim(mix.lam) != 0:
    raise ValueError(
        f"`mix.layer` and `mix.lam` must be scalars; got shapes "
        f"{jnp.shape(mix.layer)} and {jnp.shape(mix.lam)}.")
  compute_dtype = jnp.promote_types(hidden.dtype, jnp.float32)
  lam = jnp.asarray(mix.lam, compute_dtype)
  own = hidden.astype(compute_dtype)
  mixed = lam * own + (1.0 - lam) * own[mix.perm]
  # Selecting `hidden` itself (not a float32 round trip) keeps the unmixed
  # points exactly today's forward.
  return jnp.where(mix.layer == point, mixed.astype(hidden.dtype), hidden)


def manifold_mixup_targets(labels: jax.Array, mix: ManifoldMix,
                           num_classes: Optional[int] = None) -> jax.Array:
  """Soft targets λ·y + (1-λ)·y[π] of a Manifold Mixup batch.

  The same at every mix point: the targets do not depend on `mix.layer`.

  Args:
    labels: int (B,) class indices (then `num_classes` is required) or float
      (B, K) one-hot or soft labels.
    mix: the `ManifoldMix` the batch was mixed with; B = len(mix.perm).
    num_classes: number of classes, needed for int labels.

  Returns:
    float32 (B, K) targets; each row sums to the sum of the input rows (1 for
    one-hot labels).

  Raises:
    ValueError: as `mixup` for the labels (rank, batch size, range,
      `num_classes`), or `mix.lam` not a scalar.
  """
  if jnp.ndim(mix.lam) != 0:
    raise ValueError(f"`mix.lam` must be a scalar; got shape {jnp.shape(mix.lam)}.")
  batch = jnp.shape(mix.perm)[0]
  if jnp.ndim(labels) >= 1 and jnp.shape(labels)[0] != batch:
    raise ValueError(
        f"`labels` has batch size {jnp.shape(labels)[0]} but `mix.perm` has "
        f"{batch}.")
  targets = _checks.to_targets(labels, batch, num_classes)
  own_weight = jnp.full((batch,), mix.lam, jnp.float32)
  return mixing._mix_labels(targets, jnp.asarray(mix.perm, jnp.int32),
                            own_weight)
