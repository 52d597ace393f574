"""Puzzle Mix's transport step (docs/baselines.md §3.5), exact to the released code.

The release (`mixup.py: cost_matrix, mask_transport, transport_image`) moves
each image's salient cells into the cells its mask keeps. On a T×T grid of
N = T² cells (row-major index r·T + c), with z = (mask > 0) and s the cell
saliency, it builds the float32 cost

    cost[a, b] = ε·C[a, b] − s[a]·z[b],   C[a, b] = ‖pos_a − pos_b‖² / (T − 1)²,

and runs `num_rounds` (T in the release) rounds of:

1. every row a picks b_a = the first argmin of cost[a];
2. column b goes to the first row attaining the minimum of
   (plan ⊙ cost)[:, b] over *all* rows, where rows that did not pick b count
   as 0; if that row did not pick b, nobody gets b;
3. every row that picked a column it did not get pays cost[a, b_a] += 1.

The winners of the last round form the plan: cell b of the output shows
patch a where plan[a, b] = 1; cells nobody won are 0.

How this port computes the same plan without the release's rounds over
(B, N, N) arrays:

- A row's costs change only when it loses, so its pick after L losses is a
  fixed sequence: its entries in (value, column) order, each entry coming
  back once penalised. The rounds then only look up entry L of each row's
  sequence and resolve the columns with scatters: O(B·N) per round.
- A pick with a value > 0 never wins (a non-chooser's 0 is smaller) and
  changes no other column's winner, except when every row before a
  zero-valued chooser picked the same column, or all rows picked one column.
  So a row's sequence is needed only while it stays ≤ 0: the kept cells with
  ε·C[a, b] ≤ s[a] in (distance, cell index) order, then its own cell (value
  0) if that is not kept. These are read, as bit sets in a static cell
  order, from the row's 64 nearest cells, or from all cells for the few rows
  whose saliency reaches beyond them. The first 4 rows get their whole
  sequences, positive picks included, which decides the zero-valued cases.
- Inputs that argument does not cover (saliency ≥ 1, where penalised picks
  can come back ≤ 0; a non-kept row whose saliency equals a distance level
  exactly; more than 16 far-reaching rows in an image; the first 4 rows all
  on one column) are handed, by `lax.cond`, to a dense exact path (each
  row's min(rounds, N) smallest entries via `lax.top_k`), ~8× slower. On
  normalised saliency the hand-over is rare; every plan is exact either way.

    sources = transport_sources(mask, saliency)          # (B, T²) int32
    moved = move_patches(images, sources, grid_size=T)   # (B, H, W, C)
    plan = mask_transport(mask, saliency)                # (B, T², T²) 0/1
    moved = transport_image(images, plan, grid_size=T)   # the same images

Everything is jit-able with fixed shapes and no host round trip. Under
`jax.vmap` the `lax.cond` becomes a select and both paths run; pass the whole
batch instead.
"""
import functools
from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from sage_jax.augment import _checks

# The released CIFAR setting (`--t_eps 0.8`).
DEFAULT_EPS = 0.8
# Options that fix shapes: static under `jax.jit`.
TRANSPORT_STATIC_ARGNAMES = ("num_rounds",)
MOVE_STATIC_ARGNAMES = ("grid_size",)

# Light rows read their non-positive picks from the first `_WINDOW` cells of
# their static order (two 32-bit words).
_WINDOW = 64
# Rows per image whose non-positive picks may lie beyond the window. A row
# needs this only if its saliency exceeds ε·(distance² of its 65th nearest
# cell)/(T − 1)² (≥ 0.071 for T = 16, ε = 0.8), so a saliency map summing to
# 1 has at most 14 such rows.
_HEAVY_ROWS = 16
# Rows whose every pick (positive ones included) is computed exactly.
_LEADING_ROWS = 4
# Two distinct distance levels closer than this could round to one value
# after subtracting a saliency < 1, which would break the static order.
_MIN_LEVEL_GAP = 2.0 ** -22
_BITS = 32


