"""A batched grid MRF solver: Puzzle Mix mask optimisation, reusable by Co-Mixup.

Each of B problems labels the cells of an n×n grid with one of L labels and
minimises

    E(l) = Σ_p unary[p, l_p] + Σ_(p,q) w_pq · pairwise[l_p, l_q]

over the vertical edges (r, c)-(r+1, c) (weights `weight_vertical`, p above
q) and horizontal edges (r, c)-(r, c+1) (`weight_horizontal`, p left of q);
one pairwise table for every edge. Puzzle Mix (docs/baselines.md §3.3) has L = 3,
pairwise (l_p - l_q)²/4 and w > 0; its release solves each problem on the
CPU with gco's α-β swap, a local method. Here every route runs inside `jit`
on the whole batch, with shapes fixed by (B, n, L):

* ``"exact"``: dynamic programming over rows, the state being a whole row
  (L^n states). One transition eliminates the previous row one column at a
  time (n·L^(n+1) operations per row instead of L^(2n)); the labels are
  recovered by recomputing each row's argmin from the stored messages.
  **Exact** (ties go to the smallest row-state index). Limited to
  L^n ≤ `MAX_EXACT_STATES` (memory and time grow as L^n).
* ``"lifted"``: the Ishikawa lifting. With u_k = [l ≥ k], k = 1..L-1, a
  *submodular* table (every mixed difference
  V(i,j) - V(i-1,j) - V(i,j-1) + V(i-1,j-1) ≤ 0 for i, j ≥ 1, e.g. any
  convex function of l_p - l_q) and w ≥ 0 make E a cut function of the
  binary u plus linear terms. The proximal problem of its Lovász extension,
  min_u ½‖u + a‖² + Σ c·|u_i - u_j| subject to u_1 ≥ ... ≥ u_(L-1) per cell,
  is solved by an accelerated primal-dual method; thresholding its
  solution at 0 gives a global minimiser of E (the thresholding theorem of
  total-variation proximal problems). With finitely many iterations the
  threshold may still be wrong on a few cells, so the result is then
  polished by strip sweeps (below), which never increase E. **Exact when
  converged; near-exact at the default iteration counts** (measured against
  gco and brute force in `tests/test_grid_mrf.py` and
  `benchmarks/solver_bench.py`).
* ``"strips"``: block coordinate descent from the per-cell best label;
  each block is a strip of h columns (then of h rows) over the whole grid,
  solved exactly by the row DP with the rest fixed (h the largest width with
  L^h ≤ `STRIP_STATES`; overlapping strips). Any table, any weights; a
  local method (weaker than α-β swap on Puzzle Mix problems).
* ``"moves"``: local search by exact large moves from a starting labelling
  (`init`, default each cell's smallest unary), for any tables, one per
  problem allowed ((B, L, L)), and weights of any sign. Each move lets every
  cell keep its label or take one of a few others and is solved exactly by
  the row DP over the K^n row states of those choices, with a (K, K) table
  per edge (no submodularity needed, unlike graph-cut expansion, so it is
  valid for Co-Mixup's non-metric table); the current labelling is one of
  the move's choices, so the energy never increases. A cycle is an
  α-expansion (keep or take α, K = 2) for every label α in index order, then
  a combined move (keep, α or β, K = 3) for every pair among the
  `MOVE_PAIR_LABELS[c]` best-ranked labels of each problem (ranked by their
  regret, the unary above the cell's cheapest, in the two cells where it
  is smallest; `preferred_labels` first); cycles repeat until one changes
  nothing, at most `MOVE_CYCLES` (or `iterations`). Each call first fuses
  the start with the exact best labelling over the K best-ranked labels (K
  the most with K^n ≤ `MOVE_EXACT_STATES`: 9 labels at n = 4), so with L ≤ K
  it returns the global minimum, and otherwise does not depend on one
  start's basin. A local method when L > K, n ≤ `MOVES_MAX_SIDE`. Built for
  Co-Mixup's per-output subproblems (4×4, 23 labels, batch 5): on five
  draws of 2,010 real-CIFAR-10 ones (`tests/test_grid_mrf_moves.py`'s
  saliency, seeds 0-4), with the half-half labels preferred, its energy was
  ≤ gco's α-β swap + 1e-6 on ≥ 99.95% of cases (strictly lower on ~31%),
  at worst 0.32% above. About 19 ms per call of 5 problems (vmapped) on a
  2-core CPU (`benchmarks/solver_bench.py --problem co_mixup`).
* ``"auto"`` (default): ``"exact"`` when L^n ≤ `AUTO_EXACT_STATES` (Puzzle
  Mix n = 2, 4); otherwise ``"lifted"`` when the table is submodular and
  every weight is ≥ 0, else ``"strips"``. That test is made while tracing
  when the arrays are concrete (a constant table and concrete weights), and
  otherwise at run time with `lax.cond` (both routes are compiled, one runs).

Every route is deterministic (fixed iteration counts, first-index ties).

Puzzle Mix (L = 3, w > 0) therefore runs "exact" at n = 2, 4 and "lifted"
(240 / 480 iterations and one polish sweep) at n = 8, 16. On 2,048 real
CIFAR-10 energies per n (and, at n = 8 and 16, on two more sets of 2,048
from other saliency maps), our energy was ≤ gco's α-β swap energy + 1e-6
in every case and strictly lower in 0-0.5% of them; it takes about
0.1 / 0.5 / 16 / 140 ms of CPU time per batch of 128 at n = 2 / 4 / 8 / 16
on a 2-core CPU (`benchmarks/solver_bench.py`).
Co-Mixup's 4×4 grids with ~20 labels and a non-submodular table take the
"strips" route under "auto" (1-wide strips: exact chains), a weak local
method; pass ``method="moves"`` for them.

    from sage_jax.augment import grid_mrf
    labels = grid_mrf.solve_grid_mrf(unary, pairwise, w_vertical, w_horizontal)
    energy = grid_mrf.grid_mrf_energy(labels, unary, pairwise, w_vertical, w_horizontal)
"""
from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from sage_jax.augment import _checks

