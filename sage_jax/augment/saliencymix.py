"""SaliencyMix (Uddin et al. 2021) as the SAGE release runs it (docs/baselines.md §2).

One saliency map per batch, that of image π(0) (the partner of sample 0),
gives one box around its most salient pixel; the partners' content in that
box is pasted into every sample, and the labels are weighted by the area:

    from sage_jax import augment
    sal = augment.fine_grained_saliency(uint8_images)     # (B,H,W,C) -> (B,H,W)
    out = augment.saliencymix(key, images, labels, sal, num_classes=10)

Two saliency sources:

* `fine_grained_saliency` (default, pure JAX, runs on the device): OpenCV's
  static fine-grained saliency of the 8-bit image, as the method's authors
  describe it; bit-exact against `cv2.saliency.StaticSaliencyFineGrained`.
* `opencv_saliency` (compatibility option, host OpenCV): the released code
  hands OpenCV the *normalised float32 RGB* image, which OpenCV misreads
  (docs/baselines.md §2); that map is what produced the published numbers. It is
  computed on the host through `jax.pure_callback` for the one image the
  batch needs:

      perm = jax.random.permutation(perm_key, batch)
      sal = augment.opencv_saliency(images[perm[0]])      # (H, W)
      out = augment.saliencymix(key, images, labels, sal, perm=perm, ...)

  It needs `pip install opencv-contrib-python-headless` (tested: 5.0.0.93);
  nothing else in this module imports OpenCV.
"""
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.augment import _checks
from sage_jax.augment import mixing

# Centre-surround half-sizes n of OpenCV's fine-grained saliency, in its order.
_SCALES = (12, 24, 48, 28, 56, 112)
# OpenCV's 8-bit BGR2GRAY: (B·3735 + G·19235 + R·9798 + 2^14) >> 15. Found by
# exhausting all 2^24 colours against cv2.cvtColor (0 mismatches); the
# textbook 14-bit weights (1868, 9617, 4899) disagree on 0.26% of colours.
_GRAY_WEIGHTS = (3735, 19235, 9798)
_GRAY_SHIFT = 15
# float32 holds every integer below this exactly.
_FLOAT32_EXACT = 2 ** 24
# Channel counts with tested OpenCV parity (OpenCV itself takes more, but
# only C = 3 is converted to grey; see `fine_grained_saliency`).
_CHANNELS = (1, 2, 3, 4)
_PIP_PACKAGE = "opencv-contrib-python-headless"


def _to_gray(images: jax.Array) -> jax.Array:
  """(B,H,W,C) uint8 -> int32 (B,H,W,C'): grey for C = 3 (C' = 1), else as is."""
  pixels = images.astype(jnp.int32)
  if pixels.shape[-1] != 3:
    return pixels
  blue, green, red = _GRAY_WEIGHTS
  gray = (pixels[..., 0] * blue + pixels[..., 1] * green
          + pixels[..., 2] * red + (1 << (_GRAY_SHIFT - 1))) >> _GRAY_SHIFT
  return gray[..., None]


