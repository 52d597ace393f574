"""SAGE, Mixup and CutMix as pure functions of (key, images, labels).

`sage` follows Algorithm 1 of the paper with the released code's choices
(docs/method.md §1, steps 4-8):

  4. λ = upper_lambda · Beta(alpha, alpha), one per call;
  5. one random permutation π pairs image i with partner π(i);
  6. ŝ0 = s_i/Σs_i·λ,  ŝ1 = s_π(i)/Σs_π(i)·(1-λ);
  7. τ* = argmax_τ v(τ) over the searched offsets (see `rearrange`);
  8. M = ŝ0/max(ŝ0 + T_τ*ŝ1, 1e-16),  x' = M⊙x_i + (1-M)⊙T_τ*(x_π(i)),
     γ_i = mean(M),  y' = γ_i·y_i + (1-γ_i)·y_π(i).

`mask="constant"` replaces step 8's mask by M = λ everywhere (the paper's
"SAGE w/o SM" ablation); `search="none"` fixes τ* = 0 ("w/o OR"). With both,
SAGE is exactly Mixup.
"""
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.augment import _checks
from sage_jax.augment import rearrange

SEARCH_MODES = ("sampled", "exhaustive", "none")
# How step 8 mixes: "saliency" (SAGE) or "constant" (M = λ, "w/o SM").
MASK_MODES = ("saliency", "constant")
# λ and 1-λ are clamped here before scaling the saliency (released code).
_RATIO_EPS = 1e-12
# Options that fix shapes or Python control flow: static under `jax.jit`, e.g.
# `jax.jit(augment.sage, static_argnames=augment.SAGE_STATIC_ARGNAMES)`.
SAGE_STATIC_ARGNAMES = ("num_classes", "search", "sample_fraction", "mask",
                        "check_labels")
MIX_STATIC_ARGNAMES = ("num_classes", "check_labels")


class MixResult(NamedTuple):
  """What a mixing function returns (a pytree, so it passes through jit).

  Attributes:
    images: (B, H, W, C) mixed images, dtype of the input images.
    labels: float32 (B, K) mixed targets; each row sums to the sum of the
      input rows (1 for one-hot labels).
    lam: float32 (B,) weight of image i's own label (SAGE: γ_i = mean mask).
    perm: int32 (B,) partner index π(i).
    offset: int32 (B, 2) the (dy, dx) shift applied to the partner (zeros for
      Mixup and CutMix).
  """
  images: jax.Array
  labels: jax.Array
  lam: jax.Array
  perm: jax.Array
  offset: jax.Array


def _normalise_saliency(saliency: jax.Array, total: jax.Array) -> jax.Array:
  """Rescales each (H, W) map to sum to `total`.

  An all-zero map (the released code divides by zero there) is treated as
  uniform saliency, so that every pixel is equally important, instead of
  producing NaN.
  """
  sums = jnp.sum(saliency, axis=(1, 2), keepdims=True)
  uniform = jnp.full_like(saliency, 1.0 / (saliency.shape[1] * saliency.shape[2]))
  safe = jnp.where(sums > 0, saliency / jnp.where(sums > 0, sums, 1.0), uniform)
  return safe * total


def _mix_pair(image, partner, sal0, sal1, offset):
  """Step 8 for one pair: (mixed image (H,W,C) float32, mask (H,W))."""
  mask, _ = rearrange.mask_for_offset(sal0, sal1, offset)
  shifted_partner = rearrange.shift(partner, offset)
  mixed = mask[..., None] * image + (1.0 - mask[..., None]) * shifted_partner
  return mixed, mask


def _mix_pair_constant(image, partner, mix_ratio, offset):
  """Step 8 with the constant mask M = λ for one pair: (H,W,C) float32."""
  return mix_ratio * image + (1.0 - mix_ratio) * rearrange.shift(partner, offset)


def _mix_labels(targets: jax.Array, perm: jax.Array, own_weight: jax.Array):
  return (own_weight[:, None] * targets
          + (1.0 - own_weight[:, None]) * targets[perm])


def _check_common(images, labels, num_classes, alpha, check_labels, function,
                  static_argnames):
  for name, value in (("num_classes", num_classes), ("check_labels", check_labels)):
    _checks.check_static(name, value, function, static_argnames)
  _checks.check_images(images)
  _checks.check_positive("alpha", alpha)
  return _checks.to_targets(labels, images.shape[0], num_classes, check_labels)


