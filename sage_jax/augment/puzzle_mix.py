"""Puzzle Mix (Kim et al., ICML 2020) on the accelerator, as the SAGE release runs it.

Per batch (docs/baselines.md §3.2): a block count n drawn uniformly from
`block_nums` = (2, 4, 8, 16), one permutation pairing image i with partner
j = π(i), one λ ~ Beta(α, α). Per pair:

1. **Mask energy** (§3.3, `block_energy`): a 3-label MRF on the n×n block
   grid. Label l keeps the share m_l = 1 − l/2 of image i in a block. The
   unary cost of a label is the saliency it gives up (normalised,
   block-pooled saliency of the image that is covered) plus the
   data-smoothness terms folded into the unaries, plus a prior that makes the
   mean of the mask close to λ; neighbouring blocks pay w·(l_p − l_q)²/4.
2. **Mask** (§3.4): the labelling minimising that energy, found on the
   device by `grid_mrf.solve_grid_mrf` (the release runs a CPU α-β swap per
   sample; ours is exact for n ≤ 4 and, at n = 8 and 16, Ishikawa lifting
   plus strip moves, never worse than gco on the measured real data).
3. **Transport** (§3.5): each image's salient patches move, at the cost of
   distance, into the cells where the mask keeps that image
   (`transport.transport_sources`, `transport.move_patches`).
4. **Mix**: x̃ = M⊙x_i' + (1−M)⊙x_j', label weight ρ_i = mean(M).

    from sage_jax import augment
    grads = jax.grad(eval_loss, argnums=1)(params, images, labels)   # eval-mode BN
    sal = augment.puzzle_saliency(grads)                  # (B,H,W,C) -> (B,H,W)
    out = augment.puzzle_mix(key, images, labels, sal, num_classes=10,
                             mean=CIFAR_MEAN, std=CIFAR_STD)
    loss = bce(model(out.images), out.labels)

Everything is jit-compiled with fixed shapes per n; the four block counts are
four branches of one `lax.switch`, so no step recompiles. (Under `jax.vmap`
a switch on a batched index evaluates every branch; call `puzzle_mix` on the
whole batch instead of vmapping it.)
"""
import functools
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax.augment import _checks
from sage_jax.augment import grid_mrf
from sage_jax.augment import mixing
from sage_jax.augment import transport as transport_lib

# The released CIFAR settings (docs/baselines.md §3: `--method puzzle`).
BLOCK_NUMS = (2, 4, 8, 16)
NUM_LABELS = 3
# Options that fix shapes or Python control flow: static under `jax.jit`.
PUZZLE_STATIC_ARGNAMES = ("num_classes", "block_nums", "block_num", "neigh_size",
                          "transport", "transport_size", "check_labels")
# log(P_l + 1e-8) in the label prior (released code).
_PRIOR_EPS = 1e-8
# Per-sample saliency totals below this are treated as zero maps (see
# `_normalised_block_saliency`).
_TINY = 1e-30


class GridEnergy(NamedTuple):
  """The mask energy of one batch on the n×n block grid (docs/baselines.md §3.3).

  E(l) = Σ_p unary[p, l_p] + Σ_(p,q) w_pq · pairwise[l_p, l_q] over the
  vertical (p above q) and horizontal (p left of q) edges.

  Attributes:
    unary: float32 (B, n, n, 3); label l keeps the share 1 − l/2 of image i.
    weight_vertical: float32 (B, n−1, n), edge (r, c)–(r+1, c).
    weight_horizontal: float32 (B, n, n−1), edge (r, c)–(r, c+1).
    pairwise: float32 (3, 3) table (l_p − l_q)²/4.
  """
  unary: jax.Array
  weight_vertical: jax.Array
  weight_horizontal: jax.Array
  pairwise: jax.Array


def pairwise_table(num_labels: int = NUM_LABELS) -> jax.Array:
  """float32 (L, L): (i − j)² / (L − 1)², the release's label-distance table."""
  index = np.arange(num_labels, dtype=np.float64)
  return jnp.asarray((index[:, None] - index[None, :]) ** 2 / (num_labels - 1) ** 2,
                     jnp.float32)


