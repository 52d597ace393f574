"""Tests of the "moves" route of sage_jax.augment.grid_mrf (Co-Mixup's per-output solver).

* Single moves against brute force: on 2×2 and 2×3 grids with random
  non-metric tables, each cell choosing among K = 2 or 3 candidates, the
  move's labelling has the smallest energy of all K^cells choices.
* The gco contract (docs/baselines.md §4.3, §6): on Co-Mixup-shaped
  subproblems built from real CIFAR-10 saliency (the archive next to the
  repository, `SAGE_CIFAR10_ARCHIVE`; root mean square over channels of the
  input gradient of a randomly initialised PreActResNet8, as in
  tests/test_grid_mrf.py), our float64 energy is compared with gco-wrapper's
  α-β swap called as the release calls it, labels evaluated by the same
  float64 energy.
* jit == eager, determinism, per-problem tables, disabled labels, bad input.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax.augment import grid_mrf
from test_grid_mrf import cifar, saliency_data  # noqa: F401  (pytest fixtures)

# docs/baselines.md §4.3 on CIFAR: 4×4 blocks, 20 inputs, scaled parameters.
NUM_INPUTS = 20
MAX_LABELS = 23                    # 20 inputs + up to 3 half-half labels
BETA = 0.32 / 16
GAMMA = 1.0 / 16
ETA = 0.05 / 16
TAU = 0.83 * 16
OMEGA = 0.001
MIX_BONUS = 5e-4
CONTRACT_CASES = 2010              # a third each with L = 20, 21, 23
WORST_GAP = 0.005
HALF_HALF = np.arange(MAX_LABELS) >= NUM_INPUTS


# ----------------------------------------------------------------------------
# NumPy references.


def numpy_energy(labels, unary, pairwise, weight_vertical, weight_horizontal):
  """float64 (B,) energies; pairwise (L, L) or (B, L, L)."""
  labels = np.asarray(labels)
  unary = np.asarray(unary, np.float64)
  pairwise = np.asarray(pairwise, np.float64)
  if pairwise.ndim == 2:
    pairwise = np.broadcast_to(pairwise, (len(unary),) + pairwise.shape)
  index = np.arange(len(unary))[:, None, None]
  data = np.take_along_axis(unary, labels[..., None], -1)[..., 0].sum((1, 2))
  vertical = (np.asarray(weight_vertical, np.float64)
              * pairwise[index, labels[:, :-1], labels[:, 1:]]).sum((1, 2))
  horizontal = (np.asarray(weight_horizontal, np.float64)
                * pairwise[index, labels[:, :, :-1], labels[:, :, 1:]]).sum((1, 2))
  return data + vertical + horizontal


def brute_force_move(candidates, unary, pairwise, weight_vertical, weight_horizontal):
  """Smallest float64 energy (B,) over every choice of one candidate per cell.

  candidates: int (B, K, R, W).
  """
  batch, choices, rows, cols = candidates.shape
  every = np.array(list(itertools.product(range(choices), repeat=rows * cols)))
  every = every.reshape(-1, 1, rows, cols)                        # (C, 1, R, W)
  best = []
  for b in range(batch):
    labels = np.take_along_axis(np.broadcast_to(candidates[b], (len(every),) + candidates.shape[1:]),
                                every, axis=1)[:, 0]              # (C, R, W)
    spread = lambda x: np.broadcast_to(x[b], (len(every),) + x.shape[1:])
    best.append(numpy_energy(labels, spread(unary), spread(pairwise),
                             spread(weight_vertical), spread(weight_horizontal)).min())
  return np.array(best)


def random_problem(rng, batch, rows, cols, num_labels, per_problem=True):
  """Random energies: non-metric, asymmetric tables, weights of both signs."""
  unary = rng.normal(size=(batch, rows, cols, num_labels))
  shape = (batch, num_labels, num_labels) if per_problem else (num_labels, num_labels)
  pairwise = rng.uniform(0.0, 2.0, size=shape)
  weight_vertical = rng.uniform(-0.5, 1.0, size=(batch, rows - 1, cols))
  weight_horizontal = rng.uniform(-0.5, 1.0, size=(batch, rows, cols - 1))
  return unary, pairwise, weight_vertical, weight_horizontal


def as_f32(*arrays):
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def batch_last(*arrays):
  return tuple(jnp.moveaxis(a, 0, -1) for a in arrays)


@functools.lru_cache(maxsize=None)
def jitted(**options):
  return jax.jit(functools.partial(grid_mrf.solve_grid_mrf, method="moves", **options))


# ----------------------------------------------------------------------------
# Co-Mixup subproblems (docs/baselines.md §4.3).


def pooled_costs(saliency):
  """c_k(p) = −s̄_k(p): 8×8 block means of (N, 32, 32) maps, each summing to 1."""
  pooled = saliency.reshape(-1, 4, 8, 4, 8).mean(axis=(2, 4))
  return -pooled / pooled.sum(axis=(1, 2), keepdims=True)


def co_mixup_cases(saliency, num_cases, seed):
  """float64 unary (4, 4, L) and table V (L, L) per case; L = 20, 21, 23 in turn.

  Per case: 20 random images; α ~ Dirichlet(2·1); a random symmetric
  non-negative Â summing to 20; the other 19 outputs labelled at random
  (half the cases uniformly over the 20 inputs, half with 1-3 inputs per
  output, as outputs tend to be); the thresholded modular penalty of §4.3.
  """
  rng = np.random.default_rng(seed)
  cases = []
  for case in range(num_cases):
    index = rng.choice(len(saliency), NUM_INPUTS, replace=False)
    cost = pooled_costs(saliency[index])                          # (20, 4, 4)
    alpha = rng.dirichlet(2.0 * np.ones(NUM_INPUTS))
    cost = cost - ETA * np.log(alpha + 1e-8)[:, None, None]
    a_hat = rng.uniform(0.0, 1.0, (NUM_INPUTS, NUM_INPUTS))
    a_hat = a_hat + a_hat.T
    np.fill_diagonal(a_hat, 0.0)
    compat = (1 - OMEGA) * np.eye(NUM_INPUTS) + OMEGA * a_hat / a_hat.sum() * NUM_INPUTS
    if rng.uniform() < 0.5:
      others = rng.integers(0, NUM_INPUTS, (NUM_INPUTS - 1, 16))
    else:
      others = np.stack([rng.choice(rng.choice(NUM_INPUTS, rng.integers(1, 4), replace=False), 16)
                         for _ in range(NUM_INPUTS - 1)])
    counts = np.bincount(others.ravel(), minlength=NUM_INPUTS).astype(np.float64)
    over = (compat @ counts > TAU).astype(np.float64)
    penalty = 2 * GAMMA * (over[None, :] * compat) @ counts       # (t ⊙ A) n, §4.3
    plain = np.moveaxis(cost + penalty[:, None, None], 0, -1)     # (4, 4, 20)
    num_mixed = (0, 1, 3)[case % 3]
    if num_mixed == 1:
      pairs = [tuple(rng.choice(NUM_INPUTS, 2, replace=False))]
    elif num_mixed == 3:
      a, b, c = rng.choice(NUM_INPUTS, 3, replace=False)
      pairs = [(a, b), (a, c), (b, c)]
    else:
      pairs = []
    table = 1.0 - np.eye(NUM_INPUTS + num_mixed)
    mixed = [0.5 * (plain[..., i] + plain[..., j]) - MIX_BONUS for i, j in pairs]
    unary = np.concatenate([plain] + [m[..., None] for m in mixed], axis=-1)
    for q, pair in enumerate(pairs):
      for k in pair:
        table[NUM_INPUTS + q, k] = table[k, NUM_INPUTS + q] = 0.25
    cases.append((unary, table))
  return cases


def padded(cases, disabled=grid_mrf.DISABLED_UNARY):
  """Fixed shapes as in our Co-Mixup: L = 23, unused labels disabled."""
  unary = np.full((len(cases), 4, 4, MAX_LABELS), disabled, np.float32)
  tables = np.ones((len(cases), MAX_LABELS, MAX_LABELS), np.float32)
  for b, (u, table) in enumerate(cases):
    num_labels = u.shape[-1]
    unary[b, ..., :num_labels] = u
    tables[b, :num_labels, :num_labels] = table
    tables[b, np.arange(MAX_LABELS), np.arange(MAX_LABELS)] = 0.0
  weight_vertical = np.full((len(cases), 3, 4), BETA, np.float32)
  weight_horizontal = np.full((len(cases), 4, 3), BETA, np.float32)
  return unary, tables, weight_vertical, weight_horizontal


def case_energy(labels, unary, table):
  """float64 energy of one (4, 4) labelling of a float32-rounded case."""
  return numpy_energy(labels[None], unary[None].astype(np.float32), table,
                      np.full((1, 3, 4), BETA, np.float32),
                      np.full((1, 4, 3), BETA, np.float32))[0]


def gco_swap(unary, table):
  """The release's call: float32 arrays, gco scales them internally."""
  import gco  # pylint: disable=g-import-not-at-top  (test-only oracle)
  # C order: gco reads the raw buffer (a transposed view gives garbage).
  flat = gco.cut_grid_graph(np.ascontiguousarray(unary, np.float32),
                            np.ascontiguousarray(table, np.float32),
                            np.full((3, 4), BETA, np.float32),
                            np.full((4, 3), BETA, np.float32), algorithm="swap")
  return np.asarray(flat).reshape(4, 4)