def _resolve_lam(lam, key, draw):
  """The mix ratio: `lam` as given (a scalar in [0, 1]) or `draw(key)`."""
  if lam is None:
    return draw(key)
  if jnp.ndim(lam) != 0:
    raise ValueError(f"`lam` must be a scalar; got shape {jnp.shape(lam)}.")
  _checks.check_unit_interval("lam", lam)
  return jnp.asarray(lam, jnp.float32)


def _resolve_perm(perm, key, batch):
  if perm is None:
    return jax.random.permutation(key, batch).astype(jnp.int32)
  if jnp.shape(perm) != (batch,) or not jnp.issubdtype(jnp.result_type(perm), jnp.integer):
    raise ValueError(
        f"`perm` must be an int array of shape ({batch},); got shape "
        f"{jnp.shape(perm)} and dtype {jnp.result_type(perm)}.")
  if _checks.is_concrete(perm):
    values = np.asarray(perm)
    if values.min() < 0 or values.max() >= batch:
      raise ValueError(f"`perm` entries must lie in [0, {batch}); got {values}.")
  return jnp.asarray(perm, jnp.int32)


def _resolve_offsets(offsets, height, width):
  if jnp.ndim(offsets) != 2 or jnp.shape(offsets)[1] != 2 or jnp.shape(offsets)[0] < 1:
    raise ValueError(
        f"`offsets` must have shape (K, 2) with K ≥ 1 rows (dy, dx); got "
        f"{jnp.shape(offsets)}.")
  if not jnp.issubdtype(jnp.result_type(offsets), jnp.integer):
    raise ValueError(f"`offsets` must be integers; got {jnp.result_type(offsets)}.")
  if _checks.is_concrete(offsets):
    values = np.asarray(offsets)
    if (np.abs(values[:, 0]).max() > height - 1
        or np.abs(values[:, 1]).max() > width - 1):
      raise ValueError(
          f"`offsets` must satisfy |dy| ≤ {height - 1} and |dx| ≤ {width - 1} "
          f"for {height}×{width} images; got {values.tolist()}.")
  return jnp.asarray(offsets, jnp.int32)