@functools.lru_cache(maxsize=None)
def _grid_tables(grid_size: int):
  """Static NumPy tables of a T×T grid (N = T² cells, row-major).

  Returns a dict with
    cost: float32 (N, N) ‖pos_a − pos_b‖² / (T − 1)², computed like the release;
    order: int32 (N, N), row a's cells sorted by (distance², cell index);
    level_cells: int32 (L,) flat index a·N + b of a cell pair at each distinct
      squared distance, ascending;
    count_within: int32 (N, L + 1), [a, l] = #cells within the l smallest levels.
  """
  cells = grid_size * grid_size
  row, col = np.divmod(np.arange(cells), grid_size)
  dist2 = (row[:, None] - row[None, :]) ** 2 + (col[:, None] - col[None, :]) ** 2
  # Integer squared distances in float32, divided by (T − 1)² in float32: the
  # release's `cost_matrix`.
  cost = dist2.astype(np.float32) / np.float32((grid_size - 1) ** 2)
  order = np.argsort(dist2, axis=1, kind="stable").astype(np.int32)
  dist_levels = np.unique(dist2)
  level_index = np.searchsorted(dist_levels, dist2)
  count_within = np.zeros((cells, len(dist_levels) + 1), np.int32)
  for level in range(len(dist_levels)):
    count_within[:, level + 1] = np.sum(level_index <= level, axis=1)
  # Every squared distance occurs from the corner cell 0.
  level_cells = np.array([np.argmax(dist2[0] == level) for level in dist_levels],
                         np.int32)
  for table in (cost, order, level_cells, count_within):
    table.setflags(write=False)
  return dict(cost=cost, order=order, level_cells=level_cells,
              count_within=count_within)


def transport_cost_matrix(grid_size: int) -> jax.Array:
  """The release's transport distance of a T×T grid.

  Args:
    grid_size: T ≥ 2 (Python int).

  Returns:
    float32 (T², T²): C[a, b] = ((r_a − r_b)² + (c_a − c_b)²) / (T − 1)² for
    row-major cells a = r_a·T + c_a.

  Raises:
    ValueError: if `grid_size` is not an int ≥ 2.
  """
  _check_grid_size(grid_size, "transport_cost_matrix")
  return jnp.asarray(_grid_tables(grid_size)["cost"])


def _check_grid_size(grid_size: Any, function: str = "move_patches") -> None:
  _checks.check_static("grid_size", grid_size, function, MOVE_STATIC_ARGNAMES)
  if (isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer))
      or grid_size < 2):
    raise ValueError(f"`grid_size` must be an int ≥ 2 (cells per side); got "
                     f"{grid_size!r}.")


def _check_transport_args(mask, saliency, eps, num_rounds) -> None:
  """Validates `transport_sources`' arguments (see there)."""
  _checks.check_rank("mask", mask, 3, "(B, T, T)")
  _checks.check_rank("saliency", saliency, 3, "(B, T, T)")
  batch, rows, cols = jnp.shape(mask)
  if rows != cols:
    raise ValueError(f"`mask` must be a square grid (B, T, T); got shape "
                     f"{jnp.shape(mask)}.")
  if rows < 2:
    raise ValueError(f"the grid must be at least 2×2 (the release divides by "
                     f"(T − 1)²); got `mask` of shape {jnp.shape(mask)}.")
  if jnp.shape(saliency) != jnp.shape(mask):
    raise ValueError(f"`saliency` must have the shape of `mask` {jnp.shape(mask)}; "
                     f"got {jnp.shape(saliency)}.")
  if batch < 1:
    raise ValueError(f"`mask` must hold at least one grid; got shape {jnp.shape(mask)}.")
  mask_dtype = jnp.result_type(mask)
  if not (jnp.issubdtype(mask_dtype, jnp.floating) or jnp.issubdtype(mask_dtype, jnp.integer)
          or mask_dtype == jnp.bool_):
    raise TypeError(f"`mask` must be a real or bool array; got dtype {mask_dtype}.")
  if not jnp.issubdtype(jnp.result_type(saliency), jnp.floating):
    raise TypeError(f"`saliency` must be a floating array; got dtype "
                    f"{jnp.result_type(saliency)}. Convert with `.astype(jnp.float32)`.")
  if _checks.is_concrete(saliency) and not np.all(np.isfinite(np.asarray(saliency))):
    raise ValueError("`saliency` must be finite (normalise it with a guard against "
                     "all-zero maps); got NaN or inf.")
  if jnp.ndim(eps) != 0 or not (jnp.issubdtype(jnp.result_type(eps), jnp.floating)
                                 or jnp.issubdtype(jnp.result_type(eps), jnp.integer)):
    raise TypeError(f"`eps` must be a real scalar; got {_checks.describe(eps)}.")
  if _checks.is_concrete(eps):
    value = float(eps)
    if not (np.isfinite(value) and value > 0):
      raise ValueError(f"`eps` must be finite and > 0; got {eps}.")
  _checks.check_static("num_rounds", num_rounds, "transport_sources",
                       TRANSPORT_STATIC_ARGNAMES)
  if num_rounds is not None and (isinstance(num_rounds, bool) or not isinstance(
      num_rounds, (int, np.integer)) or num_rounds < 1):
    raise ValueError(f"`num_rounds` must be None (T rounds, as released) or an int "
                     f"≥ 1; got {num_rounds!r}.")