# ----------------------------------------------------------------------------
# Single moves are exact.


@pytest.mark.parametrize("rows,cols,choices", [(2, 2, 2), (2, 2, 3), (2, 3, 2), (2, 3, 3),
                                               (3, 2, 3), (1, 4, 3)])
def test_single_move_is_exact(rows, cols, choices):
  rng = np.random.default_rng(100 * rows + 10 * cols + choices)
  num_labels = 5
  problem = random_problem(rng, 12, rows, cols, num_labels)
  current = rng.integers(0, num_labels, (12, rows, cols))
  others = rng.integers(0, num_labels, (12, choices - 1, rows, cols))
  candidates = np.concatenate([current[:, None], others], axis=1).astype(np.int32)
  unary, pairwise, vertical, horizontal = as_f32(*problem)
  flat = jnp.moveaxis(pairwise, 0, -1).reshape(num_labels * num_labels, -1)
  move = jax.jit(grid_mrf._apply_move)  # pylint: disable=protected-access
  labels = np.asarray(jnp.moveaxis(move(
      jnp.moveaxis(jnp.asarray(candidates), 0, -1), *batch_last(unary), flat,
      *batch_last(vertical, horizontal)), -1, 0))
  # Every cell took one of its own candidates ...
  assert np.all(np.any(labels[:, None] == candidates, axis=1))
  # ... and no choice of candidates has a lower energy.
  got = numpy_energy(labels, *problem)
  want = brute_force_move(candidates, *problem)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.all(got <= numpy_energy(current, *problem) + 1e-5)