def puzzle_saliency(input_grads: jax.Array) -> jax.Array:
  """Puzzle Mix saliency: root mean square of ∂ℓ/∂x over channels (docs/baselines.md §3.1).

  Args:
    input_grads: float (B, H, W, C), gradient of the loss with respect to the
      input images (the release: eval-mode BN, mean softmax cross-entropy).

  Returns:
    float32 (B, H, W), non-negative; gradients do not flow through it.

  Raises:
    ValueError: if `input_grads` is not a floating (B, H, W, C) array.
  """
  _checks.check_rank("input_grads", input_grads, 4, "(B, H, W, C)")
  _checks.check_layout("input_grads", input_grads)
  if not jnp.issubdtype(jnp.result_type(input_grads), jnp.floating):
    raise ValueError(
        f"`input_grads` must be floating; got {jnp.result_type(input_grads)}.")
  grads = jax.lax.stop_gradient(jnp.asarray(input_grads, jnp.float32))
  return jnp.sqrt(jnp.mean(grads * grads, axis=-1))


def _avg_pool(x: jax.Array, size: int) -> jax.Array:
  """Mean over non-overlapping size×size windows of (B, H, W, ...) arrays."""
  batch, height, width = x.shape[:3]
  rest = x.shape[3:]
  x = x.reshape((batch, height // size, size, width // size, size) + rest)
  return jnp.mean(x, axis=(2, 4))


def _normalised_block_saliency(saliency: jax.Array, size: int) -> jax.Array:
  """(B, H/size, W/size): block means of the saliency, each map summing to 1.

  The release divides by the map's sum and gets NaN for an all-zero map
  (e.g. a saturated model); such a map becomes uniform here, so the pair is
  mixed by the prior and smoothness terms alone.
  """
  pooled = _avg_pool(saliency, size)
  total = jnp.sum(pooled, axis=(1, 2), keepdims=True)
  uniform = jnp.full_like(pooled, 1.0 / (pooled.shape[1] * pooled.shape[2]))
  return jnp.where(total > _TINY, pooled / jnp.maximum(total, _TINY), uniform)


def _neighbour_penalty(upper: jax.Array, lower: jax.Array, k: int):
  """Data-smoothness of joining two sources across the block borders.

  `upper`, `lower`: (B, n·k, n·k, C) images pooled over neigh_size windows.
  Vertical edge (r, c)–(r+1, c): the mean, over the k pooled columns of block
  column c and the channels, of |upper[(r+1)k − 1] − lower[(r+1)k]| (the last
  pooled row of the upper block against the first of the lower one). The
  horizontal edges are the same with rows and columns swapped.

  Returns:
    ((B, n−1, n) vertical, (B, n, n−1) horizontal) float32.
  """
  batch, rows, cols, _ = upper.shape
  n = rows // k
  vertical = jnp.abs(upper[:, k - 1:-1:k] - lower[:, k::k]).mean(axis=-1)
  vertical = vertical.reshape(batch, n - 1, n, k).mean(axis=-1)
  horizontal = jnp.abs(upper[:, :, k - 1:-1:k] - lower[:, :, k::k]).mean(axis=-1)
  horizontal = horizontal.reshape(batch, n, k, n - 1).mean(axis=2)
  return vertical, horizontal


def label_prior(lam: jax.Array, block_num: int, eta: float) -> jax.Array:
  """(B, 3) float32 prior π_l = (η/n²)·(−log(P_l + 1e-8)).

  P = (λ², 2λ(1−λ), (1−λ)²): the chance of label l when each of the two
  halves of a block independently keeps image i with probability λ.
  """
  lam = jnp.asarray(lam, jnp.float32)
  probs = jnp.stack([lam * lam, 2.0 * lam * (1.0 - lam), (1.0 - lam) ** 2], axis=-1)
  return eta / block_num ** 2 * -jnp.log(probs + _PRIOR_EPS)


def block_energy(saliency: jax.Array, pixel_images: jax.Array, perm: jax.Array,
                 lam: jax.Array, *, block_num: int, beta: float = 1.2,
                 gamma: float = 0.5, eta: float = 0.2,
                 neigh_size: int = 4) -> GridEnergy:
  """The Puzzle Mix mask energy of every pair (i, π(i)) (docs/baselines.md §3.3).

  Args:
    saliency: float (B, H, W) non-negative saliency (`puzzle_saliency`).
    pixel_images: float (B, H, W, C) images in pixel space ([0, 1]: the
      smoothness term compares colours, not normalised values).
    perm: int (B,) partner indices.
    lam: float scalar or (B,) mix ratio λ (share of image i).
    block_num: n (a Python int); H = W must be divisible by n.
    beta: label smoothness β (the release divides it by 16n).
    gamma: data smoothness γ.
    eta: prior weight η.
    neigh_size: pooling of the smoothness term (min(neigh_size, H/n) is used).

  Returns:
    `GridEnergy` with the unaries, edge weights and pairwise table.
  """
  batch, height, _ = saliency.shape
  block_size = height // block_num
  pool = min(neigh_size, block_size)
  k = block_size // pool
  beta_block = beta / block_num / 16.0

  own_sal = _normalised_block_saliency(saliency, block_size)        # s_i
  partner_sal = own_sal[perm]                                        # s_j
  own_pooled = _avg_pool(pixel_images, pool)
  partner_pooled = own_pooled[perm]

  # theta[a][b] for upper/left source a and lower/right source b; S = image i
  # (self), Q = its partner. β'γ·D_ab (§3.3).
  sources = {"S": own_pooled, "Q": partner_pooled}
  theta_v, theta_h = {}, {}
  for a in "SQ":
    for b in "SQ":
      vertical, horizontal = _neighbour_penalty(sources[a], sources[b], k)
      theta_v[a + b] = beta_block * gamma * vertical
      theta_h[a + b] = beta_block * gamma * horizontal

  # Keeping image i in a block forfeits the partner's saliency there, and
  # vice versa; the smoothness terms of each edge are split between its two
  # blocks (the release's rewriting into unary + one weight per edge).
  cost_self = partner_sal
  cost_partner = own_sal

  def add_edges(cost, upper_term, lower_term, axis):
    pad_upper = [(0, 0)] * 3
    pad_lower = [(0, 0)] * 3
    pad_upper[axis] = (0, 1)
    pad_lower[axis] = (1, 0)
    return cost + jnp.pad(upper_term, pad_upper) + jnp.pad(lower_term, pad_lower)

  for theta, axis in ((theta_v, 1), (theta_h, 2)):
    cost_self = add_edges(cost_self, (theta["SQ"] + theta["SS"]) / 2,
                          (theta["QS"] + theta["SS"]) / 2, axis)
    cost_partner = add_edges(cost_partner, (theta["QS"] + theta["QQ"]) / 2,
                             (theta["SQ"] + theta["QQ"]) / 2, axis)

  def edge_weight(theta):
    return beta_block + (theta["SQ"] + theta["QS"] - theta["SS"] - theta["QQ"]) / 2

  keep_share = 1.0 - jnp.arange(NUM_LABELS, dtype=jnp.float32) / (NUM_LABELS - 1)
  lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), (batch,))
  prior = label_prior(lam, block_num, eta)                          # (B, 3)
  unary = (keep_share * cost_self[..., None]
           + (1.0 - keep_share) * cost_partner[..., None]
           + prior[:, None, None, :])
  return GridEnergy(unary.astype(jnp.float32),
                    edge_weight(theta_v).astype(jnp.float32),
                    edge_weight(theta_h).astype(jnp.float32),
                    pairwise_table(NUM_LABELS))


