"""Co-Mixup (Kim et al., ICLR 2021) on the accelerator, as the SAGE release runs it.

Co-Mixup mixes a batch jointly (docs/baselines.md §4): the batch is split into
chunks of `chunk_size` consecutive samples (the release: 5 chunks of 20),
and each chunk's m inputs produce m outputs together. Every output is an
n×n grid of blocks (n = `block_num`, 4 on CIFAR: 8×8-pixel blocks); each
block shows one input, or half of each of two inputs. Per chunk:

1. **Compatibility** (§4.2): the peak of each saliency map (stride-1 average
   pool with the block size as window, first argmax) and the L1 distances
   between peaks, A_dist; Â = A_dist / ΣA_dist · m, A = (1−ω)I + ωÂ.
2. **Costs** (§4.3): c_k(p) = −s̄_k(p), the block-pooled saliency of input k
   normalised to sum 1, minus η'·log(α_k + 1e-8) with α ~ Dirichlet(alpha·1).
3. **Labelling**: from a uniformly random labelling, `num_sweeps` sweeps
   re-solve the outputs in order, each as a grid MRF over the inputs (plus,
   from the second sweep, up to 3 "half-half" labels between the inputs the
   output already uses) with Potts smoothness β' and a modular diversity
   penalty that makes inputs used by the other outputs more expensive.
4. **Mix**: x̃_i = Σ_k M_ik ⊙ x_k with the block weights M upsampled to
   pixels; the label of output i is Σ_k (share of input k in x̃_i)·y_k.

    from sage_jax import augment
    grads = jax.grad(clean_loss, argnums=1)(params, images, labels)  # train-mode BN
    sal = augment.puzzle_saliency(grads)                 # RMS over channels
    out = augment.co_mixup(key, images, labels, sal, num_classes=10)
    loss = bce(model(out.images), out.labels)

Everything runs inside `jit` with fixed shapes: the chunks are batched
(`vmap`), the sweeps and outputs are `lax.scan`s, the labels set is fixed at
L = chunk_size + 3 (unused half-half labels are disabled by a prohibitive
unary cost) and the early stop is a flag that turns the remaining sweeps into
no-ops. The per-output solve is one call of `grid_mrf.solve_grid_mrf`
(`_solve_outputs`); the release solves it on the CPU with gco's α-β swap, a
local method, so the two are compared by statistics and energies, not by
masks (tests/test_co_mixup.py).

Release details reproduced (co-mixup/match.py, mixup_parallel.py, main.py):
the modular penalty m_k = 2γ'·Σ_j t_j A_kj n_{−i,j} with
t_j = [(A n_{−i})_j > τ'] (the code's `(t * A) @ n` precedence); half-half
labels cost the mean of their two inputs' costs − 5e-4; the top-3 inputs
of an output by block count (ties to the smaller index, an assumption:
`torch.topk` leaves tie order unspecified) give the pairs (a,b), (a,c),
(b,c) with a < b < c; pairwise V = 0 for equal labels, 0.25 between a
half-half label and either of its inputs, 1 otherwise; after sweep
`num_sweeps − 2`, outputs with identical sets of ≥ 2 used inputs get
γ'·add (the first used input of the earlier output of each such pair, the
second of the later one) in the last sweep; the sweeps stop early when
|ΔJ|/|J| < 1e-6, J the unthresholded objective. Scaled parameters:
β' = β/n², γ' = γ/n², η' = η/n², τ' = τ·n².

Deviations, all for inputs where the release fails or is unspecified: an
all-zero saliency map gets uniform block costs (the release divides by 0);
a chunk whose peaks all coincide gets Â = 0, i.e. A = (1−ω)I (the release
divides by ΣA_dist = 0); the chunks draw independent Dirichlet priors (the
release's worker processes probably share one seed, UNVERIFIED); the peak
window is the block size (the release hard-codes 8, the same on CIFAR).
"""
from typing import Any, Callable, Dict, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from sage_jax.augment import _checks
from sage_jax.augment import grid_mrf
from sage_jax.augment import mixing