def test_moves_never_increase_the_energy():
  rng = np.random.default_rng(1)
  problem = random_problem(rng, 24, 4, 4, 6)
  start = rng.integers(0, 6, (24, 4, 4)).astype(np.int32)
  energies = [numpy_energy(start, *problem)]
  for cycles in (1, 3):
    labels = np.asarray(jitted(iterations=cycles)(*as_f32(*problem), init=start))
    energies.append(numpy_energy(labels, *problem))
  energies = np.stack(energies)
  assert np.all(np.diff(energies, axis=0) <= 1e-5), np.diff(energies, axis=0).max()
  assert np.all(energies[-1] < energies[0] - 1e-3)


def test_zero_cycles_return_the_start():
  rng = np.random.default_rng(2)
  problem = as_f32(*random_problem(rng, 4, 3, 3, 4))
  start = rng.integers(0, 4, (4, 3, 3)).astype(np.int32)
  np.testing.assert_array_equal(jitted(iterations=0)(*problem, init=start), start)
  # The default start is each cell's smallest unary.
  np.testing.assert_array_equal(jitted(iterations=0)(*problem),
                                np.argmin(np.asarray(problem[0]), axis=-1))


def test_two_labels_and_small_grids_reach_the_optimum():
  # With L = 2 the combined move with both labels lets every cell take
  # either label: it covers every labelling, so one cycle is exact.
  rng = np.random.default_rng(3)
  for rows in (2, 4):
    unary, pairwise, vertical, horizontal = random_problem(rng, 8, rows, rows, 2)
    labels = np.asarray(jitted()(*as_f32(unary, pairwise, vertical, horizontal)))
    every = np.array(list(itertools.product(range(2), repeat=rows * rows))).reshape(-1, rows, rows)
    for b in range(8):
      spread = lambda x: np.broadcast_to(x[b], (len(every),) + x.shape[1:])
      best = numpy_energy(every, spread(unary), spread(pairwise), spread(vertical),
                          spread(horizontal)).min()
      got = numpy_energy(labels[b:b + 1], unary[b:b + 1], pairwise[b:b + 1],
                         vertical[b:b + 1], horizontal[b:b + 1])[0]
      assert got <= best + 1e-5