def block_mask(energy: GridEnergy, *, gamma: float = 0.5) -> jax.Array:
  """float32 (B, n, n) mask (share of image i per block) minimising `energy`.

  The weights are w = β' + (θ_SQ + θ_QS − θ_SS − θ_QQ)/2 ≥ β'(1 − γ): colour
  differences of pixels in [0, 1] are at most 1. With γ ≤ 1 they are never
  negative, so the solver's lifted route (exact when converged) applies
  without its run-time check, which would compile a second route (a traced
  `gamma` keeps that check).
  """
  method = "auto"
  if _checks.is_concrete(gamma) and float(gamma) <= 1 and NUM_LABELS ** energy.unary.shape[1] > grid_mrf.AUTO_EXACT_STATES:
    method = "lifted"
  labels = grid_mrf.solve_grid_mrf(energy.unary, energy.pairwise,
                                   energy.weight_vertical, energy.weight_horizontal,
                                   method=method)
  return 1.0 - labels.astype(jnp.float32) / (NUM_LABELS - 1)


def _upsample(mask: jax.Array, size: int) -> jax.Array:
  """Nearest upsampling of (B, g, g) to (B, size, size), size a multiple of g."""
  factor = size // mask.shape[1]
  return jnp.repeat(jnp.repeat(mask, factor, axis=1), factor, axis=2)


def transport_grid(size: int, block_num: int, transport_size: int) -> int:
  """T, the side of the transport grid for block count n (docs/baselines.md §3.5).

  Cells of min(transport_size, block size) pixels: finer than the mask's
  blocks for n = 2, 4 on CIFAR (T = 8), the block grid itself for n = 8, 16.
  """
  return size // min(transport_size, size // block_num)


