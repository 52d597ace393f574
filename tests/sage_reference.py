"""A slow, loop-based NumPy reference of SAGE written from the spec (§1).

Float64 throughout; no vectorisation tricks, no FFT: every offset is scored by
the definition. Used only by the tests.
"""
import numpy as np


def gaussian_kernel_2d(sigma, kernel_size):
  half = kernel_size // 2
  taps = np.array([np.exp(-(t * t) / (2.0 * sigma * sigma))
                   for t in range(-half, half + 1)])
  taps /= taps.sum()
  return np.outer(taps, taps)


def saliency_map(input_grads, sigma=1.0, kernel_size=5):
  """(B,H,W,C) -> (B,H,W): mean |g| over channels, reflect-padded Gaussian."""
  grads = np.asarray(input_grads, np.float64)
  raw = np.abs(grads).mean(axis=-1)
  kernel = gaussian_kernel_2d(sigma, kernel_size)
  half = kernel_size // 2
  out = np.zeros_like(raw)
  for b in range(raw.shape[0]):
    padded = np.pad(raw[b], half, mode="reflect")
    for r in range(raw.shape[1]):
      for c in range(raw.shape[2]):
        out[b, r, c] = np.sum(padded[r:r + kernel_size, c:c + kernel_size] * kernel)
  return out


def shift(x, dy, dx):
  """out[r, c] = x[r - dy, c - dx] inside the frame, else 0."""
  out = np.zeros_like(x)
  height, width = x.shape[:2]
  for r in range(height):
    for c in range(width):
      src_r, src_c = r - dy, c - dx
      if 0 <= src_r < height and 0 <= src_c < width:
        out[r, c] = x[src_r, src_c]
  return out


def shift_fast(x, dy, dx):
  """Same as `shift`, by slicing (for the brute-force search's speed)."""
  out = np.zeros_like(x)
  height, width = x.shape[:2]
  out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = (
      x[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)])
  return out


def normalise(sal, total):
  s = sal.sum()
  if s <= 0:
    return np.full_like(sal, total / sal.size)
  return sal / s * total


def score(sal0, sal1, dy, dx, shift_fn=shift):
  moved = shift_fn(sal1, dy, dx)
  mask = sal0 / np.maximum(sal0 + moved, 1e-16)
  return np.sum(sal0 * mask + moved * (1.0 - mask))


def all_offsets(height, width):
  return [(dy, dx) for dy in range(-(height - 1), height)
          for dx in range(-(width - 1), width)]


def sage(images, targets, saliency, lam, perm, offsets, mask="saliency"):
  """SAGE with given λ, permutation and candidate offsets (first max wins).

  mask="constant" is the "w/o SM" ablation: same search, but M = λ at every
  pixel (zero-filled pixels count as the partner's), so γ = λ.

  Returns (images, labels, gamma, chosen offsets) as float64 / int arrays.
  """
  images = np.asarray(images, np.float64)
  targets = np.asarray(targets, np.float64)
  saliency = np.asarray(saliency, np.float64)
  batch = images.shape[0]
  out_images = np.zeros_like(images)
  out_labels = np.zeros_like(targets)
  gammas = np.zeros(batch)
  chosen = np.zeros((batch, 2), np.int64)
  for i in range(batch):
    j = perm[i]
    sal0 = normalise(saliency[i], max(lam, 1e-12))
    sal1 = normalise(saliency[j], max(1.0 - lam, 1e-12))
    shift_fn = shift_fast if len(offsets) > 64 else shift
    best, best_value = None, -np.inf
    for dy, dx in offsets:
      value = score(sal0, sal1, dy, dx, shift_fn)
      if value > best_value:
        best, best_value = (dy, dx), value
    dy, dx = best
    moved = shift(sal1, dy, dx)
    if mask == "constant":
      weights = np.full(moved.shape, float(lam))
    else:
      weights = sal0 / np.maximum(sal0 + moved, 1e-16)
    partner = shift(images[j], dy, dx)
    out_images[i] = weights[..., None] * images[i] + (1.0 - weights[..., None]) * partner
    gammas[i] = weights.mean()
    out_labels[i] = gammas[i] * targets[i] + (1.0 - gammas[i]) * targets[j]
    chosen[i] = best
  return out_images, out_labels, gammas, chosen