def sage(key: jax.Array, images: jax.Array, labels: jax.Array,
         saliency: jax.Array, *, alpha: float = 1.0, upper_lambda: float = 1.0,
         search: str = "sampled", sample_fraction: float = 0.01,
         num_classes: Optional[int] = None, lam: Optional[Any] = None,
         perm: Optional[jax.Array] = None,
         offsets: Optional[jax.Array] = None,
         mask: str = "saliency", check_labels: bool = False) -> MixResult:
  """Saliency-guided mixup with optimal rearrangement (SAGE) of one batch.

  Image i is mixed with partner π(i), shifted by the offset that keeps the
  most total saliency, pixel by pixel in proportion to saliency.

  Args:
    key: PRNG key. It is split into (λ, permutation, sampled offsets) keys in
      that order with `jax.random.split(key, 3)`.
    images: (B, H, W, C) floating, normalised images (so zero fill of shifted
      content is the dataset mean colour). Any H, W and B ≥ 1 (B = 1 pairs
      the image with itself), and C ≤ 4 or C ≤ H: a last dimension above both
      is taken for an NCHW batch and rejected.
    labels: int (B,) class indices (then `num_classes` is required) or float
      (B, K) one-hot or soft labels. Int labels outside [0, num_classes) are
      an error when concrete; under jit they are not checked unless
      `check_labels=True` and become all-zero target rows.
    saliency: (B, H, W) non-negative saliency, e.g. from `saliency_map`. An
      all-zero map is treated as uniform.
    alpha: Beta(alpha, alpha) parameter of the mix ratio, > 0.
    upper_lambda: u in [0, 1]: λ = u·Beta(alpha, alpha) (scaled, not
      clipped, so λ ~ U(0, u) for alpha = 1). The paper tunes u per dataset
      and architecture: 0.6 for CIFAR-10 PreActResNet18 (its ablation: 0.5 →
      96.75 %, 0.6 → 96.95 %, 1.0 → 96.6 %), 0.5 for CIFAR-100
      PreActResNet18, 0.7 for CIFAR-100 WRN16-8 and ResNeXt29. The default
      1.0 does not scale λ, so it is Mixup's Beta(alpha, alpha) draw and
      assumes no dataset; pass the paper's value for its settings.
    search: "sampled" scores `max(1, int(sample_fraction·(2H-1)(2W-1)))` random
      offsets shared by the batch (the paper's setting); "exhaustive" finds the
      best of all (2H-1)(2W-1) offsets (FFT ranking, exact rescoring);
      "none" never shifts (τ = 0, the paper's "w/o OR" ablation).
    sample_fraction: share of offsets scored by "sampled", in (0, 1].
    num_classes: number of classes, needed for int labels (a Python int:
      static under jit).
    lam: optional scalar λ used as is (overrides the Beta draw).
    perm: optional int (B,) partner indices (overrides the permutation).
    offsets: optional int (K, 2) candidate (dy, dx) offsets scored exactly in
      this order, first maximum wins; they replace `search`.
    mask: how the chosen pair is mixed (a Python string; static under jit).
      "saliency" (default): the saliency-guided mask M above. "constant": the
      paper's "SAGE w/o SM" ablation. The shift τ* is searched exactly as
      for "saliency" (same candidates, same scores v(τ) from the saliency
      maps, so the same offsets for the same key), but the mix uses M = λ at
      every pixel: x' = λ·x_i + (1-λ)·T_τ*(x_π(i)) and γ_i = λ. Pixels that
      the shift leaves empty (zero fill, i.e. the dataset mean colour) count
      as the partner's, so the label weight stays λ rather than the share of
      visible partner content. With `search="none"` this is exactly Mixup.
    check_labels: with traced int labels, add a `jax.experimental.checkify`
      check that they lie in [0, num_classes); the caller must then run
      under `checkify.checkify` (`err, out = checkify.checkify(jax.jit(f))(
      ...); err.throw()`). Off by default: the check costs a reduction per
      call and an error output.

  `num_classes`, `search`, `sample_fraction`, `mask` and `check_labels` fix
  shapes or control flow: under `jax.jit` mark them static
  (`static_argnames=SAGE_STATIC_ARGNAMES`).

  Returns:
    `MixResult`; `lam` holds γ_i = mean of the mask, the label weight (λ for
    every row when `mask="constant"`).

  Raises:
    ValueError: on wrong ranks or batch sizes, NCHW-looking images, negative
      saliency or out-of-range int labels (checked when the values are
      concrete, i.e. outside jit), int labels without `num_classes`, an
      unknown `search` or `mask`, or out-of-range hyperparameters.
    TypeError: if a static option (`num_classes`, `sample_fraction`, ...) is
      traced.
  """
  _checks.check_static("sample_fraction", sample_fraction, "augment.sage",
                       SAGE_STATIC_ARGNAMES)
  targets = _check_common(images, labels, num_classes, alpha, check_labels,
                          "augment.sage", SAGE_STATIC_ARGNAMES)
  batch, height, width, _ = images.shape
  _checks.check_saliency(saliency, images.shape,
                         "`saliency_map` of input gradients")
  if search not in SEARCH_MODES:
    raise ValueError(f"`search` must be one of {SEARCH_MODES}; got {search!r}.")
  if mask not in MASK_MODES:
    raise ValueError(f"`mask` must be one of {MASK_MODES}; got {mask!r}.")
  if not 0.0 < sample_fraction <= 1.0:
    raise ValueError(f"`sample_fraction` must lie in (0, 1]; got {sample_fraction}.")
  _checks.check_unit_interval("upper_lambda", upper_lambda)

  lam_key, perm_key, offsets_key = jax.random.split(key, 3)
  mix_ratio = _resolve_lam(
      lam, lam_key, lambda k: upper_lambda * jax.random.beta(k, alpha, alpha))
  perm = _resolve_perm(perm, perm_key, batch)

  saliency = jax.lax.stop_gradient(jnp.asarray(saliency, jnp.float32))
  sal0 = _normalise_saliency(saliency, jnp.maximum(mix_ratio, _RATIO_EPS))
  sal1 = _normalise_saliency(saliency[perm], jnp.maximum(1.0 - mix_ratio, _RATIO_EPS))

  if offsets is not None:
    candidates = _resolve_offsets(offsets, height, width)
  elif search == "sampled":
    candidates = rearrange.sample_offsets(offsets_key, height, width, sample_fraction)
  elif search == "none":
    candidates = jnp.zeros((1, 2), jnp.int32)
  else:
    candidates = None
  if candidates is None:
    best = rearrange.exhaustive_best(sal0, sal1)
  else:
    best = rearrange.best_of_shared(sal0, sal1, candidates)

  own_images = images.astype(jnp.float32)
  partners = images[perm].astype(jnp.float32)
  if mask == "saliency":
    mixed, masks = jax.vmap(_mix_pair)(own_images, partners, sal0, sal1, best)
    own_weight = jnp.mean(masks, axis=(1, 2))
  else:
    mixed = jax.vmap(_mix_pair_constant, in_axes=(0, 0, None, 0))(
        own_images, partners, mix_ratio, best)
    own_weight = jnp.full((batch,), mix_ratio, jnp.float32)
  return MixResult(mixed.astype(images.dtype), _mix_labels(targets, perm, own_weight),
                   own_weight, perm, best.astype(jnp.int32))