def _pixel_mask(block_num: int, saliency, pixel_images, perm, lam, **energy_options):
  """Steps 1-2 for one static block count: (mask (B, H, W), ρ (B,))."""
  energy = block_energy(saliency, pixel_images, perm, lam, block_num=block_num,
                        **energy_options)
  mask = block_mask(energy, gamma=energy_options["gamma"])
  return _upsample(mask, saliency.shape[1]), jnp.mean(mask, axis=(1, 2))


def _transport_pair(grid: int, images, partners, pixel_mask, saliency, perm, eps):
  """Step 3 on a static T×T grid: both images of every pair, in one call.

  Image i moves its salient cells into the cells the mask keeps for it
  (mask > 0); its partner into the cells of 1 − mask, by the partner's own
  saliency (the release's two `mask_transport` calls).
  """
  batch, height = images.shape[:2]
  cell = height // grid
  # The mask is constant on each cell (the cells never straddle blocks).
  grid_mask = pixel_mask[:, ::cell, ::cell]
  cell_saliency = _normalised_block_saliency(saliency, cell)
  sources = transport_lib.transport_sources(
      jnp.concatenate([grid_mask, 1.0 - grid_mask]),
      jnp.concatenate([cell_saliency, cell_saliency[perm]]), eps=eps)
  moved = transport_lib.move_patches(jnp.concatenate([images, partners]), sources,
                                     grid)
  return moved[:batch], moved[batch:]


def _choose(index, branches):
  """`branches[index]()`, through `lax.switch` when there is a choice."""
  if len(branches) == 1:
    return branches[0]()
  return jax.lax.switch(index, branches)


def _check_grid(height: int, width: int, block_nums, neigh_size, transport_size):
  if height != width:
    raise ValueError(f"puzzle_mix needs square images; got {height}×{width}.")
  for n in block_nums:
    block_size = height // n if n else 0
    if n < 2 or height % n:
      raise ValueError(
          f"every block count must be ≥ 2 and divide the image size {height}; "
          f"got {n} in `block_nums`/`block_num`.")
    for name, value in (("neigh_size", neigh_size), ("transport_size", transport_size)):
      cell = min(value, block_size)
      if block_size % cell:
        raise ValueError(
            f"`{name}`={value} must divide the block size {block_size} "
            f"({height}/{n}); choose a power of two.")