def _scaled_cost(eps, grid_size: int):
  """float32 (N, N) fl(ε·C), rounded on its own like the release's `eps * C`."""
  cost = _grid_tables(grid_size)["cost"]
  if _checks.is_concrete(eps):
    return np.float32(eps) * cost
  # A traced ε: keep the product a separate rounding step (no fused
  # multiply-add with the later subtraction).
  return lax.optimization_barrier(jnp.asarray(eps, jnp.float32) * cost)


def _take(table, index):
  """table[..., index] along the last axis, index broadcast against table."""
  return jnp.take_along_axis(table, index, axis=-1)


def _flat_segments(batch: int, segments: int, bucket):
  """Flat index b·segments + bucket for a per-image scatter."""
  offsets = (jnp.arange(batch, dtype=jnp.int32) * segments)[:, None]
  return (bucket + offsets).reshape(-1)


def _segment_min(values, bucket, segments: int, fill):
  """Per image, min of `values` (B, R) over rows with the same bucket (B, R)."""
  batch = values.shape[0]
  out = jnp.full((batch * segments,), fill, values.dtype)
  out = out.at[_flat_segments(batch, segments, bucket)].min(values.reshape(-1))
  return out.reshape(batch, segments)


def _first_run_length(cols):
  """(B,) number of leading rows whose pick equals row 0's (R if all do)."""
  differs = cols != cols[:, :1]
  width = cols.shape[1]
  return jnp.where(jnp.any(differs, axis=1), jnp.argmax(differs, axis=1), width)


def _full_sequences(row_costs, rounds: int):
  """The picks of rows that lose every round, exactly as the release's rows.

  Args:
    row_costs: float32 (N, ...) initial cost rows, the N columns first (a min
      over the leading axis vectorises well on CPU; argmin does not).
    rounds: sequence length.

  Returns:
    (cols int32 (rounds, ...), values float32 (rounds, ...)): pick L is the
    first argmin after L penalties of +1 on the previous picks.
  """
  cells = row_costs.shape[0]
  col_ids = jnp.arange(cells, dtype=jnp.int32).reshape((cells,) + (1,) * (
      row_costs.ndim - 1))

  def step(costs, _):
    best = jnp.min(costs, axis=0)
    pick = jnp.min(jnp.where(costs == best, col_ids, cells), axis=0)
    return jnp.where(col_ids == pick, costs + 1.0, costs), (pick, best)
  _, (cols, values) = lax.scan(step, row_costs, None, length=rounds)
  return cols, values