def mixup(key: jax.Array, images: jax.Array, labels: jax.Array, *,
          alpha: float = 1.0, num_classes: Optional[int] = None,
          lam: Optional[Any] = None,
          perm: Optional[jax.Array] = None,
          check_labels: bool = False) -> MixResult:
  """Mixup (Zhang et al. 2018): x' = λx_i + (1-λ)x_π(i), one λ ~ Beta(α, α).

  Args and errors as `sage` (no saliency). `key` is split into (λ,
  permutation) keys; `lam` (scalar in [0, 1]) and `perm` (int (B,)) override
  those draws, as in `sage`. Static under jit: `MIX_STATIC_ARGNAMES`.
  Returns `MixResult` with `lam` = λ for every row and zero offsets.
  """
  targets = _check_common(images, labels, num_classes, alpha, check_labels,
                          "augment.mixup", MIX_STATIC_ARGNAMES)
  batch = images.shape[0]
  lam_key, perm_key = jax.random.split(key)
  mix_ratio = _resolve_lam(lam, lam_key,
                           lambda k: jax.random.beta(k, alpha, alpha))
  perm = _resolve_perm(perm, perm_key, batch)
  mixed = (mix_ratio * images.astype(jnp.float32)
           + (1.0 - mix_ratio) * images[perm].astype(jnp.float32))
  own_weight = jnp.full((batch,), mix_ratio, jnp.float32)
  return MixResult(mixed.astype(images.dtype), _mix_labels(targets, perm, own_weight),
                   own_weight, perm, jnp.zeros((batch, 2), jnp.int32))


def cutmix_box(key: jax.Array, height: int, width: int, mix_ratio: jax.Array):
  """CutMix's box (Yun et al. 2019) for a draw λ: area ≈ (1-λ)·H·W.

  The box has sides int(H·√(1-λ)), int(W·√(1-λ)) around a uniformly drawn
  centre and is clipped to the frame.

  Returns:
    (top, bottom, left, right) int32 scalars; the box is rows [top, bottom),
    columns [left, right).
  """
  cut = jnp.sqrt(1.0 - mix_ratio)
  cut_h = jnp.floor(height * cut).astype(jnp.int32)
  cut_w = jnp.floor(width * cut).astype(jnp.int32)
  row_key, col_key = jax.random.split(key)
  centre_y = jax.random.randint(row_key, (), 0, height)
  centre_x = jax.random.randint(col_key, (), 0, width)
  top = jnp.clip(centre_y - cut_h // 2, 0, height)
  bottom = jnp.clip(centre_y + cut_h // 2, 0, height)
  left = jnp.clip(centre_x - cut_w // 2, 0, width)
  right = jnp.clip(centre_x + cut_w // 2, 0, width)
  return top, bottom, left, right


def cutmix(key: jax.Array, images: jax.Array, labels: jax.Array, *,
           alpha: float = 1.0, num_classes: Optional[int] = None,
           lam: Optional[Any] = None,
           perm: Optional[jax.Array] = None,
           check_labels: bool = False) -> MixResult:
  """CutMix: paste a box of the partner π(i) into image i, one box per call.

  λ ~ Beta(α, α) sets the box area (see `cutmix_box`); the label weight is
  then corrected to the clipped box: lam = 1 - box area / (H·W). `key` is
  split into (λ, permutation, box) keys. `lam` overrides the draw λ that
  sizes the box (the returned weight is still the corrected one) and `perm`
  the permutation; the box position always comes from `key`. Args, errors
  and static options as `mixup`.
  """
  targets = _check_common(images, labels, num_classes, alpha, check_labels,
                          "augment.cutmix", MIX_STATIC_ARGNAMES)
  batch, height, width, _ = images.shape
  lam_key, perm_key, box_key = jax.random.split(key, 3)
  mix_ratio = _resolve_lam(lam, lam_key,
                           lambda k: jax.random.beta(k, alpha, alpha))
  perm = _resolve_perm(perm, perm_key, batch)
  top, bottom, left, right = cutmix_box(box_key, height, width, mix_ratio)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  in_box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  mixed = jnp.where(in_box[None, :, :, None], images[perm], images)
  box_area = (bottom - top) * (right - left)
  own = 1.0 - box_area.astype(jnp.float32) / (height * width)
  own_weight = jnp.full((batch,), own, jnp.float32)
  return MixResult(mixed, _mix_labels(targets, perm, own_weight), own_weight,
                   perm, jnp.zeros((batch, 2), jnp.int32))