METHODS = ("auto", "exact", "lifted", "strips", "moves")
# Largest row-state count of the "exact" route (3^8: n = 8 with 3 labels,
# ~30 MB of messages at batch 128).
MAX_EXACT_STATES = 3 ** 8
# "auto" uses the exact route up to this many row states (3^6): above it the
# lifted route is much cheaper (n = 8, L = 3: ~10x).
AUTO_EXACT_STATES = 3 ** 6
# Row states of one strip of the "strips" route and of the polish (3 labels:
# strips 4 cells wide).
STRIP_STATES = 81
# Primal-dual iterations of the "lifted" route per grid side (n = 8: 240,
# n = 16: 480); first-order methods need more as the graph diameter grows.
# With one polish sweep, 30·n had no case above gco on 6,144 real n = 16
# energies (three saliency sources); 20·n and 25·n had one or two.
LIFTED_ITERATIONS_PER_SIDE = 30
# Primal-dual first step τ0 and acceleration γ ≤ 1 (the strong convexity of
# the primal), tuned on real Puzzle Mix energies (benchmarks/solver_bench.py).
_FIRST_STEP = 3.0
_ACCELERATION = 0.25
# Polish sweeps after the lifted route; "strips" sweeps.
LIFTED_POLISH_SWEEPS = 1
STRIP_SWEEPS = 4
# "moves": largest grid side (a combined move has 3^n row states: 729 at
# n = 6), the cap on cycles, how many of the best-ranked labels get a
# combined move per pair in each cycle (C(12, 2) = 66 moves in the first,
# C(8, 2) = 28 in the second and later ones), and the row states
# of the exact solve restricted to the best-ranked labels that starts each
# call (K^n ≤ 9^4: all of a 4×4 grid's labellings over 9 labels). Measured
# on Co-Mixup subproblems in `tests/test_grid_mrf_moves.py` and
# `benchmarks/solver_bench.py --problem co_mixup`.
MOVES_MAX_SIDE = 6
MOVE_CYCLES = 2
MOVE_PAIR_LABELS = (12, 8)
MOVE_EXACT_STATES = 9 ** 4
# A unary that switches a label off: large enough never to be chosen while
# any enabled label exists (every energy of enabled labels is far smaller),
# small enough that sums of 3·n² of them stay finite in float32.
DISABLED_UNARY = 1e9


# ----------------------------------------------------------------------------
# Energy.


def grid_mrf_energy(labels: Any, unary: Any, pairwise: Any, weight_vertical: Any,
                    weight_horizontal: Any) -> jax.Array:
  """Energy of each labelling: Σ_p unary[p, l_p] + Σ_edges w·pairwise[l_p, l_q].

  Args:
    labels: int (B, n, n) labels in [0, L).
    unary: float (B, n, n, L).
    pairwise: float (L, L), or (B, L, L) with one table per problem;
      `pairwise[(b,) l_p, l_q]` with p the upper/left cell.
    weight_vertical: float (B, n-1, n), edge (r, c)-(r+1, c).
    weight_horizontal: float (B, n, n-1), edge (r, c)-(r, c+1).

  Returns:
    float32 (B,).

  Raises:
    ValueError: on wrong ranks/shapes (see `solve_grid_mrf`), non-integer
      labels, or (when concrete) labels outside [0, L).
  """
  unary, pairwise, weight_vertical, weight_horizontal = _check_problem(
      unary, pairwise, weight_vertical, weight_horizontal)
  if jnp.shape(labels) != unary.shape[:3]:
    raise ValueError(
        f"`labels` must have shape (B, n, n) = {unary.shape[:3]} to match "
        f"`unary`; got {jnp.shape(labels)}.")
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(
        f"`labels` must be integers; got dtype {jnp.result_type(labels)}.")
  num_labels = unary.shape[-1]
  if _checks.is_concrete(labels):
    values = np.asarray(labels)
    if values.size and (values.min() < 0 or values.max() >= num_labels):
      raise ValueError(
          f"`labels` must lie in [0, L={num_labels}); got values in "
          f"[{values.min()}, {values.max()}].")
  labels = jnp.asarray(labels, jnp.int32)
  data = jnp.take_along_axis(unary, labels[..., None], axis=-1)[..., 0]
  if pairwise.ndim == 3:   # one table per problem
    index = jnp.arange(labels.shape[0])[:, None, None]
    vertical = weight_vertical * pairwise[index, labels[:, :-1, :], labels[:, 1:, :]]
    horizontal = weight_horizontal * pairwise[index, labels[:, :, :-1], labels[:, :, 1:]]
  else:
    vertical = weight_vertical * pairwise[labels[:, :-1, :], labels[:, 1:, :]]
    horizontal = weight_horizontal * pairwise[labels[:, :, :-1], labels[:, :, 1:]]
  return data.sum((1, 2)) + vertical.sum((1, 2)) + horizontal.sum((1, 2))


# ----------------------------------------------------------------------------
# Input checks and route selection.


def _check_problem(unary, pairwise, weight_vertical, weight_horizontal):
  """Validates shapes and dtypes; returns the four arrays as float32."""
  for name, value in (("unary", unary), ("pairwise", pairwise),
                      ("weight_vertical", weight_vertical),
                      ("weight_horizontal", weight_horizontal)):
    if not hasattr(value, "shape") and not isinstance(value, (list, tuple)):
      raise TypeError(f"`{name}` must be an array; got {_checks.describe(value)}.")
    if not jnp.issubdtype(jnp.result_type(value), jnp.floating):
      raise ValueError(
          f"`{name}` must be a floating array; got dtype "
          f"{jnp.result_type(value)}. Convert with `.astype(jnp.float32)`.")
  _checks.check_rank("unary", unary, 4, "(B, n, n, L)")
  batch, rows, cols, num_labels = jnp.shape(unary)
  if rows != cols:
    raise ValueError(
        f"`unary` must be (B, n, n, L) on a square grid; got shape "
        f"{jnp.shape(unary)}.")
  n = rows
  if batch < 1 or n < 1:
    raise ValueError(
        f"`unary` needs B ≥ 1 problems on an n ≥ 1 grid; got shape "
        f"{jnp.shape(unary)}.")
  if num_labels < 2:
    raise ValueError(
        f"`unary` must have L ≥ 2 labels (last axis); got L = {num_labels}.")
  if jnp.shape(pairwise) not in ((num_labels, num_labels),
                                 (batch, num_labels, num_labels)):
    raise ValueError(
        f"`pairwise` must be a square (L, L) = ({num_labels}, {num_labels}) "
        f"table matching `unary` (or, for method='moves', one per problem: "
        f"(B, L, L) = ({batch}, {num_labels}, {num_labels})); got shape "
        f"{jnp.shape(pairwise)}.")
  for name, value, shape, edge in (
      ("weight_vertical", weight_vertical, (batch, n - 1, n), "(r, c)-(r+1, c)"),
      ("weight_horizontal", weight_horizontal, (batch, n, n - 1), "(r, c)-(r, c+1)")):
    if jnp.shape(value) != shape:
      raise ValueError(
          f"`{name}` must have shape {shape} (edge {edge} of each of the B "
          f"n×n grids of `unary`); got {jnp.shape(value)}.")
  return tuple(jnp.asarray(x, jnp.float32) for x in
               (unary, pairwise, weight_vertical, weight_horizontal))


def is_submodular(pairwise: Any) -> bool:
  """True when the concrete table's mixed differences are all ≤ 0.

  V(i,j) - V(i-1,j) - V(i,j-1) + V(i-1,j-1) ≤ 0 for 1 ≤ i, j < L (a small
  relative tolerance absorbs float rounding). Such tables (e.g. any convex
  function of l_p - l_q) make the lifted binary problem a cut problem.
  """
  table = np.asarray(pairwise, np.float64)
  mixed = table[1:, 1:] - table[:-1, 1:] - table[1:, :-1] + table[:-1, :-1]
  tolerance = 1e-6 * max(1.0, float(np.abs(table).max()))
  return bool(np.all(mixed <= tolerance))