def puzzle_mix(key: jax.Array, images: jax.Array, labels: jax.Array,
               saliency: jax.Array, *, alpha: float = 1.0, beta: float = 1.2,
               gamma: float = 0.5, eta: float = 0.2, neigh_size: int = 4,
               transport: bool = True, transport_size: int = 4,
               transport_eps: float = 0.8, mean: Any = 0.0, std: Any = 1.0,
               block_nums: Sequence[int] = BLOCK_NUMS,
               num_classes: Optional[int] = None, lam: Optional[Any] = None,
               perm: Optional[jax.Array] = None, block_num: Optional[int] = None,
               check_labels: bool = False) -> mixing.MixResult:
  """Puzzle Mix of one batch (docs/baselines.md §3, the release's CIFAR settings).

  Args:
    key: PRNG key, split into (block count, λ, permutation) keys.
    images: (B, H, W, C) floating, normalised images (H = W, divisible by
      every block count). Transported cells nobody wins become 0, i.e. the
      dataset mean colour, as in the release.
    labels: int (B,) class indices (then `num_classes` is required) or float
      (B, K) one-hot/soft labels.
    saliency: (B, H, W) non-negative saliency, e.g. `puzzle_saliency` of the
      input gradient of an eval-mode pass.
    alpha: λ ~ Beta(alpha, alpha), one per batch; > 0.
    beta: label smoothness β ≥ 0 (divided by 16n as in the release).
    gamma: data smoothness γ ≥ 0.
    eta: prior weight η ≥ 0.
    neigh_size: pooling of the data-smoothness term (Python int).
    transport: move salient patches into the kept cells (docs/baselines.md §3.5).
    transport_size: transport cell size in pixels (min with the block size).
    transport_eps: ε > 0, weight of the transport distance.
    mean, std: per-channel normalisation of `images` (scalars or (C,)), so
      that `images·std + mean` is in pixel space [0, 1]; the defaults mean
      `images` are already pixels.
    block_nums: the block counts n drawn uniformly per batch (static).
    num_classes: number of classes for int labels (static).
    lam: optional scalar λ in [0, 1] (overrides the Beta draw).
    perm: optional int (B,) partner indices (overrides the permutation).
    block_num: optional n (a Python int, static) used instead of the draw.
    check_labels: see `augment.sage`.

  Returns:
    `MixResult`: images (B, H, W, C) in the dtype of `images`; labels
    float32 (B, K) = ρ·y_i + (1−ρ)·y_π(i); lam float32 (B,) = ρ_i, the mean
    of the mask; perm int32 (B,); offset zeros (B, 2).

  Raises:
    ValueError: on wrong ranks or batch sizes, non-square images, block
      counts that do not divide the image size, negative saliency (checked
      when concrete), out-of-range hyperparameters or labels.
    TypeError: if a static option is traced.
  """
  for name, value in (("block_nums", block_nums), ("block_num", block_num),
                      ("neigh_size", neigh_size), ("transport", transport),
                      ("transport_size", transport_size)):
    _checks.check_static(name, value, "augment.puzzle_mix", PUZZLE_STATIC_ARGNAMES)
  targets = mixing._check_common(images, labels, num_classes, alpha, check_labels,  # pylint: disable=protected-access
                                 "augment.puzzle_mix", PUZZLE_STATIC_ARGNAMES)
  batch, height, width, channels = images.shape
  _checks.check_saliency(saliency, images.shape, "`puzzle_saliency`")
  block_nums = tuple(int(n) for n in block_nums)
  if not block_nums:
    raise ValueError("`block_nums` must name at least one block count.")
  if block_num is not None:
    block_nums = (int(block_num),)
  for name, value in (("neigh_size", neigh_size), ("transport_size", transport_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
  _check_grid(height, width, block_nums, neigh_size, transport_size)
  for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta)):
    if _checks.is_concrete(value) and not float(value) >= 0:
      raise ValueError(f"`{name}` must be ≥ 0; got {value}.")
  _checks.check_positive("transport_eps", transport_eps)
  for name, value in (("mean", mean), ("std", std)):
    if jnp.ndim(value) > 1 or (jnp.ndim(value) == 1 and jnp.shape(value)[0] != channels):
      raise ValueError(
          f"`{name}` must be a scalar or have shape ({channels},); got "
          f"{jnp.shape(value)}.")

  block_key, lam_key, perm_key = jax.random.split(key, 3)
  mix_ratio = mixing._resolve_lam(  # pylint: disable=protected-access
      lam, lam_key, lambda k: jax.random.beta(k, alpha, alpha))
  perm = mixing._resolve_perm(perm, perm_key, batch)  # pylint: disable=protected-access

  saliency = jax.lax.stop_gradient(jnp.asarray(saliency, jnp.float32))
  own = images.astype(jnp.float32)
  pixel_images = jax.lax.stop_gradient(
      own * jnp.asarray(std, jnp.float32) + jnp.asarray(mean, jnp.float32))
  energy_options = dict(beta=beta, gamma=gamma, eta=eta, neigh_size=neigh_size)
  # One branch per block count for the mask; the transport depends on n only
  # through its grid, so the counts sharing a grid (CIFAR: 2, 4 and 8 use
  # 8×8, 16 uses 16×16) share one compiled transport.
  choice = jax.random.randint(block_key, (), 0, len(block_nums))
  pixel_mask, ratio = _choose(choice, [
      functools.partial(_pixel_mask, n, saliency, pixel_images, perm, mix_ratio,
                        **energy_options) for n in block_nums])
  partners = own[perm]
  if transport:
    grids = [transport_grid(height, n, transport_size) for n in block_nums]
    distinct = sorted(set(grids))
    grid_index = jnp.asarray([distinct.index(g) for g in grids], jnp.int32)[choice]
    own, partners = _choose(grid_index, [
        functools.partial(_transport_pair, grid, own, partners, pixel_mask,
                          saliency, perm, transport_eps) for grid in distinct])
  pixel_mask = pixel_mask[..., None]
  mixed = pixel_mask * own + (1.0 - pixel_mask) * partners
  return mixing.MixResult(mixed.astype(images.dtype),
                          mixing._mix_labels(targets, perm, ratio),  # pylint: disable=protected-access
                          ratio, perm, jnp.zeros((batch, 2), jnp.int32))


def drawn_block_num(key: jax.Array, block_nums: Sequence[int] = BLOCK_NUMS) -> jax.Array:
  """int32 scalar: the block count `puzzle_mix(key, ...)` uses (for logging)."""
  block_key, _, _ = jax.random.split(key, 3)
  choice = jax.random.randint(block_key, (), 0, len(block_nums))
  return jnp.asarray(block_nums, jnp.int32)[choice]