@pytest.mark.parametrize("n,num_labels", [(4, 3), (4, 9), (3, 12)])
def test_exact_when_the_labels_fit_the_restricted_solve(n, num_labels):
  # L ≤ K (9 at n = 4, 18 at n = 3): the first step is the exact best
  # labelling over all labels, so "moves" reaches the global minimum that
  # the "exact" route (row DP over every labelling, any table) finds; shared
  # non-metric table, weights of both signs.
  assert grid_mrf.move_exact_labels(n, num_labels) == num_labels
  rng = np.random.default_rng(10 * n + num_labels)
  problem = random_problem(rng, 16, n, n, num_labels, per_problem=False)
  ours = numpy_energy(np.asarray(jitted()(*as_f32(*problem))), *problem)
  best = numpy_energy(np.asarray(grid_mrf.solve_grid_mrf(*as_f32(*problem), method="exact")),
                      *problem)
  np.testing.assert_allclose(ours, best, rtol=1e-5, atol=1e-5)
  # Beyond K the solve is restricted (and the rest is local search).
  assert grid_mrf.move_exact_labels(4, 23) == 9
  assert grid_mrf.move_exact_labels(6, 23) == 4


def test_preferred_labels_are_ranked_first():
  rng = np.random.default_rng(8)
  unary = rng.uniform(size=(4, 4, 12, 3)).astype(np.float32)      # batch last
  unary[..., 10, :] += 5.0                                        # never cheap
  unary[..., 11, 1] = grid_mrf.DISABLED_UNARY                     # off in problem 1
  preferred = np.zeros((12, 3), bool)
  preferred[[10, 11]] = True
  ranked = np.asarray(grid_mrf._ranked_labels(  # pylint: disable=protected-access
      jnp.asarray(unary), jnp.asarray(preferred)))
  for b in (0, 2):
    assert set(ranked[:2, b]) == {10, 11}
  # A disabled label is never promoted: it comes last.
  assert ranked[0, 1] == 10 and ranked[-1, 1] == 11
  # Without preferences the expensive label comes last (before a disabled one).
  plain = np.asarray(grid_mrf._ranked_labels(  # pylint: disable=protected-access
      jnp.asarray(unary), jnp.zeros((12, 3), bool)))
  assert plain[-1, 0] == 10 and plain[-1, 2] == 10
  assert list(plain[-2:, 1]) == [10, 11]


# ----------------------------------------------------------------------------
# The gco contract on real Co-Mixup subproblems.


def test_at_least_as_good_as_gco_swap(saliency_data):  # noqa: F811
  pytest.importorskip("gco")
  _, saliency = saliency_data
  cases = co_mixup_cases(saliency, CONTRACT_CASES, seed=0)
  gco_energy = np.array([case_energy(gco_swap(u, t), u, t) for u, t in cases])
  problem = padded(cases)
  # As Co-Mixup calls it: the half-half labels (20-22) ranked first.
  labels = np.asarray(jitted()(*problem, preferred_labels=HALF_HALF))
  assert labels.min() >= 0
  # Disabled labels (L < 23) are never chosen.
  sizes = np.array([u.shape[-1] for u, _ in cases])
  assert np.all(labels.max(axis=(1, 2)) < sizes)
  ours = np.array([case_energy(l, u, t) for l, (u, t) in zip(labels, cases)])
  relative = (ours - gco_energy) / np.abs(gco_energy)
  share = np.mean(ours <= gco_energy + 1e-6)
  print(f"\nCo-Mixup subproblems: {len(cases)}; ours ≤ gco + 1e-6: {100 * share:.2f}%; "
        f"strictly lower: {100 * np.mean(ours < gco_energy - 1e-6):.2f}%; mean gap "
        f"{relative.mean():.2e}; worst gap {relative.max():.2e}; cases above gco by "
        f"> 0.5%: {int(np.sum(relative > 0.005))}")
  assert share >= 0.99, (share, relative.max())
  assert relative.max() <= WORST_GAP, relative.max()


# ----------------------------------------------------------------------------
# Compilation, determinism, tables, bad input.


def test_jit_equals_eager_and_is_deterministic():
  rng = np.random.default_rng(4)
  problem = as_f32(*random_problem(rng, 3, 3, 3, 4))   # 4 triples, 6 pairs
  eager = np.asarray(grid_mrf.solve_grid_mrf(*problem, method="moves"))
  first = np.asarray(jitted()(*problem))
  second = np.asarray(jitted()(*problem))
  np.testing.assert_array_equal(eager, first)
  np.testing.assert_array_equal(first, second)
  assert first.dtype == np.int32 and first.shape == (3, 3, 3)