def choose_method(n: int, num_labels: int, pairwise: Any,
                  weight_vertical: Any = None, weight_horizontal: Any = None) -> str:
  """The route ``method="auto"`` takes while tracing, for an n×n grid, L labels.

  Returns "exact", "lifted", "strips", or "run time" when the lifted/strips
  choice depends on traced arrays (the table, or weights that are traced
  or not given) and is left to `lax.cond`.
  """
  if num_labels ** n <= AUTO_EXACT_STATES:
    return "exact"
  if _checks.is_concrete(pairwise) and not is_submodular(pairwise):
    return "strips"
  weights = (weight_vertical, weight_horizontal)
  if any(w is None or not _checks.is_concrete(w) for w in weights):
    return "run time"
  if any(np.any(np.asarray(w) < 0) for w in weights):
    return "strips"
  return "lifted" if _checks.is_concrete(pairwise) else "run time"


def _lifted_applies(pairwise, weight_vertical, weight_horizontal) -> jax.Array:
  """Traced bool: submodular table (as `is_submodular`) and weights ≥ 0."""
  mixed = pairwise[1:, 1:] - pairwise[:-1, 1:] - pairwise[1:, :-1] + pairwise[:-1, :-1]
  tolerance = 1e-6 * jnp.maximum(1.0, jnp.abs(pairwise).max())
  return (jnp.all(mixed <= tolerance) & jnp.all(weight_vertical >= 0)
          & jnp.all(weight_horizontal >= 0))


def strip_width(num_labels: int, n: int) -> int:
  """Strip width h of "strips" and the polish: the largest h ≤ n with L^h ≤ STRIP_STATES (≥ 1)."""
  width = 1
  while num_labels ** (width + 1) <= STRIP_STATES and width + 1 <= n:
    width += 1
  return width


def default_iterations(n: int) -> int:
  """Primal-dual iterations of the lifted route for an n×n grid."""
  return LIFTED_ITERATIONS_PER_SIDE * n


# ----------------------------------------------------------------------------
# Row-state dynamic programming. Internal layout: batch last, i.e.
# unary (R, W, L, B), weight_vertical (R-1, W, B), weight_horizontal
# (R, W-1, B), labels (R, W, B), row-state arrays (L^W, B) with column 0 the
# most significant digit. Batch last keeps every elementwise operation
# contiguous over the batch, whichever digit it works on.


def _first_argmin(values: jax.Array) -> jax.Array:
  """int32 (B,): first index of the minimum over axis 0 of (S, B).

  Cheaper on CPU than `jnp.argmin` (a variadic reduction) and the same
  result: ties go to the smallest index.
  """
  smallest = values.min(axis=0)
  index = lax.broadcasted_iota(jnp.int32, values.shape, 0)
  return jnp.where(values == smallest, index, values.shape[0]).min(axis=0)