# Options that fix shapes or Python control flow: static under `jax.jit`, e.g.
# `jax.jit(augment.co_mixup, static_argnames=augment.CO_MIXUP_STATIC_ARGNAMES)`.
CO_MIXUP_STATIC_ARGNAMES = ("chunk_size", "block_num", "num_sweeps", "num_classes",
                            "check_labels")
# The same for `co_mixup_assignment` (jit rejects names a function lacks).
CO_MIXUP_ASSIGNMENT_STATIC_ARGNAMES = ("chunk_size", "block_num", "num_sweeps")
# Half-half labels per output from the second sweep on (pairs of the top 3).
NUM_MIXED_LABELS = 3
# The release's constants: log(α + 1e-8) in the prior, the bonus of a
# half-half label, the relative early-stop tolerance.
_PRIOR_EPS = 1e-8
_MIXED_BONUS = 5e-4
_STOP_TOLERANCE = 1e-6
# Unary cost of a disabled label slot. Enabled costs are bounded by
# |c| ≤ 1 + 18.5·η' (−log 1e-8 = 18.4) plus the modular penalty
# 2γ'·(A n)_k ≤ 2γ·(chunk_size − 1)·max A (about 40 for the release's
# settings) and γ'·add; 1e6 keeps a disabled label dearer than any labelling
# of enabled ones, and no enabled labelling's energy includes it.
_DISABLED_COST = 1e6
# (first, second) positions within the sorted top 3 of the three half-half labels.
_PAIR_POSITIONS = ((0, 1), (0, 2), (1, 2))
# Per-map saliency totals below this are treated as all-zero maps.
_TINY = 1e-30

# The `grid_mrf.solve_grid_mrf` route of the per-output solve (`_solve_outputs`).
SOLVER_METHOD = "moves"

Solver = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------
# Costs and compatibility.


def _block_pool(saliency: jax.Array, block_num: int) -> jax.Array:
  """(B, n, n) means of the (B, H, W) map over n×n blocks."""
  batch, height, width = saliency.shape
  size = height // block_num
  return saliency.reshape(batch, block_num, size, block_num, size).mean(axis=(2, 4))


def block_costs(saliency: jax.Array, block_num: int) -> jax.Array:
  """float32 (B, n, n) costs c_k(p) = −s̄_k(p) before the prior.

  s̄_k is the block-pooled saliency of map k normalised to sum 1; an
  all-zero map (the release divides by zero) becomes uniform, 1/n² per block.
  """
  pooled = _block_pool(jnp.asarray(saliency, jnp.float32), block_num)
  total = pooled.sum(axis=(1, 2), keepdims=True)
  uniform = jnp.full_like(pooled, 1.0 / block_num ** 2)
  return -jnp.where(total > _TINY, pooled / jnp.maximum(total, _TINY), uniform)