def _dense_sources(kept, sal, scaled_cost, rounds: int):
  """Exact sources for any finite input: (B, N) int32, −1 where nobody won.

  Each row's pick sequence comes from its K = min(rounds, N) smallest
  (value, column) entries: in round r a row has at most r penalties, so its
  argmin lies among its r + 1 smallest initial entries. The sequence is then
  the merge of those entries and their penalised copies.
  """
  batch, cells = kept.shape
  costs = scaled_cost[None] - jnp.where(kept[:, None, :], sal[:, :, None], 0.0)
  depth = min(rounds, cells)
  # top_k keeps the lower index first among equal values: (value, column) order.
  neg_values, cand_cols = lax.top_k(-costs, depth)
  cand_values = -neg_values

  def step(values, _):
    best = jnp.min(values, axis=-1, keepdims=True)
    col = jnp.min(jnp.where(values == best, cand_cols, cells), axis=-1)
    hit = cand_cols == col[..., None]
    return jnp.where(hit, values + 1.0, values), (col, best[..., 0])
  _, (seq_cols, seq_values) = lax.scan(step, cand_values, None, length=rounds)
  return _rounds_full(seq_cols, seq_values)


def _rounds_full(seq_cols, seq_values):
  """The release's rounds from every row's exact pick sequence (R, B, N)."""
  rounds, batch, cells = seq_cols.shape
  row_ids = jnp.arange(cells, dtype=jnp.int32)

  def body(r, state):
    losses, _ = state
    col = jnp.take_along_axis(seq_cols, losses[None], axis=0)[0]
    val = jnp.take_along_axis(seq_values, losses[None], axis=0)[0]
    col_min = _segment_min(val, col, cells, jnp.inf)
    min_at = _take(col_min, col)
    first = _segment_min(jnp.where(val == min_at, row_ids, cells), col, cells, cells)
    head = _take(first, col) == row_ids
    all_same = jnp.all(col == col[:, :1], axis=1, keepdims=True)
    # Rows before the first non-chooser of row 0's column all chose it.
    run = _first_run_length(col)[:, None]
    win = head & ((min_at < 0) | all_same | ((min_at == 0) & (row_ids < run)))
    return losses + (~win).astype(jnp.int32), (col, win)

  init = (jnp.zeros((batch, cells), jnp.int32),
          (jnp.zeros((batch, cells), jnp.int32), jnp.zeros((batch, cells), bool)))
  _, (col, win) = lax.fori_loop(0, rounds, body, init)
  return _winners_to_sources(col, win)


def _winners_to_sources(col, win):
  batch, cells = col.shape
  row_ids = jnp.broadcast_to(jnp.arange(cells, dtype=jnp.int32), (batch, cells))
  sources = jnp.full((batch * (cells + 1),), -1, jnp.int32)
  sources = sources.at[_flat_segments(batch, cells + 1, jnp.where(win, col, cells))].max(
      jnp.where(win, row_ids, -1).reshape(-1))
  return sources.reshape(batch, cells + 1)[:, :cells]