def _blur3(pixels: jax.Array) -> jax.Array:
  """OpenCV's 8-bit 3×3 GaussianBlur (σ = 0) of int32 (B,H,W,C) values.

  Taps (1,2,1)⊗(1,2,1)/16, border reflect-101 (`jnp.pad(mode="reflect")`),
  rounded half up back to integers: (Σ + 8) >> 4, which is what OpenCV's
  fixed-point path returns (0 mismatches on random images, C = 1, 3, 4).
  """
  padded = jnp.pad(pixels, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  rows = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
  both = rows[:, :, :-2] + 2 * rows[:, :, 1:-1] + rows[:, :, 2:]
  return (both + 8) >> 4


def _integral(pixels: jax.Array, exact: bool) -> jax.Array:
  """OpenCV's float32 integral image of int32 (B,H,W,C): (B,H+1,W+1,C).

  OpenCV sums each row exactly and adds it to the row above in float32, so
  once the totals pass 2^24 the table is rounded, row by row. `exact=True`
  (all entries below 2^24) computes the same table in int32; otherwise a
  sequential float32 scan over rows reproduces the rounding. Returns int32
  or float32 accordingly.
  """
  row_sums = jnp.cumsum(pixels, axis=2)  # Exact: W·255 < 2^24 for W ≤ 65793.
  if exact:
    table = jnp.cumsum(row_sums, axis=1)
  else:
    rows_first = jnp.moveaxis(row_sums.astype(jnp.float32), 1, 0)

    def add_row(above, row):
      current = above + row
      return current, current

    _, table = jax.lax.scan(add_row, jnp.zeros_like(rows_first[0]), rows_first)
    table = jnp.moveaxis(table, 0, 1)
  return jnp.pad(table, ((0, 0), (1, 0), (1, 0), (0, 0)))


def _clipped_shift(table: jax.Array, axis: int, offset: int, size: int):
  """Entries clip(p + offset, 0, size) for p = 0..size-1 along `axis`.

  `table` has size + 1 entries along `axis`; edge padding then a static slice
  is a gather with static clipped indices, but much cheaper.
  """
  before = max(0, -offset)
  after = max(0, offset - 1)
  pads = [(0, 0)] * table.ndim
  pads[axis] = (before, after)
  padded = jnp.pad(table, pads, mode="edge") if before or after else table
  start = offset + before
  return jax.lax.slice_in_dim(padded, start, start + size, axis=axis)


def _floor_div(num: jax.Array, den: jax.Array) -> jax.Array:
  """floor(num/den) of int32 num ≥ 0, den ≥ 1, exactly, without integer division.

  CPUs have no vector integer division; a float32 quotient plus two integer
  corrections is exact for every int32 and vectorises.
  """
  den_f = den.astype(jnp.float32)
  quot = (num.astype(jnp.float32) / den_f).astype(jnp.int32)
  # The float quotient is within 2^-23 relative: the remainder is small
  # enough for a second float step to land within one of the answer.
  quot += ((num - quot * den).astype(jnp.float32) / den_f).astype(jnp.int32)
  rem = num - quot * den
  return quot - (rem < 0).astype(jnp.int32) + (rem >= den).astype(jnp.int32)


def _window_others(height: int, width: int, n: int) -> np.ndarray:
  """int32 (H, W): pixels in the clipped window of scale n, minus the centre."""
  def extent(size):
    pos = np.arange(size)
    return np.clip(pos + n + 1, 0, size) - np.clip(pos - n + 1, 0, size)
  return (extent(height)[:, None] * extent(width)[None, :] - 1).astype(np.int32)


def _fine_grained(images: jax.Array) -> jax.Array:
  """`fine_grained_saliency` before the uint8 wrap: int32 (B,H,W) in 0..510.

  The caller takes it modulo 256 (kept apart so tests can see the wrap).
  """
  batch, height, width, _ = images.shape
  gray = _blur3(_blur3(_to_gray(images)))
  channels = gray.shape[-1]
  # Every table entry and the a + d partial sum below stay under 2^24: then
  # float32 arithmetic is exact and int32 gives OpenCV's numbers.
  exact = 2 * 255 * height * width < _FLOAT32_EXACT
  table = _integral(gray, exact)
  # OpenCV reads both the centre byte and the table entry at (y, x) as if the
  # images had one channel: element x of row y. For C = 1 (and the grey
  # image of C = 3) that is pixel (y, x); for C = 2, 4 it is channel x mod C
  # of pixel x div C, so only the left W/C pixels are ever read.
  table = table.reshape(batch, height + 1, (width + 1) * channels)[:, :, :width + 1]
  centre = gray.reshape(batch, height, width * channels)[:, :, :width]

  on = jnp.zeros((batch, height, width), jnp.int32)
  off = jnp.zeros((batch, height, width), jnp.int32)
  for n in _SCALES:
    # The window of pixel p spans [p-n+1, p+n+1), clipped to the image: the
    # table rows (columns) at the clipped ends, read as static slices.
    rows_top = _clipped_shift(table, 1, 1 - n, height)
    rows_bottom = _clipped_shift(table, 1, n + 1, height)
    # OpenCV's order of the four float32 corner reads (the order matters once
    # the table is rounded): ((I[b,r] + I[t,l]) - I[b,l]) - I[t,r].
    window = (((_clipped_shift(rows_bottom, 2, n + 1, width)
                + _clipped_shift(rows_top, 2, 1 - n, width))
               - _clipped_shift(rows_bottom, 2, 1 - n, width))
              - _clipped_shift(rows_top, 2, n + 1, width))
    window = window.astype(jnp.int32)  # Integer-valued floats: exact.
    # The window holds `area` pixels; the surround mean excludes the centre.
    others = jnp.asarray(_window_others(height, width, n))  # (H, W), static
    # OpenCV: mean = (window - c)/others, on = uint8(trunc(c - mean)) if
    # > 0, off = uint8(trunc(mean - c)) if > 0. With num = c·others
    # - (window - c), c - mean = num/others exactly; its truncation is the
    # integer division below, which equals OpenCV's float result because
    # the distance of num/others to the next integer (≥ 1/others) exceeds
    # the float error of the mean (see `fine_grained_saliency`).
    num = centre * others - (window - centre)
    safe = jnp.broadcast_to(jnp.maximum(others, 1), num.shape)
    # A 1×1 image has no surround (0/0 in OpenCV): its map is 0.
    has_surround = others > 0
    # Truncation of positive quotients; the uint8 cast wraps (C = 2, 4).
    on += jnp.where((num > 0) & has_surround,
                    _floor_div(jnp.maximum(num, 0), safe), 0) & 255
    off += jnp.where((num < 0) & has_surround,
                     _floor_div(jnp.maximum(-num, 0), safe), 0) & 255

  def scale_to_255(x, peak):
    # trunc(255·x/peak) of non-negative ints; a zero peak (flat image) → 0,
    # as OpenCV's 0/0 casts to 0.
    return _floor_div(255 * x, jnp.broadcast_to(jnp.maximum(peak, 1), x.shape))

  on = scale_to_255(on, jnp.max(on, axis=(1, 2), keepdims=True))
  off = scale_to_255(off, jnp.max(off, axis=(1, 2), keepdims=True))
  peak = jnp.maximum(jnp.max(on, axis=(1, 2), keepdims=True),
                     jnp.max(off, axis=(1, 2), keepdims=True))
  # on + off can reach 2·peak, so this reaches 510; see the caller's wrap.
  return scale_to_255(on + off, peak)


def fine_grained_saliency(images: jax.Array) -> jax.Array:
  """OpenCV's static fine-grained saliency of 8-bit images, in JAX.

  Equals `cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(x)`
  for each (H, W, C) uint8 array x as given, bit for bit: the channels are
  read as OpenCV reads them (channel 0 is Blue when C = 3, so an RGB array is
  treated as BGR, exactly as cv2 treats it). The steps, each matched to
  OpenCV empirically:

  1. C = 3: grey = (c0·3735 + c1·19235 + c2·9798 + 2^14) >> 15. Any other C
     is kept as is (OpenCV converts only 3 channels).
  2. Two 3×3 Gaussian blurs (taps 1,2,1; border reflect-101), each rounded
     back to 8 bits.
  3. A float32 integral image I (rounded row by row once the sums pass
     2^24, as OpenCV's is).
  4. For n in (12, 24, 48, 28, 56, 112) and each pixel p, the window
     [p-n+1, p+n+1) clipped to the image on both axes; surround mean
     = (window sum - centre)/(area - 1); on = trunc(centre - mean) and
     off = trunc(mean - centre) where positive, each cast to uint8.
  5. ΣOn, ΣOff over the scales; on' = trunc(255·ΣOn/max ΣOn), same for off;
     out = trunc(255·(on' + off')/max(max on', max off')) mod 256 (a uint8
     wrap-around: the most salient pixels can come out dark, as in OpenCV);
     map = float32(out) · float32(1/255).

  For C = 2 and 4, OpenCV reads the centre byte and the integral entry at
  (y, x) as element x of row y of the multi-channel buffers, i.e. channel
  x mod C of pixel x div C; this is reproduced (and tested), though the
  result is not a meaningful saliency map. A flat image gives all zeros.

  Exactness. Steps 1-3 and 5 are integer-exact here (step 3 in float32
  where OpenCV's sums pass 2^24). In step 4 the truncated quotient is an
  exact integer floor division; that equals OpenCV's float result whenever
  the float error of the quotient is below 1/(area - 1), the least distance
  of a non-integer quotient to an integer. For C = 1 and 3 the mean and the
  difference are at most about 255, so that error is about 2^-16 or less,
  below 1/50175 for every window OpenCV can form (the largest is 224×224):
  exact at every image size (tested up to 400×400; W ≤ 65793 keeps the row
  sums below 2^24). For C = 2 and 4 the misread window sums are unbounded
  mixes of channels; exactness is then guaranteed while 5·255·H·W < 2^24
  (H·W ≤ 13157, e.g. 114×114); beyond that a difference needs a quotient
  within one float ulp of an integer and was not seen on images up to
  418×403. Tested with opencv-contrib-python-headless 5.0.0.93.

  Args:
    images: uint8 (B, H, W, C), C in {1, 2, 3, 4}, B, H, W ≥ 1. Works under
      jit and vmap (all indices are static; the only loop is a `lax.scan`
      over rows for images with 2·255·H·W ≥ 2^24).

  Returns:
    float32 (B, H, W) maps with values k/255 (k integer in 0..255), equal to
    OpenCV's float32 output.

  Raises:
    ValueError: if `images` is not rank 4, is empty, is not uint8 (convert
      0..255 pixels with `.astype(jnp.uint8)`; for normalised float images
      of the released code use `opencv_saliency`), or has a channel count
      other than 1, 2, 3 or 4.
  """
  _checks.check_rank("images", images, 4, "(B, H, W, C)")
  if any(d < 1 for d in jnp.shape(images)):
    raise ValueError(f"`images` must be non-empty; got shape {jnp.shape(images)}.")
  dtype = jnp.result_type(images)
  if dtype != jnp.uint8:
    raise ValueError(
        f"`images` must be uint8 pixels in 0..255 (OpenCV's 8-bit input); got "
        f"dtype {dtype}. Convert with `.astype(jnp.uint8)` from 0..255 values, "
        "or use `opencv_saliency` for the released code's float input.")
  channels = jnp.shape(images)[-1]
  if channels not in _CHANNELS:
    raise ValueError(
        f"`images` must have 1, 2, 3 or 4 channels (C = 3 is read as BGR, as "
        f"OpenCV does); got C = {channels} in shape {jnp.shape(images)}.")
  # OpenCV stores the result in a uint8 image: values above 255 (a pixel
  # both brighter than its near and darker than its far surround) wrap.
  out = _fine_grained(jnp.asarray(images)) & 255
  # OpenCV converts with convertTo(CV_32F, 1/255): a float32 product with
  # float32(1/255), which differs from out/255 in the last bit for some out.
  return out.astype(jnp.float32) * jnp.float32(1.0 / 255.0)


@functools.lru_cache(maxsize=None)
def _cut_thresholds(size: int) -> np.ndarray:
  """float32 (size,): T[k-1] = largest float32 λ in [0, 1] whose cut ≥ k.

  The cut is the released code's `int(size * np.sqrt(1. - lam))` in float64.
  It is non-increasing in λ, so `cut(λ) = #{k : λ ≤ T[k-1]}` holds for every
  float32 λ in [0, 1]; a float32 sqrt would disagree next to the λ where
  the product is an integer. Binary search over float32 bit patterns
  (ordered like the values for λ ≥ 0).
  """
  wanted = np.arange(1, size + 1)
  low = np.zeros(size, np.int64)  # Bits of 0.0: cut(0) = size ≥ k.
  high = np.full(size, int(np.float32(1.0).view(np.int32)), np.int64)
  while np.any(low < high):
    mid = (low + high + 1) // 2
    lam = mid.astype(np.int32).view(np.float32).astype(np.float64)
    reached = np.floor(size * np.sqrt(1.0 - lam)) >= wanted
    low = np.where(reached, mid, low)
    high = np.where(reached, high, mid - 1)
  return low.astype(np.int32).view(np.float32)


def _cut(size: int, lam: jax.Array) -> jax.Array:
  """int32 `int(size·sqrt(1-λ))` as float64 NumPy computes it, for float32 λ."""
  return jnp.sum(lam <= jnp.asarray(_cut_thresholds(size))).astype(jnp.int32)


def _check_map_values(name: str, saliency: Any) -> None:
  if _checks.is_concrete(saliency):
    values = np.asarray(saliency, np.float32)
    if not np.all((values >= 0.0) & (values <= 1.0)):
      raise ValueError(
          f"`{name}` must hold values in [0, 1] (it is quantised as "
          f"uint8(map·255), as the released code does); got values in "
          f"[{np.nanmin(values)}, {np.nanmax(values)}]. Rescale it, e.g. "
          "divide by its maximum.")


def _box(saliency: jax.Array, mix_ratio: jax.Array):
  """`saliency_box` without the argument checks."""
  height, width = saliency.shape
  cut_h = _cut(height, mix_ratio)
  cut_w = _cut(width, mix_ratio)
  # The released code's uint8(map·255): a float32 product truncated. Values
  # outside [0, 1] (impossible for OpenCV's maps) are clipped first, since
  # the uint8 cast is undefined there.
  levels = (jnp.clip(saliency.astype(jnp.float32), 0.0, 1.0)
            * jnp.float32(255.0)).astype(jnp.int32)
  peak = jnp.argmax(levels.reshape(-1))  # First maximum in row-major order.
  row = (peak // width).astype(jnp.int32)
  col = (peak % width).astype(jnp.int32)
  top = jnp.clip(row - cut_h // 2, 0, height)
  bottom = jnp.clip(row + cut_h // 2, 0, height)
  left = jnp.clip(col - cut_w // 2, 0, width)
  right = jnp.clip(col + cut_w // 2, 0, width)
  return top, bottom, left, right


def saliency_box(saliency: jax.Array, lam: Any):
  """SaliencyMix's box for one saliency map and mix ratio λ (released code).

  cut_h = int(H·√(1-λ)), cut_w = int(W·√(1-λ)) exactly as float64 NumPy
  computes them (for the float32 value of λ); (r*, c*) = first row-major
  argmax of uint8(map·255); rows [clip(r* - cut_h//2, 0, H),
  clip(r* + cut_h//2, 0, H)), columns likewise. The box is at most
  2·(cut//2) wide (the odd pixel is lost), smaller when clipped, and empty
  when cut ≤ 1.

  Args:
    saliency: float (H, W) map in [0, 1], e.g. one map of
      `fine_grained_saliency` or `opencv_saliency`; taken as float32. Under
      jit, values outside [0, 1] are clipped.
    lam: scalar λ in [0, 1] (Python float or array; taken as float32).

  Returns:
    (top, bottom, left, right) int32 scalars: the box is rows [top, bottom),
    columns [left, right).

  Raises:
    ValueError: if `saliency` is not rank 2 or empty, or (when concrete) has
      values outside [0, 1], or `lam` is not a scalar in [0, 1].
  """
  _checks.check_rank("saliency", saliency, 2, "(H, W)")
  if any(d < 1 for d in jnp.shape(saliency)):
    raise ValueError(f"`saliency` must be non-empty; got shape {jnp.shape(saliency)}.")
  _check_map_values("saliency", saliency)
  if jnp.ndim(lam) != 0:
    raise ValueError(f"`lam` must be a scalar; got shape {jnp.shape(lam)}.")
  _checks.check_unit_interval("lam", lam)
  return _box(jnp.asarray(saliency), jnp.asarray(lam, jnp.float32))


def saliencymix(key: jax.Array, images: jax.Array, labels: jax.Array,
                saliency: jax.Array, *, alpha: float = 1.0,
                mix_prob: float = 0.5, num_classes: Optional[int] = None,
                lam: Optional[Any] = None,
                perm: Optional[jax.Array] = None,
                check_labels: bool = False) -> mixing.MixResult:
  """SaliencyMix of one batch as the SAGE release runs it (docs/baselines.md §2).

  With probability `mix_prob` the batch is mixed: λ ~ Beta(α, α), a random
  permutation π, one box from the saliency map of image π(0) (see
  `saliency_box`), and x'_i = x_π(i) inside the box, x_i outside, for every
  i; every row gets the label weight λ' = 1 - box area/(H·W). Otherwise
  the batch is returned unchanged with λ' = 1 (one-hot or given labels).
  The decision is a `jnp.where`, so one compiled program serves both.

  Args:
    key: PRNG key, split as `apply_key, lam_key, perm_key =
      jax.random.split(key, 3)`; mixed iff `uniform(apply_key) < mix_prob`.
    images: (B, H, W, C) floating, normalised images.
    labels: int (B,) class indices (then `num_classes` is required) or float
      (B, K) one-hot or soft labels.
    saliency: maps in [0, 1]: either (B, H, W), one per image (only that of
      image π(0) is used), or (H, W), already the map of image π(0); the
      latter needs `perm`, since π(0) must be known to compute it.
    alpha: Beta(α, α) parameter of λ, > 0 (the release uses 1).
    mix_prob: probability that the batch is mixed, in [0, 1] (release: 0.5).
    num_classes: number of classes, needed for int labels.
    lam: optional scalar λ in [0, 1] that sizes the box (overrides the Beta
      draw; the returned weight is still the area-corrected λ').
    perm: optional int (B,) partner indices (overrides the permutation).
    check_labels: with traced int labels, add a `checkify` range check, as
      in `mixup`. `num_classes` and `check_labels` are static under jit
      (`static_argnames=MIX_STATIC_ARGNAMES`).

  Returns:
    `MixResult(images, labels, lam, perm, offset)`: mixed images (input
    dtype), float32 (B, K) labels λ'·y_i + (1-λ')·y_π(i), float32 (B,) λ'
    (ones when not mixed), int32 (B,) π (returned even when not mixed), and
    int32 (B, 2) zero offsets.

  Raises:
    ValueError: on wrong ranks or shapes (images, labels, saliency, perm),
      int labels without `num_classes`, `alpha` ≤ 0, `mix_prob` or `lam`
      outside [0, 1], saliency values outside [0, 1] (checked when
      concrete), or an (H, W) saliency without `perm`.
    TypeError: if `num_classes` or `check_labels` is traced (mark them static).
  """
  # pylint: disable=protected-access
  targets = mixing._check_common(images, labels, num_classes, alpha,
                                 check_labels, "augment.saliencymix",
                                 mixing.MIX_STATIC_ARGNAMES)
  _checks.check_unit_interval("mix_prob", mix_prob)
  batch, height, width, _ = images.shape
  sal_shape = jnp.shape(saliency)
  if sal_shape == (height, width):
    if perm is None:
      raise ValueError(
          "an (H, W) `saliency` is the map of image perm[0], so `perm` must be "
          "passed too; or pass (B, H, W) maps, one per image.")
  elif sal_shape != (batch, height, width):
    raise ValueError(
        f"`saliency` must have shape (B, H, W) = {(batch, height, width)} or "
        f"(H, W) = {(height, width)} to match `images`; got {sal_shape}.")
  _check_map_values("saliency", saliency)

  apply_key, lam_key, perm_key = jax.random.split(key, 3)
  mixed_batch = jax.random.uniform(apply_key) < mix_prob
  mix_ratio = mixing._resolve_lam(
      lam, lam_key, lambda k: jax.random.beta(k, alpha, alpha))
  perm = mixing._resolve_perm(perm, perm_key, batch)

  # NumPy inputs are indexed by the traced permutation below.
  images = jnp.asarray(images)
  saliency = jax.lax.stop_gradient(jnp.asarray(saliency))
  partner_map = saliency if saliency.ndim == 2 else saliency[perm[0]]
  top, bottom, left, right = _box(partner_map, mix_ratio)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  in_box = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
  in_box = in_box & mixed_batch
  mixed = jnp.where(in_box[None, :, :, None], images[perm], images)
  box_area = (bottom - top) * (right - left)
  own = 1.0 - box_area.astype(jnp.float32) / (height * width)
  own = jnp.where(mixed_batch, own, 1.0)
  own_weight = jnp.full((batch,), own, jnp.float32)
  labels = mixing._mix_labels(targets, perm, own_weight)
  # pylint: enable=protected-access
  return mixing.MixResult(mixed, labels, own_weight, perm,
                          jnp.zeros((batch, 2), jnp.int32))


def _import_cv2_saliency():
  """Returns cv2 with its contrib `saliency` module, or a clear ImportError."""
  try:
    import cv2  # pylint: disable=import-outside-toplevel
  except ImportError as err:
    raise ImportError(
        "`opencv_saliency` needs OpenCV with the contrib modules: "
        f"`pip install {_PIP_PACKAGE}` (tested with 5.0.0.93). The default "
        "`fine_grained_saliency` needs no OpenCV.") from err
  if not hasattr(cv2, "saliency"):
    raise ImportError(
        "the installed OpenCV lacks the contrib `saliency` module that "
        f"`opencv_saliency` needs: `pip install {_PIP_PACKAGE}` (tested with "
        "5.0.0.93), in place of opencv-python.")
  return cv2


def opencv_saliency(image: jax.Array) -> jax.Array:
  """The released code's saliency map, computed by OpenCV on the host.

  Compatibility option that reproduces the published SaliencyMix numbers:
  the release passes the *normalised float32 RGB* image to
  `cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency`, which
  on float input reads bytes of the float buffer as pixels (docs/baselines.md §2);
  that result depends on the last bits of OpenCV's float blur, so it is
  not reimplemented here but called through `jax.pure_callback`. This works
  under jit, vmap (one host call per image) and inside `jax.shard_map`.
  One call per batch costs microseconds of host time plus a device-host
  round trip. For the method as its authors describe it, use
  `fine_grained_saliency` (no OpenCV).

  Args:
    image: (H, W, C) array exactly as the released code passes it: floating
      (cast to float32), normalised, RGB order (C = 3; 1, 2 and 4 are passed
      on too). uint8 input is passed unchanged (the result then equals
      `fine_grained_saliency`).

  Returns:
    float32 (H, W) map in [0, 1], OpenCV's output.

  Raises:
    ImportError: if OpenCV with the contrib modules is not installed; it
      names the pip package `opencv-contrib-python-headless`.
    ValueError: if `image` is not rank 3, is empty, has a dtype other than
      floating or uint8, or C not in {1, 2, 3, 4}.
  """
  cv2 = _import_cv2_saliency()
  _checks.check_rank("image", image, 3, "(H, W, C)")
  height, width, channels = jnp.shape(image)
  if min(height, width, channels) < 1:
    raise ValueError(f"`image` must be non-empty; got shape {jnp.shape(image)}.")
  if channels not in _CHANNELS:
    raise ValueError(
        f"`image` must have 1, 2, 3 or 4 channels (the release passes 3, "
        f"RGB); got shape {jnp.shape(image)}.")
  dtype = jnp.result_type(image)
  if jnp.issubdtype(dtype, jnp.floating):
    image = jnp.asarray(image, jnp.float32)
  elif dtype != jnp.uint8:
    raise ValueError(
        f"`image` must be floating (the normalised image) or uint8; got {dtype}.")

  def host_saliency(pixels):
    pixels = np.ascontiguousarray(np.asarray(pixels))
    detector = cv2.saliency.StaticSaliencyFineGrained_create()
    ok, sal = detector.computeSaliency(pixels)
    if not ok:
      raise RuntimeError("OpenCV's computeSaliency reported failure.")
    return np.asarray(sal, np.float32).reshape(height, width)

  return jax.pure_callback(
      host_saliency, jax.ShapeDtypeStruct((height, width), jnp.float32),
      jnp.asarray(image), vmap_method="sequential")