def test_per_problem_tables_under_vmap_and_batched():
  rng = np.random.default_rng(5)
  unary, tables, vertical, horizontal = as_f32(*random_problem(rng, 6, 3, 3, 4))
  batched = np.asarray(jitted()(unary, tables, vertical, horizontal))
  single = jax.jit(jax.vmap(lambda u, p, wv, wh: grid_mrf.solve_grid_mrf(
      u[None], p, wv[None], wh[None], method="moves")[0]))
  np.testing.assert_array_equal(single(unary, tables, vertical, horizontal), batched)
  # One (L, L) table for all equals that table repeated per problem.
  shared = tables[0]
  np.testing.assert_array_equal(
      jitted()(unary, shared, vertical, horizontal),
      jitted()(unary, jnp.broadcast_to(shared, tables.shape), vertical, horizontal))
  # The energy takes (B, L, L) too.
  labels = rng.integers(0, 4, (6, 3, 3))
  np.testing.assert_allclose(
      grid_mrf.grid_mrf_energy(labels, unary, tables, vertical, horizontal),
      numpy_energy(labels, unary, tables, vertical, horizontal), rtol=1e-5, atol=1e-5)


def test_disabled_labels_are_never_chosen():
  rng = np.random.default_rng(6)
  unary, tables, vertical, horizontal = random_problem(rng, 8, 4, 4, 9)
  enabled = rng.uniform(size=(8, 9)) < 0.4
  enabled[:, 0] = True
  # Even from a start full of disabled labels.
  start = np.broadcast_to(np.argmin(enabled, axis=1)[:, None, None], (8, 4, 4)).astype(np.int32)
  for disabled in (grid_mrf.DISABLED_UNARY, 1e6):   # one compiled program
    problem = as_f32(np.where(enabled[:, None, None, :], unary, disabled), tables,
                     vertical, horizontal)
    labels = np.asarray(jitted()(*problem, init=start))
    assert np.all(np.take_along_axis(enabled, labels.reshape(8, -1), axis=1))
    energy = np.asarray(grid_mrf.grid_mrf_energy(labels, *problem))
    assert np.all(np.isfinite(energy)) and np.all(np.abs(energy) < 1e3)


def test_bad_input():
  rng = np.random.default_rng(7)
  unary, tables, vertical, horizontal = as_f32(*random_problem(rng, 2, 3, 3, 4))
  solve = functools.partial(grid_mrf.solve_grid_mrf, method="moves")
  with pytest.raises(ValueError, match=r"`pairwise`.*\(B, L, L\)"):
    solve(unary, tables[:, :3], vertical, horizontal)
  with pytest.raises(ValueError, match=r"`pairwise`.*\(B, L, L\)"):
    solve(unary, jnp.concatenate([tables, tables]), vertical, horizontal)
  with pytest.raises(ValueError, match="method='moves' for one table per problem"):
    grid_mrf.solve_grid_mrf(unary, tables, vertical, horizontal, method="strips")
  with pytest.raises(ValueError, match=r"`init` must have shape \(B, n, n\)"):
    solve(unary, tables, vertical, horizontal, init=np.zeros((2, 3, 4), np.int32))
  with pytest.raises(ValueError, match="`init` must be integer"):
    solve(unary, tables, vertical, horizontal, init=np.zeros((2, 3, 3), np.float32))
  with pytest.raises(ValueError, match=r"`init` must lie in \[0, L=4\)"):
    solve(unary, tables, vertical, horizontal, init=np.full((2, 3, 3), 4, np.int32))
  with pytest.raises(TypeError, match="`init` must be an array"):
    solve(unary, tables, vertical, horizontal, init=3)
  with pytest.raises(ValueError, match="`init` is only used by method='moves'"):
    grid_mrf.solve_grid_mrf(unary, tables[0], vertical, horizontal, method="strips",
                            init=np.zeros((2, 3, 3), np.int32))
  with pytest.raises(ValueError, match=r"`preferred_labels` must have shape \(L,\)"):
    solve(unary, tables, vertical, horizontal, preferred_labels=np.ones(5, bool))
  with pytest.raises(ValueError, match="`preferred_labels` must be boolean"):
    solve(unary, tables, vertical, horizontal, preferred_labels=np.ones(4, np.int32))
  with pytest.raises(TypeError, match="`preferred_labels` must be a boolean array"):
    solve(unary, tables, vertical, horizontal, preferred_labels=True)
  with pytest.raises(ValueError, match="`preferred_labels` is only used by method='moves'"):
    grid_mrf.solve_grid_mrf(unary, tables[0], vertical, horizontal, method="strips",
                            preferred_labels=np.ones(4, bool))
  with pytest.raises(ValueError, match="`iterations` must be a non-negative int"):
    solve(unary, tables, vertical, horizontal, iterations=-1)
  big = as_f32(*random_problem(rng, 1, 7, 7, 2))
  with pytest.raises(ValueError, match="MOVES_MAX_SIDE"):
    solve(*big)