def _digits(states: jax.Array, width: int, num_labels: int) -> jax.Array:
  """Row states (..., B) -> labels (..., W, B), column 0 the leading digit."""
  powers = jnp.asarray(num_labels ** np.arange(width - 1, -1, -1), jnp.int32)
  return (states[..., None, :] // powers[:, None]) % num_labels


def _outer_sum(columns) -> jax.Array:
  """(L^W, B): Σ_c columns[c][digit c] for a list of W (L, B) arrays."""
  total = columns[0]
  for column in columns[1:]:
    total = (total[:, None, :] + column[None, :, :]).reshape(-1, column.shape[-1])
  return total


def _row_state_costs(unary, pairwise, weight_horizontal) -> jax.Array:
  """(R, L^W, B): Σ_c unary[r, c, b_c] + Σ_c w_r,c·V(b_c, b_c+1) of every row state b.

  Built one column at a time for all rows together, so every intermediate
  has rank ≤ 5.
  """
  rows, width, num_labels, batch = unary.shape
  total = unary[:, 0]                                            # (R, L, B)
  for c in range(1, width):
    link = pairwise[None, :, :, None] * weight_horizontal[:, c - 1, None, None, :]
    total = (total.reshape(rows, -1, num_labels, 1, batch) + link[:, None]
             + unary[:, c][:, None, None])                      # (R, L^(c-1), L, L, B)
    total = total.reshape(rows, -1, batch)
  return total


def _eliminate_row(message, pairwise, vertical_row) -> jax.Array:
  """min_a message(a) + Σ_c w_c·V(a_c, b_c) for every row state b: (L^W, B).

  One column (digit) at a time: replacing digit c of the state is a min-plus
  product with the L×L table along one axis, L^(W+1) operations. The
  optimisation barriers keep XLA from fusing consecutive columns, which
  would recompute L^k terms per element.
  """
  states, batch = message.shape
  num_labels = pairwise.shape[0]
  width = vertical_row.shape[0]
  coefficients = lax.optimization_barrier(
      pairwise[None, :, :, None] * vertical_row[:, None, None, :])  # (W, La, Lb, B)
  current = message
  for c in range(width):
    leading, trailing = num_labels ** c, num_labels ** (width - c - 1)
    current = current.reshape(leading, num_labels, 1, trailing, batch)
    best = current[:, 0] + coefficients[c, 0][:, None, :]
    for a in range(1, num_labels):
      best = jnp.minimum(best, current[:, a] + coefficients[c, a][:, None, :])
    current = lax.optimization_barrier(best)
  return current.reshape(states, batch)


def _row_dp(unary, pairwise, weight_vertical, weight_horizontal) -> jax.Array:
  """Exact minimiser of a (R, W) grid by DP over rows: labels int32 (R, W, B)."""
  rows, width, num_labels, _ = unary.shape
  row_costs = _row_state_costs(unary, pairwise, weight_horizontal)   # (R, S, B)
  if rows == 1:
    return _digits(_first_argmin(row_costs[0]), width, num_labels)[None]

  def forward(message, inputs):
    row_cost, vertical_row = inputs
    message = _eliminate_row(message, pairwise, vertical_row) + row_cost
    return message, message

  _, messages = lax.scan(forward, row_costs[0], (row_costs[1:], weight_vertical))
  messages = jnp.concatenate([row_costs[:1], messages])     # (R, S, B)
  last = _first_argmin(messages[-1])

  def backward(state, inputs):
    # The best state of the row above, given this row's state: recomputed
    # from the stored message instead of stored argmins (W·L^W per row).
    message_above, vertical_row = inputs
    below = _digits(state, width, num_labels)               # (W, B)
    to_below = [pairwise[:, below[c]] * vertical_row[c] for c in range(width)]
    above = _first_argmin(message_above + _outer_sum(to_below))
    return above, above

  _, states = lax.scan(backward, last, (messages[:-1], weight_vertical), reverse=True)
  states = jnp.concatenate([states, last[None]])            # (R, B)
  return _digits(states, width, num_labels)


# ----------------------------------------------------------------------------
# Strip sweeps (block coordinate descent with exact strips).


def _column_strip_pass(labels, unary, pairwise, weight_vertical, weight_horizontal,
                       width):
  """Re-solves strips of `width` columns in turn, each exactly given the rest.

  Strips overlap by half their width; each sees its fixed neighbours through
  its border cells' unaries, so the energy of the whole grid never increases.
  """
  cols = unary.shape[1]
  stride = max(1, width // 2)
  starts = list(range(0, cols - width + 1, stride))
  if starts[-1] != cols - width:
    starts.append(cols - width)
  # Zero-weight edges beyond the border, so every strip has two neighbours.
  padded_weights = jnp.pad(weight_horizontal, ((0, 0), (1, 1), (0, 0)))  # (R, C+1, B)

  def solve_strip(start, labels):
    padded_labels = jnp.pad(labels, ((0, 0), (1, 1), (0, 0)))
    left = lax.dynamic_index_in_dim(padded_labels, start, 1, keepdims=False)
    right = lax.dynamic_index_in_dim(padded_labels, start + width + 1, 1,
                                     keepdims=False)
    left_weight = lax.dynamic_index_in_dim(padded_weights, start, 1, keepdims=False)
    right_weight = lax.dynamic_index_in_dim(padded_weights, start + width, 1,
                                            keepdims=False)
    # (R, L, B): V(left neighbour, l) and V(l, right neighbour).
    from_left = jnp.moveaxis(pairwise[left], -1, 1) * left_weight[:, None, :]
    to_right = jnp.moveaxis(pairwise.T[right], -1, 1) * right_weight[:, None, :]
    strip_unary = lax.dynamic_slice_in_dim(unary, start, width, axis=1)
    strip_unary = strip_unary.at[:, 0].add(from_left).at[:, -1].add(to_right)
    strip_vertical = lax.dynamic_slice_in_dim(weight_vertical, start, width, axis=1)
    strip_horizontal = lax.dynamic_slice_in_dim(weight_horizontal, start, width - 1,
                                                axis=1)
    strip = _row_dp(strip_unary, pairwise, strip_vertical, strip_horizontal)
    return lax.dynamic_update_slice_in_dim(labels, strip, start, axis=1)

  starts = jnp.asarray(starts, jnp.int32)
  return lax.fori_loop(0, starts.shape[0],
                       lambda i, lab: solve_strip(starts[i], lab), labels)


def _strip_sweeps(labels, unary, pairwise, weight_vertical, weight_horizontal,
                  sweeps):
  """`sweeps` rounds of column strips then row strips; E never increases.

  Row strips are column strips of the transposed grid (its vertical edges
  are our horizontal ones, in the same upper/left order); the grid is
  square, so both orientations share one compiled pass, scanned over.
  """
  width = strip_width(unary.shape[2], unary.shape[0])
  oriented = (jnp.stack([unary, jnp.swapaxes(unary, 0, 1)]),
              jnp.stack([weight_vertical, jnp.swapaxes(weight_horizontal, 0, 1)]),
              jnp.stack([weight_horizontal, jnp.swapaxes(weight_vertical, 0, 1)]))

  def one_orientation(labels, problem):
    labels = _column_strip_pass(labels, problem[0], pairwise, problem[1],
                                problem[2], width)
    return jnp.swapaxes(labels, 0, 1), None   # into the other orientation

  def sweep(_, labels):
    return lax.scan(one_orientation, labels, oriented)[0]

  return lax.fori_loop(0, sweeps, sweep, labels)


# ----------------------------------------------------------------------------
# Lifted (Ishikawa) route.


def _lift(unary, pairwise, weight_vertical, weight_horizontal):
  """Binary lifting u_k = [l ≥ k]: linear terms and pair weights.

  V(a, b) = V(0,0) + Σ_(i≤a) (V(i,0) - V(i-1,0)) + Σ_(j≤b) (V(0,j) - V(0,j-1))
            + Σ_(i≤a, j≤b) Δ_ij,   Δ_ij the mixed differences (≤ 0),
  and Δ·u_i·u'_j has the Lovász extension Δ/2·(u_i + u'_j) + (-Δ/2)·|u_i - u'_j|.

  Returns:
    linear (K, n, n, B) with K = L-1: E_lift(u) = Σ linear·u + Σ c·|u_p,k -
    u_q,k'| equals E(l) minus a constant on binary, ordered u;
    pair (K, K) ≥ 0 multiplying each edge's weight for the term (k, k').
  """
  mixed = pairwise[1:, 1:] - pairwise[:-1, 1:] - pairwise[1:, :-1] + pairwise[:-1, :-1]
  upper_linear = pairwise[1:, 0] - pairwise[:-1, 0] + mixed.sum(1) / 2   # (K,)
  lower_linear = pairwise[0, 1:] - pairwise[0, :-1] + mixed.sum(0) / 2   # (K,)
  # Σ of the weights of the edges where the cell is the upper/left end, and
  # where it is the lower/right end: (n, n, B).
  as_upper = (jnp.pad(weight_vertical, ((0, 1), (0, 0), (0, 0)))
              + jnp.pad(weight_horizontal, ((0, 0), (0, 1), (0, 0))))
  as_lower = (jnp.pad(weight_vertical, ((1, 0), (0, 0), (0, 0)))
              + jnp.pad(weight_horizontal, ((0, 0), (1, 0), (0, 0))))
  steps = jnp.moveaxis(unary[:, :, 1:] - unary[:, :, :-1], 2, 0)         # (K, n, n, B)
  linear = (steps + upper_linear[:, None, None, None] * as_upper[None]
            + lower_linear[:, None, None, None] * as_lower[None])
  return linear, -mixed / 2


def _project_decreasing(values: jax.Array) -> jax.Array:
  """Euclidean projection of (K, ...) onto u_1 ≥ u_2 ≥ ... ≥ u_K (per cell).

  Isotonic regression by its min-max formula,
  u_i = min_(j≤i) max_(k≥i) mean(values[j..k]), in O(K²) per cell; closed
  forms for K ≤ 2.
  """
  depth = values.shape[0]
  if depth == 1:
    return values
  if depth == 2:
    mean = 0.5 * (values[0] + values[1])
    swapped = values[1] > values[0]
    return jnp.stack([jnp.where(swapped, mean, values[0]),
                      jnp.where(swapped, mean, values[1])])
  prefix = jnp.concatenate([jnp.zeros_like(values[:1]), jnp.cumsum(values, 0)])
  index = np.arange(depth)
  start, stop = np.meshgrid(index, index, indexing="ij")      # block [j..k]
  valid = stop >= start
  extra = (1,) * (values.ndim - 1)
  counts = np.where(valid, stop - start + 1, 1).reshape((depth, depth) + extra)
  means = (prefix[stop + 1] - prefix[start]) / counts          # (K_j, K_k, ...)
  big = jnp.asarray(np.finfo(np.float32).max, values.dtype)
  mask = valid.reshape((depth, depth) + extra)
  # max over k ≥ i of means[j, k]: a suffix maximum along k.
  suffix_max = lax.cummax(jnp.where(mask, means, -big), axis=1, reverse=True)
  # u_i = min over j ≤ i of suffix_max[j, i].
  diagonal_ok = (start <= stop).reshape((depth, depth) + extra)
  return jnp.where(diagonal_ok, suffix_max, big).min(axis=0)


def _lifted_prox(linear, pair, weight_vertical, weight_horizontal, iterations):
  """Approximate solution u (K, n, n, B) of the lifted proximal problem.

  min_u ½‖u + linear‖² + Σ_edges Σ_(k,k') pair[k,k']·w·|u_p,k - u_q,k'|
  subject to u decreasing in k per cell, by the accelerated primal-dual
  method of Chambolle & Pock (2011, Algorithm 2; the primal is 1-strongly
  convex): dual edge variables y, |y| ≤ pair·w, and
    y ← clip(y + σ·D ū),  u' ← proj((u - τ·Dᵀy - τ·linear) / (1 + τ)),
    θ = 1/√(1 + 2γτ), τ ← θτ, σ ← σ/θ, ū = u' + θ(u' - u),
  with ‖D‖² ≤ 2·max degree = 8K and τσ‖D‖² = 1. It keeps one copy of the
  (large) dual, so an iteration costs about half of FISTA on the dual, for
  about as many iterations. Every update is homogeneous in (linear, w):
  the iteration count does not depend on the energy's scale.
  """
  depth = linear.shape[0]
  norm_squared = 8.0 * depth
  bound_v = pair[:, :, None, None, None] * weight_vertical[None, None]   # (K,K,n-1,n,B)
  bound_h = pair[:, :, None, None, None] * weight_horizontal[None, None]  # (K,K,n,n-1,B)

  def divergence(dual_v, dual_h):
    # Dᵀy: + y on the upper/left end of each edge, - y on the lower/right.
    result = []
    for k in range(depth):
      up_v, down_v = dual_v[k, 0], dual_v[0, k]
      up_h, down_h = dual_h[k, 0], dual_h[0, k]
      for j in range(1, depth):
        up_v, down_v = up_v + dual_v[k, j], down_v + dual_v[j, k]
        up_h, down_h = up_h + dual_h[k, j], down_h + dual_h[j, k]
      result.append(jnp.pad(up_v, ((0, 1), (0, 0), (0, 0)))
                    - jnp.pad(down_v, ((1, 0), (0, 0), (0, 0)))
                    + jnp.pad(up_h, ((0, 0), (0, 1), (0, 0)))
                    - jnp.pad(down_h, ((0, 0), (1, 0), (0, 0))))
    return jnp.stack(result)

  def update(_, state):
    u, extrapolated, dual_v, dual_h, tau, sigma = state
    dual_v = jnp.clip(dual_v + sigma * (extrapolated[:, None, :-1, :]
                                        - extrapolated[None, :, 1:, :]),
                      -bound_v, bound_v)
    dual_h = jnp.clip(dual_h + sigma * (extrapolated[:, None, :, :-1]
                                        - extrapolated[None, :, :, 1:]),
                      -bound_h, bound_h)
    moved = u - tau * divergence(dual_v, dual_h)
    new_u = _project_decreasing((moved - tau * linear) / (1.0 + tau))
    theta = lax.rsqrt(1.0 + 2.0 * _ACCELERATION * tau)
    extrapolated = new_u + theta * (new_u - u)
    return new_u, extrapolated, dual_v, dual_h, theta * tau, sigma / theta

  start = _project_decreasing(-linear)   # y = 0: the unary-only solution
  tau = jnp.asarray(_FIRST_STEP, linear.dtype)
  state = (start, start, jnp.zeros_like(bound_v), jnp.zeros_like(bound_h), tau,
           1.0 / (tau * norm_squared))
  return lax.fori_loop(0, iterations, update, state)[0]


def _solve_lifted(unary, pairwise, weight_vertical, weight_horizontal, iterations,
                  polish_sweeps):
  linear, pair = _lift(unary, pairwise, weight_vertical, weight_horizontal)
  u = _lifted_prox(linear, pair, weight_vertical, weight_horizontal, iterations)
  labels = (u > 0).sum(0).astype(jnp.int32)   # u decreasing in k: a valid level
  if polish_sweeps:
    labels = _strip_sweeps(labels, unary, pairwise, weight_vertical,
                           weight_horizontal, polish_sweeps)
  return labels


# ----------------------------------------------------------------------------
# Exact large moves ("moves" route). Internal layout as above (batch last);
# per-problem tables are (L, L, B), flattened to (L·L, B) for gathers.


def _choice_dp(choice_unary, vertical_tables, horizontal_tables) -> jax.Array:
  """Exact minimiser of a K-choice grid with its own table on every edge.

  Each cell picks one of K choices; a state is a whole row of choices
  (K^W states), eliminated one column at a time as in `_eliminate_row` but
  with a (K, K) table per edge and problem instead of one shared table.

  Args:
    choice_unary: float (R, W, K, B), the cost of each choice in each cell.
    vertical_tables: float (R-1, W, K, K, B), [choice above, choice below]
      on edge (r, c)-(r+1, c), edge weight included.
    horizontal_tables: float (R, W-1, K, K, B), [left, right] on edge
      (r, c)-(r, c+1), edge weight included.

  Returns:
    int32 (R, W, B) choices. Ties go to the smallest row-state index, i.e.
    towards choice 0 in the leftmost columns and the lowest rows first.
  """
  rows, width, choices, batch = choice_unary.shape
  row_costs = choice_unary[:, 0]                                  # (R, K, B)
  for c in range(1, width):
    row_costs = (row_costs.reshape(rows, -1, choices, 1, batch)
                 + horizontal_tables[:, c - 1][:, None]
                 + choice_unary[:, c][:, None, None]).reshape(rows, -1, batch)
  states = row_costs.shape[1]

  def eliminate(message, tables):
    # min over the row above, one column (digit) at a time: K^(W+1) terms.
    current = message
    for c in range(width):
      leading, trailing = choices ** c, choices ** (width - c - 1)
      current = current.reshape(leading, choices, 1, trailing, batch)
      best = current[:, 0] + tables[c, 0][None, :, None, :]
      for a in range(1, choices):
        best = jnp.minimum(best, current[:, a] + tables[c, a][None, :, None, :])
      current = best
    return current.reshape(states, batch)

  messages = [row_costs[0]]
  for r in range(1, rows):
    messages.append(eliminate(messages[-1], vertical_tables[r - 1]) + row_costs[r])
  state = _first_argmin(messages[-1])
  chosen = [state]
  for r in range(rows - 1, 0, -1):
    # The best row above given this row's state, recomputed from the message.
    below = _digits(state, width, choices)                        # (W, B)
    to_below = [jnp.take_along_axis(vertical_tables[r - 1, c], below[c][None, None],
                                    axis=1)[:, 0] for c in range(width)]
    state = _first_argmin(messages[r - 1] + _outer_sum(to_below))
    chosen.append(state)
  return _digits(jnp.stack(chosen[::-1]), width, choices)        # (R, W, B)


def _apply_move(candidates, unary, flat_pairwise, weight_vertical,
                weight_horizontal) -> jax.Array:
  """The exact best labelling where each cell takes one of its candidates.

  Args:
    candidates: int32 (K, R, W, B) labels; candidates[0] should be the
      current labelling, so the move never increases the energy (ties keep
      it).
    unary: float (R, W, L, B).
    flat_pairwise: float (L·L, B), the per-problem tables flattened.
    weight_vertical, weight_horizontal: float (R-1, W, B), (R, W-1, B).

  Returns:
    int32 (R, W, B) labels.
  """
  choices, rows, width, batch = candidates.shape
  num_labels = unary.shape[2]
  cand = jnp.moveaxis(candidates, 0, 2)                           # (R, W, K, B)
  choice_unary = jnp.take_along_axis(unary, cand, axis=2)
  pair_v = (cand[:-1, :, :, None] * num_labels + cand[1:, :, None, :]).reshape(-1, batch)
  pair_h = (cand[:, :-1, :, None] * num_labels + cand[:, 1:, None, :]).reshape(-1, batch)
  vertical = (jnp.take_along_axis(flat_pairwise, pair_v, axis=0)
              .reshape(rows - 1, width, choices, choices, batch)
              * weight_vertical[:, :, None, None])
  horizontal = (jnp.take_along_axis(flat_pairwise, pair_h, axis=0)
                .reshape(rows, width - 1, choices, choices, batch)
                * weight_horizontal[:, :, None, None])
  choice = _choice_dp(choice_unary, vertical, horizontal)
  return jnp.take_along_axis(cand, choice[:, :, None], axis=2)[:, :, 0]


def _ranked_labels(unary, preferred) -> jax.Array:
  """int32 (L, B): the labels of each problem, most promising first.

  A label is scored by its regret (its unary minus the cell's smallest)
  averaged over the two cells where that regret is smallest: a label worth
  using is the cheapest, or nearly, in a few cells, and one cell alone is
  often noise. `preferred` (L, B) bool labels come first (in score order),
  unless disabled (score ≥ DISABLED_UNARY / 2); ties go to the smaller
  index.
  """
  rows, width, num_labels, batch = unary.shape
  regret = (unary - unary.min(axis=2, keepdims=True)).reshape(rows * width, num_labels, batch)
  score = jnp.sort(regret, axis=0)[:min(2, rows * width)].mean(axis=0)   # (L, B)
  first = preferred & (score < DISABLED_UNARY / 2)
  by_score = jnp.argsort(score, axis=0, stable=True)
  by_preference = jnp.argsort(~jnp.take_along_axis(first, by_score, axis=0), axis=0,
                              stable=True)
  return jnp.take_along_axis(by_score, by_preference, axis=0).astype(jnp.int32)


def move_exact_labels(n: int, num_labels: int) -> int:
  """K, the labels of the restricted exact solve on an n×n grid: the most
  with K^n ≤ `MOVE_EXACT_STATES`, at most L (then the solve is exact)."""
  k = 1
  while k < num_labels and (k + 1) ** n <= MOVE_EXACT_STATES:
    k += 1
  return k


def move_pair_schedule(num_pair_labels: int) -> np.ndarray:
  """int32 (P, 2) rank pairs (i < j) of the combined moves, P = k(k-1)/2.

  Ordered by j then i, so every prefix covers all pairs among the first
  labels of the ranking.
  """
  return np.array([(i, j) for j in range(num_pair_labels) for i in range(j)],
                  np.int32).reshape(-1, 2)


def _shared_choice_dp(choice_unary, table, weight_vertical, weight_horizontal):
  """Exact minimiser of a grid where every cell picks one of the same K labels.

  Batch FIRST, unlike the rest of this section: each elimination takes the
  min over the leading choice of the row state and appends the new choice
  at the end (after n of them the digits are back in order), so the min
  runs over an outer axis with contiguous rows, several times faster on CPU
  than `_choice_dp` at K ≈ 9.

  Args:
    choice_unary: float (B, R, W, K), the unary of each choice in each cell.
    table: float (B, K, K), [upper/left choice, lower/right choice], edge
      weight not included.
    weight_vertical, weight_horizontal: float (B, R-1, W), (B, R, W-1).

  Returns:
    int32 (B, R, W) choices (first state on ties).
  """
  batch, rows, width, choices = choice_unary.shape
  row_costs = choice_unary[:, :, 0]                               # (B, R, K)
  for c in range(1, width):
    row_costs = (row_costs.reshape(batch, rows, -1, choices, 1)
                 + (weight_horizontal[:, :, c - 1, None, None] * table[:, None])[:, :, None]
                 + choice_unary[:, :, c][:, :, None, None, :]).reshape(batch, rows, -1)
  states = choices ** width

  def eliminate(message, r):
    current = message
    for c in range(width):
      current = current.reshape(batch, choices, states // choices, 1)
      step = (weight_vertical[:, r, c, None, None] * table)[:, :, None, :]  # (B, K, 1, K)
      current = jnp.min(current + step, axis=1)
    return current.reshape(batch, states)

  messages = [row_costs[:, 0]]
  for r in range(1, rows):
    messages.append(eliminate(messages[-1], r - 1) + row_costs[:, r])
  state = _first_argmin(messages[-1].T)
  chosen = [state]
  for r in range(rows - 1, 0, -1):
    # The best row above given this row's state, recomputed from the message.
    below = _digits(state, width, choices).T                      # (B, W)
    column = jnp.take_along_axis(table, below[:, None, :], axis=2)  # [a, below_c]
    to_below = jnp.zeros((batch, 1), table.dtype)
    for c in range(width):
      to_below = (to_below[:, :, None]
                  + weight_vertical[:, r - 1, c, None, None] * column[:, None, :, c]
                  ).reshape(batch, -1)
    state = _first_argmin((messages[r - 1] + to_below).T)
    chosen.append(state)
  return jnp.moveaxis(_digits(jnp.stack(chosen[::-1]), width, choices), -1, 0)


def _best_with_labels(problem, labels_k) -> jax.Array:
  """int32 (R, W, B): the exact best labelling that uses only the K labels
  `labels_k` (K, B) of each problem (batch last in and out)."""
  unary, flat_pairwise, weight_vertical, weight_horizontal = problem
  num_labels = unary.shape[2]
  choices = labels_k.shape[0]
  choice_unary = jnp.take_along_axis(unary, labels_k[None, None], axis=2)   # (R, W, K, B)
  pairs = (labels_k[:, None] * num_labels + labels_k[None, :]).reshape(-1, labels_k.shape[1])
  table = jnp.take_along_axis(flat_pairwise, pairs, axis=0).reshape(choices, choices, -1)
  first = lambda x: jnp.moveaxis(x, -1, 0)
  choice = _shared_choice_dp(first(choice_unary), first(table), first(weight_vertical),
                             first(weight_horizontal))            # (B, R, W)
  chosen = jnp.take_along_axis(first(labels_k)[:, None, None, :], choice[..., None],
                               axis=3)[..., 0]
  return jnp.moveaxis(chosen, 0, -1)


def _solve_moves(labels, unary, pairwise, weight_vertical, weight_horizontal,
                 preferred, max_cycles):
  """The restricted exact solve fused with `labels`, then cycles of exact
  expansion and combined moves until a cycle changes nothing (at most
  `max_cycles` cycles; cycle c pairs the `MOVE_PAIR_LABELS[c]` best-ranked
  labels, the last entry for later cycles). All arrays batch last;
  pairwise (L, L, B), preferred (L, B) bool."""
  rows, width, num_labels, batch = unary.shape
  flat = pairwise.reshape(num_labels * num_labels, batch)
  problem = (unary, flat, weight_vertical, weight_horizontal)
  ranked = _ranked_labels(unary, preferred)
  if max_cycles > 0:
    # Every labelling over the K best-ranked labels at once; fused (each
    # cell keeps its label or takes the proposal's) so it never goes up.
    proposal = _best_with_labels(problem, ranked[:move_exact_labels(rows, num_labels)])
    labels = _apply_move(jnp.stack([labels, proposal]), *problem)

  def expansion(alpha, labels):
    return _apply_move(jnp.stack([labels, jnp.full_like(labels, alpha)]), *problem)

  def cycle(labels, num_pair_labels):
    schedule = jnp.asarray(move_pair_schedule(min(num_pair_labels, num_labels)))

    def combined(index, labels):
      first = jnp.broadcast_to(ranked[schedule[index, 0]], labels.shape)
      second = jnp.broadcast_to(ranked[schedule[index, 1]], labels.shape)
      return _apply_move(jnp.stack([labels, first, second]), *problem)

    new = lax.fori_loop(0, num_labels, expansion, labels)
    return lax.fori_loop(0, schedule.shape[0], combined, new)

  def guarded(state, num_pair_labels):
    labels, changed = state
    new = lax.cond(changed, lambda: cycle(labels, num_pair_labels), lambda: labels)
    return new, jnp.any(new != labels)

  state = (labels, jnp.asarray(True))
  for c in range(min(max_cycles, len(MOVE_PAIR_LABELS))):
    state = guarded(state, MOVE_PAIR_LABELS[c])
  if max_cycles > len(MOVE_PAIR_LABELS):
    count = jnp.asarray(len(MOVE_PAIR_LABELS), jnp.int32)
    state = lax.while_loop(lambda s: (s[0] < max_cycles) & s[2],
                           lambda s: (s[0] + 1,) + guarded(s[1:], MOVE_PAIR_LABELS[-1]),
                           (count,) + state)[1:]
  return state[0]


# ----------------------------------------------------------------------------
# Public solver.


def solve_grid_mrf(unary: Any, pairwise: Any, weight_vertical: Any,
                   weight_horizontal: Any, *, method: str = "auto",
                   iterations: Optional[int] = None,
                   polish_sweeps: Optional[int] = None,
                   init: Any = None, preferred_labels: Any = None) -> jax.Array:
  """Labels minimising each grid's energy (see the module docstring).

  jit- and vmap-safe; n and L come from the shapes, so each (B, n, L) is one
  compiled program. When "auto" decides at run time (traced weights, n·L
  above the exact range), both "lifted" and "strips" are compiled; under
  `jax.vmap` with batched weights the `lax.cond` becomes a select and both
  run, so pass `method=` explicitly there (Puzzle Mix, whose weights are
  > 0 by construction, may pass ``method="lifted"`` at n ≥ 8 and skip
  compiling "strips").

  Args:
    unary: float (B, n, n, L), the cost of each label in each cell. With
      "moves", a label can be switched off per problem and cell by giving it
      a large finite unary such as `DISABLED_UNARY` (1e9): it is then never
      chosen while an enabled label exists (infinities are not supported).
    pairwise: float (L, L) table, `pairwise[l_p, l_q]` with p the upper/left
      cell of the edge (any table for "exact", "strips" and "moves";
      "lifted" needs a submodular one, see `is_submodular`); "moves" also
      takes one table per problem, (B, L, L).
    weight_vertical: float (B, n-1, n), weight of edge (r, c)-(r+1, c).
    weight_horizontal: float (B, n, n-1), weight of edge (r, c)-(r, c+1).
      "lifted" needs weights ≥ 0.
    method: "auto", "exact", "lifted", "strips" or "moves" (a Python
      string); "auto" never picks "moves".
    iterations: "lifted": primal-dual iterations (default
      `default_iterations(n)` = 30·n); "moves": the most cycles (default
      `MOVE_CYCLES`; it stops earlier once a cycle changes nothing).
    polish_sweeps: strip sweeps after "lifted" (default 1) or of "strips"
      (default 4).
    init: "moves" only: int (B, n, n) starting labels in [0, L) (default:
      each cell's smallest unary, first index on ties). None elsewhere.
    preferred_labels: "moves" only: bool (L,) or (B, L), labels ranked
      first for the restricted exact solve and the combined moves, whatever
      their unaries (default none). For labels that are never the cheapest
      in a cell on their own but pair cheaply with others, such as
      Co-Mixup's half-half labels. A label disabled with a unary ≥
      DISABLED_UNARY / 2 is not promoted (pass False for labels disabled
      with a smaller cost). None elsewhere.

  Returns:
    int32 (B, n, n) labels in [0, L).

  Raises:
    ValueError: on wrong ranks or shapes (`unary` not (B, n, n, L) with
      B, n ≥ 1 and L ≥ 2; `pairwise` not (L, L) or, for "moves", (B, L, L);
      weights not (B, n-1, n) / (B, n, n-1); `init` not (B, n, n);
      `preferred_labels` not (L,) or (B, L)),
      non-floating inputs, non-integer or (when concrete) out-of-range
      `init`, non-boolean `preferred_labels`, an unknown `method`, "exact" with L^n > MAX_EXACT_STATES,
      "moves" with n > MOVES_MAX_SIDE, or "lifted" with a concrete
      non-submodular table or concrete negative weights.
    TypeError: if `method`, `iterations` or `polish_sweeps` is traced.
  """
  for name, value in (("method", method), ("iterations", iterations),
                      ("polish_sweeps", polish_sweeps)):
    _checks.check_static(name, value, "grid_mrf.solve_grid_mrf",
                         ("method", "iterations", "polish_sweeps"))
  unary, pairwise, weight_vertical, weight_horizontal = _check_problem(
      unary, pairwise, weight_vertical, weight_horizontal)
  if method not in METHODS:
    raise ValueError(f"`method` must be one of {METHODS}; got {method!r}.")
  for name, value in (("init", init), ("preferred_labels", preferred_labels)):
    if value is not None and method != "moves":
      raise ValueError(
          f"`{name}` is only used by method='moves'; got method={method!r}. Drop "
          f"`{name}` or pass method='moves'.")
  if pairwise.ndim == 3 and method != "moves":
    raise ValueError(
        f"method={method!r} takes one (L, L) `pairwise` table for the batch; "
        f"got shape {pairwise.shape}. Pass method='moves' for one table per "
        "problem, or `jax.vmap` the call over the problems.")
  for name, value in (("iterations", iterations), ("polish_sweeps", polish_sweeps)):
    if value is not None and (not isinstance(value, (int, np.integer))
                              or isinstance(value, bool) or value < 0):
      raise ValueError(f"`{name}` must be a non-negative int; got {value!r}.")
  if method == "moves":
    return _solve_moves_route(unary, pairwise, weight_vertical, weight_horizontal,
                              iterations, init, preferred_labels)
  _, n, _, num_labels = unary.shape
  route = method
  if method == "auto":
    route = choose_method(n, num_labels, pairwise, weight_vertical, weight_horizontal)
  if route == "exact" and num_labels ** n > MAX_EXACT_STATES:
    raise ValueError(
        f"method='exact' keeps L^n = {num_labels}^{n} row states, more than "
        f"MAX_EXACT_STATES = {MAX_EXACT_STATES}; use method='lifted' (submodular "
        "tables) or 'strips'.")
  if route == "lifted":
    if _checks.is_concrete(pairwise) and not is_submodular(pairwise):
      raise ValueError(
          "method='lifted' needs a submodular `pairwise` table (mixed "
          "differences V[i,j]-V[i-1,j]-V[i,j-1]+V[i-1,j-1] ≤ 0, e.g. convex in "
          "l_p - l_q); use method='strips' or 'exact'.")
    for name, value in (("weight_vertical", weight_vertical),
                        ("weight_horizontal", weight_horizontal)):
      if _checks.is_concrete(value) and np.any(np.asarray(value) < 0):
        raise ValueError(
            f"method='lifted' needs `{name}` ≥ 0; use method='strips' or 'exact'.")

  # Batch last inside (see the row-DP section).
  unary_t = jnp.moveaxis(unary, 0, -1)
  vertical_t = jnp.moveaxis(weight_vertical, 0, -1)
  horizontal_t = jnp.moveaxis(weight_horizontal, 0, -1)

  def lifted():
    return _solve_lifted(
        unary_t, pairwise, vertical_t, horizontal_t,
        default_iterations(n) if iterations is None else iterations,
        LIFTED_POLISH_SWEEPS if polish_sweeps is None else polish_sweeps)

  def strips():
    start = jnp.argmin(unary_t, axis=2).astype(jnp.int32)
    return _strip_sweeps(start, unary_t, pairwise, vertical_t, horizontal_t,
                         STRIP_SWEEPS if polish_sweeps is None else polish_sweeps)

  if route == "exact":
    labels = _row_dp(unary_t, pairwise, vertical_t, horizontal_t)
  elif route == "lifted":
    labels = lifted()
  elif route == "strips":
    labels = strips()
  else:
    labels = lax.cond(_lifted_applies(pairwise, weight_vertical, weight_horizontal),
                      lifted, strips)
  return jnp.moveaxis(labels, -1, 0).astype(jnp.int32)


def _solve_moves_route(unary, pairwise, weight_vertical, weight_horizontal,
                       iterations, init, preferred_labels) -> jax.Array:
  """Checks and runs method="moves" on checked float32 arrays (batch first)."""
  batch, n, _, num_labels = unary.shape
  if n > MOVES_MAX_SIDE:
    raise ValueError(
        f"method='moves' supports grids up to n = MOVES_MAX_SIDE = "
        f"{MOVES_MAX_SIDE} (3^n row states per combined move); got n = {n}. "
        "Use method='lifted' (submodular tables) or 'strips'.")
  if init is None:
    labels = jnp.argmin(unary, axis=-1).astype(jnp.int32)
  else:
    if not hasattr(init, "shape") and not isinstance(init, (list, tuple)):
      raise TypeError(f"`init` must be an array; got {_checks.describe(init)}.")
    if jnp.shape(init) != (batch, n, n):
      raise ValueError(
          f"`init` must have shape (B, n, n) = {(batch, n, n)} to match "
          f"`unary`; got {jnp.shape(init)}.")
    if not jnp.issubdtype(jnp.result_type(init), jnp.integer):
      raise ValueError(
          f"`init` must be integer labels; got dtype {jnp.result_type(init)}. "
          "Convert with `.astype(jnp.int32)`.")
    if _checks.is_concrete(init):
      values = np.asarray(init)
      if values.min() < 0 or values.max() >= num_labels:
        raise ValueError(
            f"`init` must lie in [0, L={num_labels}); got values in "
            f"[{values.min()}, {values.max()}].")
    labels = jnp.asarray(init, jnp.int32)
  if preferred_labels is None:
    preferred = jnp.zeros((batch, num_labels), bool)
  else:
    if not hasattr(preferred_labels, "shape") and not isinstance(preferred_labels,
                                                                 (list, tuple)):
      raise TypeError("`preferred_labels` must be a boolean array; got "
                      f"{_checks.describe(preferred_labels)}.")
    if jnp.shape(preferred_labels) not in ((num_labels,), (batch, num_labels)):
      raise ValueError(
          f"`preferred_labels` must have shape (L,) = ({num_labels},) or (B, L) = "
          f"{(batch, num_labels)} to match `unary`; got {jnp.shape(preferred_labels)}.")
    if jnp.result_type(preferred_labels) != jnp.bool_:
      raise ValueError(
          "`preferred_labels` must be boolean (True = rank first); got dtype "
          f"{jnp.result_type(preferred_labels)}.")
    preferred = jnp.broadcast_to(jnp.asarray(preferred_labels), (batch, num_labels))
  if pairwise.ndim == 2:
    pairwise = jnp.broadcast_to(pairwise, (batch,) + pairwise.shape)
  labels = _solve_moves(
      jnp.moveaxis(labels, 0, -1), jnp.moveaxis(unary, 0, -1),
      jnp.moveaxis(pairwise, 0, -1), jnp.moveaxis(weight_vertical, 0, -1),
      jnp.moveaxis(weight_horizontal, 0, -1), jnp.moveaxis(preferred, 0, -1),
      MOVE_CYCLES if iterations is None else iterations)
  return jnp.moveaxis(labels, -1, 0).astype(jnp.int32)