def saliency_peaks(saliency: jax.Array, window: int) -> jax.Array:
  """int32 (B, 2) (row, col) of the first maximum of a stride-1 window mean.

  The mean over every window×window window inside the (B, H, W) map (a
  (H−window+1)² grid); the first maximum in row-major order, as `torch.argmax`
  on the flattened pooled map.
  """
  sums = lax.reduce_window(jnp.asarray(saliency, jnp.float32), 0.0, lax.add,
                           (1, window, window), (1, 1, 1), "VALID")
  means = sums / float(window * window)
  cols = means.shape[2]
  flat = jnp.argmax(means.reshape(means.shape[0], -1), axis=1).astype(jnp.int32)
  return jnp.stack([flat // cols, flat % cols], axis=1)


def compatibility(saliency: jax.Array, *, chunk_size: int, window: int,
                  omega: Any) -> jax.Array:
  """float32 (P, m, m) compatibility A of each chunk (docs/baselines.md §4.2).

  A_dist[i, j] = |Δrow| + |Δcol| of the peaks of maps i and j of a chunk,
  Â = A_dist / ΣA_dist · m, A = (1−ω)I + ωÂ. When every peak of a chunk
  coincides (ΣA_dist = 0, NaN in the release) Â = 0, so A = (1−ω)I.
  """
  peaks = saliency_peaks(saliency, window).astype(jnp.float32)
  peaks = peaks.reshape(-1, chunk_size, 2)
  distance = jnp.abs(peaks[:, :, None, :] - peaks[:, None, :, :]).sum(-1)
  total = distance.sum(axis=(1, 2), keepdims=True)
  scaled = jnp.where(total > 0, distance / jnp.where(total > 0, total, 1.0) * chunk_size,
                     0.0)
  omega = jnp.asarray(omega, jnp.float32)
  return (1.0 - omega) * jnp.eye(chunk_size, dtype=jnp.float32) + omega * scaled


# ----------------------------------------------------------------------------
# One output's subproblem.


def _output_subproblem(cost, compat, assignment, output, sweep, add, *, gamma_s,
                       tau_s):
  """The grid MRF re-labelling output `output` of one chunk, others fixed.

  Args:
    cost: (m, n, n) costs c_k(p) including the prior.
    compat: (m, m) compatibility A.
    assignment: (m, n, n, m) soft assignment z[i, r, c, k] (0, .5, 1).
    output: int scalar i.
    sweep: int scalar, the sweep index (half-half labels from sweep 1 on).
    add: (m, m) the last sweep's `add` indicators (zeros before).
    gamma_s, tau_s: γ' and τ'.

  Returns:
    (unary (n, n, L) float32, table (L, L) float32, weights (3, m) float32)
    with L = m + 3: labels k < m put input k in the block; label m + j puts
    half of each of two inputs, `weights[j]` (0.5 at both, zeros when the
    slot is disabled, whose unary is then `_DISABLED_COST`).
  """
  m = cost.shape[0]
  counts = assignment.sum(axis=(1, 2))                        # (m_out, m_in)
  own = counts[output]
  others = counts.sum(axis=0) - own                           # n_{−i}
  pressure = compat @ others
  # The release's `(A @ n > τ').float() * A @ n` is `((t * A) @ n)`: t_j
  # scales column j of A.
  modular = 2.0 * gamma_s * ((pressure > tau_s).astype(jnp.float32) * compat) @ others
  plain = jnp.moveaxis(cost, 0, -1) + modular + gamma_s * add[output]     # (n, n, m)

  num_used = jnp.sum(own > 0)
  later = sweep > 0
  top = min(NUM_MIXED_LABELS, m)
  # Top inputs by count, ties to the smaller index (lax.top_k); the release
  # then takes them in index order (boolean masks), hence the sort.
  top_two = jnp.sort(lax.top_k(own, min(2, m))[1])
  top_three = jnp.sort(lax.top_k(own, top)[1])
  pair_mode = later & (num_used == 2)
  triple_mode = later & (num_used >= 3)
  firsts, seconds, enabled = [], [], []
  for j, (a, b) in enumerate(_PAIR_POSITIONS):
    if j == 0:
      first = jnp.where(pair_mode, top_two[0], top_three[min(a, top - 1)])
      second = jnp.where(pair_mode, top_two[-1], top_three[min(b, top - 1)])
      on = pair_mode | (triple_mode & (top >= 3))
    else:
      first, second = top_three[min(a, top - 1)], top_three[min(b, top - 1)]
      on = triple_mode & (top >= 3)
    firsts.append(first)
    seconds.append(second)
    enabled.append(on)
  firsts, seconds = jnp.stack(firsts), jnp.stack(seconds)
  enabled = jnp.stack(enabled)
  halves = 0.5 * (jax.nn.one_hot(firsts, m, dtype=jnp.float32)
                  + jax.nn.one_hot(seconds, m, dtype=jnp.float32))        # (3, m)
  weights = halves * enabled[:, None]
  mixed = (0.5 * (plain[..., firsts] + plain[..., seconds]) - _MIXED_BONUS)
  mixed = jnp.where(enabled, mixed, _DISABLED_COST)
  unary = jnp.concatenate([plain, mixed], axis=-1)

  size = m + NUM_MIXED_LABELS
  table = 1.0 - jnp.eye(size, dtype=jnp.float32)
  # 0.25 between a half-half label and either of its inputs (weights 0.5).
  link = 1.0 - 1.5 * weights                                  # (3, m)
  table = table.at[m:, :m].set(link).at[:m, m:].set(link.T)
  return unary.astype(jnp.float32), table, halves


def _labels_to_assignment(labels, halves, m):
  """(n, n) labels in [0, m+3) -> (n, n, m) weights per input."""
  onehot = jax.nn.one_hot(labels, m + NUM_MIXED_LABELS, dtype=jnp.float32)
  return onehot[..., :m] + onehot[..., m:] @ halves


def _objective(cost, assignment, beta_s, gamma_s):
  """The release's unthresholded J of one chunk (float32 scalar)."""
  unary = jnp.sum(jnp.moveaxis(cost, 0, -1)[None] * assignment)
  smooth = (jnp.sum((assignment[:, :-1] - assignment[:, 1:]) ** 2)
            + jnp.sum((assignment[:, :, :-1] - assignment[:, :, 1:]) ** 2))
  counts = assignment.sum(axis=(1, 2))
  diversity = jnp.sum(counts.sum(0) ** 2) - jnp.sum(counts ** 2)
  return unary + beta_s / 2.0 * smooth + gamma_s * diversity


def _resolve_add(assignment):
  """(m, m) 0/1 `add` of the release's set-resolve step for one chunk.

  For every pair i1 < i2 of outputs using the same set of ≥ 2 inputs, the
  release sets add[i1][first used input] = 1 and add[i2][second] = 1.
  """
  used = assignment.sum(axis=(1, 2)) > 0                      # (m, m)
  m = used.shape[0]
  index = jnp.arange(m)
  same = jnp.all(used[:, None, :] == used[None, :, :], axis=-1)
  several = used.sum(-1) > 1
  has_later = jnp.any(same & (index[None, :] > index[:, None]), axis=1) & several
  has_earlier = jnp.any(same & (index[None, :] < index[:, None]), axis=1) & several
  first = jnp.argmax(used, axis=1)
  second = jnp.argmax(used & (index[None, :] > first[:, None]), axis=1)
  add = jnp.maximum(has_later[:, None] * jax.nn.one_hot(first, m),
                    has_earlier[:, None] * jax.nn.one_hot(second, m))
  return add.astype(jnp.float32)


# ----------------------------------------------------------------------------
# The per-output solve (one place, so the solver route is a one-line change).


def _solve_outputs(unary: jax.Array, tables: jax.Array, weight_vertical: jax.Array,
                   weight_horizontal: jax.Array) -> jax.Array:
  """int32 (P, n, n): one output's labels per chunk.

  unary (P, n, n, L); tables (P, L, L), one per chunk; weights (P, n−1, n)
  and (P, n, n−1). The "moves" route: an exact solve over the 9
  best-ranked labels, then exact expansion and pair moves by row DP, valid
  for the non-metric table. The half-half labels are preferred: their unary
  is the mean of two inputs', so they are seldom the cheapest in a block
  on their own and a ranking by unary would leave them out of the exact
  solve. On real CIFAR-10 per-output problems its energy is ≤ gco's
  α-β swap (+1e-6) on ≥ 99.9 % of them, never more than 0.5 % above
  (tests/test_grid_mrf_moves.py). The "strips" route was above gco on 24 %
  of them and mixed more inputs per output (1.5 vs gco's 1.1).
  """
  num_labels = unary.shape[-1]
  # The enabled half-half labels of each chunk (a disabled one would take a
  # place in the exact solve for nothing).
  preferred = ((jnp.arange(num_labels) >= num_labels - NUM_MIXED_LABELS)
               & (unary[:, 0, 0, :] < _DISABLED_COST / 2))              # (P, L)

  def one(u, table, wv, wh, prefer):
    return grid_mrf.solve_grid_mrf(u[None], table, wv[None], wh[None],
                                   method=SOLVER_METHOD, preferred_labels=prefer)[0]
  return jax.vmap(one)(unary, tables, weight_vertical, weight_horizontal, preferred)


def _co_mixup_labeling(block_cost: jax.Array, compat: jax.Array, prior: jax.Array,
                       init: jax.Array, *, beta: Any, gamma: Any, eta: Any,
                       tau: Any, num_sweeps: int,
                       solver: Solver = _solve_outputs) -> jax.Array:
  """The labelling of every chunk from given draws (docs/baselines.md §4.3).

  Args:
    block_cost: (P, m, n, n) costs −s̄ before the prior (`block_costs`).
    compat: (P, m, m) compatibility (`compatibility`).
    prior: (P, m) the Dirichlet draw α of each chunk.
    init: int (P, m, n, n) initial input index per block of each output.
    beta, gamma, eta, tau: the unscaled hyperparameters.
    num_sweeps: sweeps over the outputs (Python int ≥ 1).
    solver: `(unary (P,n,n,L), tables (P,L,L), w_v, w_h) -> (P,n,n)` labels.

  Returns:
    float32 (P, m, n, n, m) assignment z[p, i, r, c, k]: weight of input k
    in block (r, c) of output i of chunk p.
  """
  chunks, m, n, _ = block_cost.shape
  area = float(n * n)
  beta_s, gamma_s = beta / area, gamma / area
  eta_s, tau_s = eta / area, tau * area
  cost = block_cost - eta_s * jnp.log(prior + _PRIOR_EPS)[:, :, None, None]
  weight_vertical = jnp.full((chunks, n - 1, n), beta_s, jnp.float32)
  weight_horizontal = jnp.full((chunks, n, n - 1), beta_s, jnp.float32)
  build = jax.vmap(
      lambda c, a, z, i, s, add: _output_subproblem(c, a, z, i, s, add,
                                                    gamma_s=gamma_s, tau_s=tau_s),
      in_axes=(0, 0, 0, None, None, 0))
  objective = jax.vmap(lambda c, z: _objective(c, z, beta_s, gamma_s))

  def update_output(state, output):
    assignment, sweep, add = state
    unary, tables, halves = build(cost, compat, assignment, output, sweep, add)
    labels = solver(unary, tables, weight_vertical, weight_horizontal)
    new = jax.vmap(_labels_to_assignment, in_axes=(0, 0, None))(labels, halves, m)
    assignment = assignment.at[:, output].set(new)
    return (assignment, sweep, add), None

  def one_sweep(state, sweep):
    assignment, add, previous, done = state
    (new, _, _), _ = lax.scan(update_output, (assignment, sweep, add),
                              jnp.arange(m))
    # The release computes `add` after sweep num_sweeps − 2, for the last one.
    new_add = jnp.where(sweep == num_sweeps - 2, jax.vmap(_resolve_add)(new), add)
    energy = objective(cost, new)
    stop = jnp.abs(previous - energy) / jnp.abs(energy) < _STOP_TOLERANCE
    # Chunks that stopped earlier keep their state: the remaining sweeps are
    # no-ops (fixed shapes instead of the release's `break`).
    keep = done[:, None, None, None, None]
    assignment = jnp.where(keep, assignment, new)
    add = jnp.where(done[:, None, None], add, new_add)
    previous = jnp.where(done, previous, energy)
    return (assignment, add, previous, done | stop), None

  start = jax.nn.one_hot(init, m, dtype=jnp.float32)          # (P, m, n, n, m)
  state = (start, jnp.zeros((chunks, m, m), jnp.float32), objective(cost, start),
           jnp.zeros((chunks,), bool))
  (assignment, _, _, _), _ = lax.scan(one_sweep, state, jnp.arange(num_sweeps))
  return assignment


# ----------------------------------------------------------------------------
# Public functions.


def _check_static_options(chunk_size, block_num, num_sweeps, function,
                          static_argnames=CO_MIXUP_STATIC_ARGNAMES):
  for name, value in (("chunk_size", chunk_size), ("block_num", block_num),
                      ("num_sweeps", num_sweeps)):
    _checks.check_static(name, value, function, static_argnames)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise ValueError(f"`{name}` must be a Python int; got {value!r}.")
  if chunk_size < 1:
    raise ValueError(f"`chunk_size` must be ≥ 1; got {chunk_size}.")
  if block_num < 2:
    raise ValueError(f"`block_num` must be ≥ 2 (an n×n grid of blocks); got {block_num}.")
  if num_sweeps < 1:
    raise ValueError(f"`num_sweeps` must be ≥ 1; got {num_sweeps}.")


def _check_hyperparameters(alpha, beta, gamma, eta, tau, omega):
  _checks.check_positive("alpha", alpha)
  for name, value in (("beta", beta), ("gamma", gamma), ("eta", eta), ("tau", tau)):
    if jnp.ndim(value) != 0:
      raise ValueError(f"`{name}` must be a scalar; got shape {jnp.shape(value)}.")
    if _checks.is_concrete(value) and not (np.isfinite(float(value)) and float(value) >= 0):
      raise ValueError(f"`{name}` must be a finite number ≥ 0; got {value}.")
  _checks.check_unit_interval("omega", omega)


def _check_saliency_grid(saliency, chunk_size, block_num):
  """Shape/value checks of (B, H, W) saliency for the chunked block grid."""
  _checks.check_rank("saliency", saliency, 3, "(B, H, W)")
  if not jnp.issubdtype(jnp.result_type(saliency), jnp.floating):
    raise ValueError(
        f"`saliency` must be floating; got {jnp.result_type(saliency)}. Convert "
        "with `.astype(jnp.float32)`.")
  batch, height, width = jnp.shape(saliency)
  if height != width:
    raise ValueError(f"co_mixup needs square maps (H = W); got {height}×{width}.")
  if height % block_num:
    raise ValueError(
        f"`block_num`={block_num} must divide the image size {height}; choose "
        "a divisor, e.g. 4 for 32×32 CIFAR images.")
  if batch < 1 or batch % chunk_size:
    raise ValueError(
        f"the batch size {batch} must be a positive multiple of `chunk_size`="
        f"{chunk_size}: Co-Mixup mixes consecutive chunks of chunk_size samples. "
        "Drop the remainder of the batch or pick a chunk_size that divides it.")
  if _checks.is_concrete(saliency) and np.any(np.asarray(saliency) < 0):
    raise ValueError(
        "`saliency` must be non-negative (e.g. `puzzle_saliency` of the input "
        "gradient); got negative values.")
  if _checks.is_concrete(saliency) and not np.all(np.isfinite(np.asarray(saliency))):
    raise ValueError("`saliency` must be finite; got NaN or inf.")


def co_mixup_assignment(key: jax.Array, saliency: jax.Array, *, chunk_size: int = 20,
                        block_num: int = 4, alpha: Any = 2.0, beta: Any = 0.32,
                        gamma: Any = 1.0, eta: Any = 0.05, tau: Any = 0.83,
                        omega: Any = 0.001, num_sweeps: int = 4) -> jax.Array:
  """Co-Mixup's block assignment of one batch (steps 1-3 of the module docstring).

  Args:
    key: PRNG key, split into (Dirichlet prior, initial labelling) keys with
      `jax.random.split(key)`; the chunks draw independently.
    saliency: float (B, H, W) non-negative saliency (`puzzle_saliency` of the
      train-mode clean pass's input gradient); H = W divisible by
      `block_num`, B a multiple of `chunk_size`. An all-zero map is treated
      as uniform.
    chunk_size: m, samples mixed jointly (consecutive; static).
    block_num: n, blocks per side (static).
    alpha: Dirichlet(alpha·1_m) prior over the inputs, > 0.
    beta: label smoothness β ≥ 0.
    gamma: diversity γ ≥ 0.
    eta: prior weight η ≥ 0.
    tau: threshold τ ≥ 0 of the modular penalty (in units of whole images).
    omega: compatibility weight ω in [0, 1].
    num_sweeps: sweeps over the outputs (static, ≥ 1).

  Returns:
    float32 (B, m, n, n): entry [i, k, r, c] is the weight of input
    (i // m)·m + k (the k-th input of output i's chunk) in block (r, c) of
    output i; values in {0, 0.5, 1}, summing to 1 over k.

  Raises:
    ValueError: on a wrong rank, non-square maps, a `block_num` that does
      not divide H, a batch that is not a multiple of `chunk_size`, negative
      or non-finite saliency (when concrete), or out-of-range options.
    TypeError: if `chunk_size`, `block_num` or `num_sweeps` is traced.
  """
  _check_static_options(chunk_size, block_num, num_sweeps, "augment.co_mixup_assignment",
                        CO_MIXUP_ASSIGNMENT_STATIC_ARGNAMES)
  _check_saliency_grid(saliency, chunk_size, block_num)
  _check_hyperparameters(alpha, beta, gamma, eta, tau, omega)
  saliency = lax.stop_gradient(jnp.asarray(saliency, jnp.float32))
  batch, height, _ = saliency.shape
  chunks = batch // chunk_size
  prior_key, init_key = jax.random.split(key)
  prior = jax.random.dirichlet(
      prior_key, jnp.full((chunk_size,), alpha, jnp.float32), (chunks,))
  init = jax.random.randint(init_key, (chunks, chunk_size, block_num, block_num), 0,
                            chunk_size)
  cost = block_costs(saliency, block_num).reshape(chunks, chunk_size, block_num,
                                                  block_num)
  compat = compatibility(saliency, chunk_size=chunk_size, window=height // block_num,
                         omega=omega)
  assignment = _co_mixup_labeling(cost, compat, prior, init, beta=beta, gamma=gamma,
                                  eta=eta, tau=tau, num_sweeps=num_sweeps)
  # (P, m_out, n, n, m_in) -> (B, m_in, n, n)
  return jnp.moveaxis(assignment, -1, 2).reshape(batch, chunk_size, block_num,
                                                 block_num)


def _check_assignment(assignment, batch):
  _checks.check_rank("assignment", assignment, 4, "(B, chunk_size, n, n)")
  shape = jnp.shape(assignment)
  if shape[0] != batch or shape[2] != shape[3] or shape[1] < 1 or batch % shape[1]:
    raise ValueError(
        f"`assignment` must have shape (B, chunk_size, n, n) with B = {batch} a "
        f"multiple of chunk_size (from `co_mixup_assignment`); got {shape}.")
  if not jnp.issubdtype(jnp.result_type(assignment), jnp.floating):
    raise ValueError(f"`assignment` must be floating; got {jnp.result_type(assignment)}.")


def co_mixup_apply(images: jax.Array, targets: jax.Array,
                   assignment: jax.Array) -> mixing.MixResult:
  """Mixes a batch by a block assignment (step 4 of the module docstring).

  Args:
    images: (B, H, W, C) floating, normalised images; H = W divisible by n.
    targets: float (B, K) one-hot or soft labels.
    assignment: float (B, m, n, n) from `co_mixup_assignment`.

  Returns:
    `MixResult`: images (B, H, W, C) in the dtype of `images`,
    x̃_i = Σ_k M_ik ⊙ x_k with M the nearest upsampling of the block weights;
    labels float32 (B, K) = Σ_k share_ik·y_k, share_ik the mean over the
    blocks of input k's weight in output i (rows sum to 1 for one-hot
    targets); lam float32 (B,) = share_ii (output i's own input); perm int32
    (B,) = the batch index of the input with the largest share in output i
    (first on ties); offset int32 zeros (B, 2).

  Raises:
    ValueError: on wrong ranks or shapes.
  """
  _checks.check_images(images)
  batch, height, width, channels = images.shape
  _check_assignment(assignment, batch)
  chunk_size, n = assignment.shape[1], assignment.shape[2]
  if height != width or height % n:
    raise ValueError(
        f"`images` must be square with a side divisible by n = {n}; got "
        f"{height}×{width}.")
  if jnp.ndim(targets) != 2 or jnp.shape(targets)[0] != batch:
    raise ValueError(
        f"`targets` must be float (B, K) with B = {batch}; got {jnp.shape(targets)}.")
  chunks, size = batch // chunk_size, height // n
  weights = jnp.asarray(assignment, jnp.float32).reshape(chunks, chunk_size, chunk_size,
                                                         n, n)
  blocks = images.astype(jnp.float32).reshape(chunks, chunk_size, n, size, n, size,
                                              channels)
  mixed = jnp.einsum("pokrs,pkrasbc->porasbc", weights, blocks,
                     precision=lax.Precision.HIGHEST)
  share = weights.mean(axis=(3, 4))                                # (P, m_out, m_in)
  grouped = jnp.asarray(targets, jnp.float32).reshape(chunks, chunk_size, -1)
  labels = jnp.einsum("pok,pkc->poc", share, grouped,
                      precision=lax.Precision.HIGHEST).reshape(batch, -1)
  own = jnp.diagonal(share, axis1=1, axis2=2).reshape(batch)
  start = (jnp.arange(batch, dtype=jnp.int32) // chunk_size) * chunk_size
  perm = start + jnp.argmax(share.reshape(batch, chunk_size), axis=1).astype(jnp.int32)
  return mixing.MixResult(mixed.reshape(images.shape).astype(images.dtype), labels,
                          own, perm, jnp.zeros((batch, 2), jnp.int32))


def co_mixup(key: jax.Array, images: jax.Array, labels: jax.Array,
             saliency: jax.Array, *, chunk_size: int = 20, block_num: int = 4,
             alpha: Any = 2.0, beta: Any = 0.32, gamma: Any = 1.0, eta: Any = 0.05,
             tau: Any = 0.83, omega: Any = 0.001, num_sweeps: int = 4,
             num_classes: Optional[int] = None,
             check_labels: bool = False) -> mixing.MixResult:
  """Co-Mixup of one batch (docs/baselines.md §4, the release's CIFAR settings).

  `co_mixup_assignment` followed by `co_mixup_apply`; see both for details.

  Args:
    key: PRNG key (see `co_mixup_assignment`).
    images: (B, H, W, C) floating, normalised images, H = W divisible by
      `block_num`, B a multiple of `chunk_size`.
    labels: int (B,) class indices (then `num_classes` is required) or float
      (B, K) one-hot or soft labels (see `augment.sage`).
    saliency: (B, H, W) non-negative saliency (`puzzle_saliency` of the
      train-mode clean pass's input gradient, docs/baselines.md §4.1).
    chunk_size, block_num, alpha, beta, gamma, eta, tau, omega, num_sweeps:
      see `co_mixup_assignment` (defaults: the release's CIFAR settings).
    num_classes: number of classes for int labels (static).
    check_labels: see `augment.sage`.

  Returns:
    `MixResult`: images (B, H, W, C); labels float32 (B, K) = Σ_k share_ik·y_k
    (rows sum to 1 for one-hot labels); lam float32 (B,) = share of input i
    in output i; perm int32 (B,) = batch index of the input with the largest
    share in output i (first on ties); offset zeros (B, 2).

  Raises:
    ValueError: as `co_mixup_assignment`, plus wrong image/label shapes.
    TypeError: if a static option is traced.
  """
  _check_static_options(chunk_size, block_num, num_sweeps, "augment.co_mixup")
  targets = mixing._check_common(images, labels, num_classes, alpha, check_labels,  # pylint: disable=protected-access
                                 "augment.co_mixup", CO_MIXUP_STATIC_ARGNAMES)
  _checks.check_saliency(saliency, images.shape, "`puzzle_saliency`")
  assignment = co_mixup_assignment(key, saliency, chunk_size=chunk_size,
                                   block_num=block_num, alpha=alpha, beta=beta,
                                   gamma=gamma, eta=eta, tau=tau, omega=omega,
                                   num_sweeps=num_sweeps)
  return co_mixup_apply(images, targets, assignment)


def co_mixup_statistics(assignment: jax.Array) -> Dict[str, jax.Array]:
  """Diversity statistics of a `co_mixup_assignment` result (jit-able).

  Args:
    assignment: float (B, m, n, n) block weights.

  Returns:
    dict of float32 scalars:
      "inputs_per_output": mean over outputs of the number of inputs with a
        non-zero share;
      "max_reuse": the largest total share of one input, Σ_i share_ik over
        the outputs i of its chunk (1.0: one image's worth of blocks);
      "max_outputs_per_input": the largest number of outputs that use one
        input (share > 0).

  Raises:
    ValueError: if `assignment` is not (B, m, n, n) with B a multiple of m.
  """
  _checks.check_rank("assignment", assignment, 4, "(B, chunk_size, n, n)")
  _check_assignment(assignment, jnp.shape(assignment)[0])
  batch, chunk_size = assignment.shape[:2]
  share = jnp.asarray(assignment, jnp.float32).mean(axis=(2, 3))
  share = share.reshape(batch // chunk_size, chunk_size, chunk_size)  # (P, out, in)
  used = share > 0
  return {
      "inputs_per_output": jnp.mean(used.sum(-1).astype(jnp.float32)),
      "max_reuse": jnp.max(share.sum(1)),
      "max_outputs_per_input": jnp.max(used.sum(1)).astype(jnp.float32),
  }