def _pack_bits(bits, axis: int):
  """bool bits along `axis` (length M) → uint32 (W, ...) words, W = ⌈M/32⌉.

  Bit k of word w is bits[32w + k]; the word axis comes first and `axis` is
  removed from the other dimensions.
  """
  axis = axis % bits.ndim
  width = bits.shape[axis]
  words = -(-width // _BITS)
  pad = [(0, 0)] * bits.ndim
  pad[axis] = (0, words * _BITS - width)
  bits = jnp.pad(bits, pad)
  shape = bits.shape[:axis] + (words, _BITS) + bits.shape[axis + 1:]
  bits = bits.reshape(shape).astype(jnp.uint32)
  shifts = jnp.arange(_BITS, dtype=jnp.uint32).reshape(
      (_BITS,) + (1,) * (len(shape) - axis - 2))
  packed = jnp.sum(bits << shifts, axis=axis + 1, dtype=jnp.uint32)
  return jnp.moveaxis(packed, axis, 0)


def _prefix_words(count, words: int):
  """uint32 (W, ...) with the lowest `count` (...) bits set."""
  low = count[None] - _BITS * jnp.arange(words, dtype=jnp.int32).reshape(
      (words,) + (1,) * count.ndim)
  shift = jnp.clip(low, 0, _BITS - 1).astype(jnp.uint32)
  partial = (jnp.uint32(1) << shift) - jnp.uint32(1)
  return jnp.where(low >= _BITS, jnp.uint32(0xFFFFFFFF),
                   jnp.where(low <= 0, jnp.uint32(0), partial))


def _nonpositive_sequences(words, own_tail, rows, sal, order, scaled_order,
                           depth: int):
  """Explicit non-positive pick sequences from bit sets in static order.

  Args:
    words: uint32 (W, B, R); bit j set = the row's j-th nearest cell is kept
      and ε·C ≤ s (a pick with value ≤ 0).
    own_tail: bool (B, R), the row's own cell is not kept (a 0-valued pick
      after the kept ones).
    rows: int32 (B, R) or (R,) cell index of each row.
    sal: float32 (B, R) saliency of each row.
    order, scaled_order: (N, N) static order and fl(ε·C) in that order.
    depth: sequence length.

  Returns:
    (cols int32 (depth, B, R), values float32 (depth, B, R)); past the end
    the column is N and the value +inf (only positive picks are left).
  """
  cells = order.shape[0]
  rows = jnp.broadcast_to(rows, own_tail.shape)
  order_flat = jnp.asarray(order).reshape(-1)
  scaled_flat = jnp.asarray(scaled_order).reshape(-1)

  def step(state, _):
    words, tail = state
    found = jnp.zeros(tail.shape, bool)
    position = jnp.zeros(tail.shape, jnp.int32)
    next_words = []
    for index, word in enumerate(words):   # lowest set bit over the words
      take = ~found & (word != 0)
      lowest = word & (~word + jnp.uint32(1))
      bit = lax.population_count(lowest - jnp.uint32(1)).astype(jnp.int32)
      position = jnp.where(take, index * _BITS + bit, position)
      next_words.append(jnp.where(take, word ^ lowest, word))
      found = found | take
    flat = rows * cells + position
    col = jnp.where(found, jnp.take(order_flat, flat), jnp.where(tail, rows, cells))
    value = jnp.where(found, jnp.take(scaled_flat, flat) - sal,
                      jnp.where(tail, 0.0, jnp.inf))
    return (tuple(next_words), tail & found), (col, value)

  state = (tuple(words[index] for index in range(words.shape[0])), own_tail)
  _, (cols, values) = lax.scan(step, state, None, length=depth)
  return cols, values


def _fast_sources(kept, sal, scaled_cost, rounds: int, grid_size: int):
  """Sources and a flag; the sources are exact unless the flag is set."""
  batch, cells = kept.shape
  tables = _grid_tables(grid_size)
  order = tables["order"]
  xp = np if isinstance(scaled_cost, np.ndarray) else jnp
  scaled_order = xp.take_along_axis(scaled_cost, order, axis=1)
  # fl(ε·C) of each distinct squared distance, ascending.
  levels = scaled_cost.reshape(-1)[tables["level_cells"]]
  gap_ok = xp.all(xp.diff(levels) > _MIN_LEVEL_GAP)
  window = min(_WINDOW, cells)
  heavy = min(_HEAVY_ROWS, cells)
  leading = min(_LEADING_ROWS, cells)
  row_ids = jnp.arange(cells, dtype=jnp.int32)

  # How many of each row's nearest cells have ε·C ≤ s (a prefix of its order).
  num_levels = jnp.searchsorted(jnp.asarray(levels), sal, side="right").astype(jnp.int32)
  reach = jnp.take_along_axis(jnp.asarray(tables["count_within"])[None],
                              num_levels[..., None], axis=-1)[..., 0]
  reach = jnp.minimum(jnp.broadcast_to(reach, (batch, cells)), cells)
  on_level = (num_levels > 0) & (
      jnp.asarray(levels)[jnp.maximum(num_levels - 1, 0)] == sal)

  # Light rows: kept bits of the window, in static order.
  num_window_words = -(-window // _BITS)
  kept_window = jnp.take(kept, jnp.asarray(order[:, :window].T), axis=1)   # (B, M, N)
  window_words = _pack_bits(kept_window, axis=1) & _prefix_words(
      jnp.minimum(reach, window), num_window_words)                       # (W, B, N)
  window_count = jnp.sum(lax.population_count(window_words), axis=0, dtype=jnp.int32)
  covered = (reach <= window) | (window_count >= rounds)
  seq_cols, seq_values = _nonpositive_sequences(
      window_words, ~kept, row_ids, sal, order, scaled_order, rounds)     # (R, B, N)

  # Heavy rows: the whole static order.
  uncovered = ~covered
  too_many_heavy = jnp.any(jnp.sum(uncovered, axis=1) > heavy)
  if window < cells:
    # Uncovered rows first, then the lowest rows (harmless: exact as well).
    priority = uncovered.astype(jnp.int32) * (2 * cells) + (cells - 1 - row_ids)
    _, heavy_rows = lax.top_k(priority, heavy)
    heavy_rows = heavy_rows.astype(jnp.int32)                              # (B, H)
    heavy_kept = jnp.take_along_axis(kept[:, None, :], jnp.asarray(order)[heavy_rows],
                                     axis=-1)                              # (B, H, N)
    heavy_words = _pack_bits(heavy_kept, axis=-1) & _prefix_words(
        _take(reach, heavy_rows), -(-cells // _BITS))
    heavy_cols, heavy_values = _nonpositive_sequences(
        heavy_words, ~_take(kept, heavy_rows), heavy_rows, _take(sal, heavy_rows),
        order, scaled_order, rounds)
    image = jnp.arange(batch)[:, None]
    seq_cols = seq_cols.at[:, image, heavy_rows].set(heavy_cols)
    seq_values = seq_values.at[:, image, heavy_rows].set(heavy_values)

  # Leading rows: every pick, positive ones included. Layout (N, B, Q).
  lead_costs = (jnp.asarray(scaled_cost)[:leading].T[:, None, :]
                - jnp.where(kept.T[:, :, None], sal[None, :, :leading], 0.0))
  lead_cols, lead_values = _full_sequences(lead_costs, rounds)           # (R, B, Q)
  seq_cols = seq_cols.at[:, :, :leading].set(lead_cols)
  seq_values = seq_values.at[:, :, :leading].set(lead_values)

  # Positive picks can be penalised back to ≤ 0 only if s ≥ 1; a row whose
  # own cell is not kept and whose saliency equals a distance level has
  # 0-valued kept picks that must interleave with its own cell by index.
  flag = (~gap_ok | jnp.any(sal >= 1.0) | too_many_heavy
          | jnp.any(~kept & (sal > 0) & on_level))
  row_grid = jnp.broadcast_to(row_ids, (batch, cells))

  def body(r, state):
    losses, _, _, flag = state
    col = jnp.take_along_axis(seq_cols, losses[None], axis=0)[0]
    val = jnp.take_along_axis(seq_values, losses[None], axis=0)[0]
    # Only picks ≤ 0 can win (rows past their sequence have col N, +inf).
    bucket = jnp.where(val <= 0, col, cells)
    col_min = _take(_segment_min(val, bucket, cells + 1, jnp.inf), bucket)
    first = _take(_segment_min(row_grid, jnp.where(val == col_min, bucket, cells),
                               cells + 1, cells), bucket)
    head = (val <= 0) & (first == row_ids)
    lead_col = col[:, :leading]
    run = _first_run_length(lead_col)[:, None]
    # The first chooser of the column's minimum wins if that minimum is < 0;
    # if it is 0, only if every row before it chose the column too, which
    # is known exactly for the leading rows (rows < run).
    win = head & ((col_min < 0) | (row_ids == 0)
                  | ((col == lead_col[:, :1]) & (row_ids < run)))
    flag = flag | jnp.any(run >= leading)
    return losses + (~win).astype(jnp.int32), col, win, flag

  init = (jnp.zeros((batch, cells), jnp.int32), jnp.zeros((batch, cells), jnp.int32),
          jnp.zeros((batch, cells), bool), flag)
  _, col, win, flag = lax.fori_loop(0, rounds, body, init)
  return _winners_to_sources(col, win), flag


def _sources(mask, saliency, eps, num_rounds):
  batch, grid_size, _ = mask.shape
  cells = grid_size * grid_size
  rounds = grid_size if num_rounds is None else int(num_rounds)
  kept = (jnp.asarray(mask) > 0).reshape(batch, cells)
  sal = jnp.asarray(saliency).astype(jnp.float32).reshape(batch, cells)
  scaled_cost = _scaled_cost(eps, grid_size)
  dense = lambda: _dense_sources(kept, sal, jnp.asarray(scaled_cost), rounds)
  if cells <= _LEADING_ROWS:
    return dense()
  fast, needs_dense = _fast_sources(kept, sal, scaled_cost, rounds, grid_size)
  return lax.cond(needs_dense, dense, lambda: fast)


# Compiled as a whole even when called eagerly (op-by-op dispatch of the
# loops would take seconds).
_sources_static_eps = jax.jit(_sources, static_argnames=("eps", "num_rounds"))
_sources_traced_eps = jax.jit(_sources, static_argnames=("num_rounds",))


def transport_sources(mask: Any, saliency: Any, eps: Any = DEFAULT_EPS,
                      num_rounds: Optional[int] = None) -> jax.Array:
  """The release's transport plan of each grid, as one source cell per cell.

  Args:
    mask: (B, T, T) real or bool, T ≥ 2; cells with mask > 0 accept patches
      (the share of the image being transported, as in the release).
    saliency: (B, T, T) floating, finite; the cell saliency of the image being
      transported (the release normalises it to sum 1 per image). Computed in
      float32.
    eps: ε > 0, weight of the distance cost (0.8 in the release).
    num_rounds: rounds of pick-and-resolve; None = T, as released. Static.

  Returns:
    int32 (B, T²): sources[i, b] = a where the plan moves patch a into cell b
    (plan[i, a, b] = 1), −1 where no patch lands (cell b becomes 0).

  Raises:
    ValueError: on wrong ranks or shapes, a grid smaller than 2×2, eps ≤ 0,
      non-finite (concrete) saliency, or a bad `num_rounds`.
    TypeError: on non-real dtypes, a non-scalar eps, or a traced `num_rounds`.
  """
  _check_transport_args(mask, saliency, eps, num_rounds)
  mask, saliency = jnp.asarray(mask), jnp.asarray(saliency)
  if _checks.is_concrete(eps):
    # A Python/NumPy ε is folded into the cost table at compile time.
    return _sources_static_eps(mask, saliency, float(eps), num_rounds)
  return _sources_traced_eps(mask, saliency, eps, num_rounds)


def mask_transport(mask: Any, saliency: Any, eps: Any = DEFAULT_EPS,
                   num_rounds: Optional[int] = None) -> jax.Array:
  """The release's `mask_transport`: the 0/1 transport plan of each grid.

  Same arguments, checks and result as `transport_sources`, returned as the
  dense plan: float32 (B, T², T²) with plan[i, a, b] = 1 when patch a moves
  into cell b. Each column holds at most one 1, each row at most one.
  `transport_sources` + `move_patches` avoid building this (B, T², T²) array.
  """
  sources = transport_sources(mask, saliency, eps, num_rounds)
  cells = sources.shape[1]
  return (sources[:, None, :] == jnp.arange(cells, dtype=jnp.int32)[:, None]).astype(
      jnp.float32)


def _check_images_grid(images: Any, grid_size: Any, function: str) -> None:
  _checks.check_images(images)
  _check_grid_size(grid_size, function)
  _, height, width, _ = jnp.shape(images)
  if height % grid_size or width % grid_size:
    raise ValueError(f"`images` of size {height}×{width} cannot be cut into a "
                     f"{grid_size}×{grid_size} grid; H and W must be multiples of "
                     "`grid_size`.")


def _to_cells(images, grid_size: int):
  """(B, H, W, C) → (B, T², h·w·C) patches in row-major cell order."""
  batch, height, width, channels = images.shape
  cell_h, cell_w = height // grid_size, width // grid_size
  patches = images.reshape(batch, grid_size, cell_h, grid_size, cell_w, channels)
  return patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid_size ** 2, -1), (
      cell_h, cell_w)


def _from_cells(patches, shape, grid_size: int, cell_h: int, cell_w: int):
  batch, height, width, channels = shape
  patches = patches.reshape(batch, grid_size, grid_size, cell_h, cell_w, channels)
  return patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def move_patches(images: Any, sources: Any, grid_size: int) -> jax.Array:
  """Moves patches as a transport plan says (`transport_sources`' output).

  Args:
    images: (B, H, W, C) floating, NHWC; H and W multiples of `grid_size`.
    sources: int (B, T²) with T = grid_size; cell b of the output gets patch
      sources[:, b] of the input (row-major cells of size H/T × W/T), and is 0
      where sources[:, b] = −1.
    grid_size: T (static).

  Returns:
    (B, H, W, C) images of the input dtype.

  Raises:
    ValueError: on a bad layout, sizes not divisible by T, a `sources` shape
      other than (B, T²), or (concrete) sources outside [−1, T²).
    TypeError: on non-integer sources or a traced `grid_size`.
  """
  _check_images_grid(images, grid_size, "move_patches")
  batch = jnp.shape(images)[0]
  cells = grid_size ** 2
  if jnp.shape(sources) != (batch, cells):
    raise ValueError(f"`sources` must have shape (B, T²) = {(batch, cells)}; got "
                     f"{jnp.shape(sources)}.")
  if not jnp.issubdtype(jnp.result_type(sources), jnp.integer):
    raise TypeError(f"`sources` must be integer cell indices; got dtype "
                    f"{jnp.result_type(sources)}.")
  if _checks.is_concrete(sources):
    values = np.asarray(sources)
    if values.min() < -1 or values.max() >= cells:
      raise ValueError(f"`sources` must lie in [-1, {cells}); got values in "
                       f"[{values.min()}, {values.max()}].")
  images = jnp.asarray(images)
  patches, (cell_h, cell_w) = _to_cells(images, grid_size)
  sources = jnp.asarray(sources, jnp.int32)
  moved = jnp.take_along_axis(patches, jnp.maximum(sources, 0)[..., None], axis=1)
  moved = jnp.where((sources >= 0)[..., None], moved, jnp.zeros((), images.dtype))
  return _from_cells(moved, images.shape, grid_size, cell_h, cell_w)


def transport_image(images: Any, plan: Any, grid_size: int) -> jax.Array:
  """The release's `transport_image`: cell b ← Σ_a plan[a, b] · patch a.

  For a plan of `mask_transport` (at most one 1 per column) this moves patch
  a into cell b where plan[a, b] = 1 and leaves cells nobody won at 0,
  exactly (the sum runs at full float32 precision).

  Args:
    images: (B, H, W, C) floating, NHWC; H and W multiples of `grid_size`.
    plan: (B, T², T²) real with T = grid_size.
    grid_size: T (static).

  Returns:
    (B, H, W, C) images, float32 (or the input's wider float dtype).

  Raises:
    ValueError: on a bad layout, sizes not divisible by T, or a `plan` shape
      other than (B, T², T²).
    TypeError: on a traced `grid_size`.
  """
  _check_images_grid(images, grid_size, "transport_image")
  batch = jnp.shape(images)[0]
  cells = grid_size ** 2
  if jnp.shape(plan) != (batch, cells, cells):
    raise ValueError(f"`plan` must have shape (B, T², T²) = {(batch, cells, cells)}; "
                     f"got {jnp.shape(plan)}.")
  images = jnp.asarray(images)
  patches, (cell_h, cell_w) = _to_cells(images, grid_size)
  dtype = jnp.promote_types(images.dtype, jnp.float32)
  moved = jnp.einsum("bac,bap->bcp", jnp.asarray(plan, dtype), patches.astype(dtype),
                     precision=lax.Precision.HIGHEST)
  return _from_cells(moved, images.shape, grid_size, cell_h, cell_w)
