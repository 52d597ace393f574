"""Tests of sage_jax.augment.grid_mrf: brute force, a NumPy DP, and gco's α-β swap.

The gco contract (BASELINES §3.4, the Puzzle Mix issue): on ≥ 2,000 Puzzle
Mix energies per block count n ∈ {2, 4, 8, 16}, built from real CIFAR-10
images (the archive next to the repository, `SAGE_CIFAR10_ARCHIVE`), the
solver's float energy is ≤ gco-wrapper's α-β swap energy + 1e-6 on ≥ 99% of
cases and never worse by more than 0.5%; n = 2, 4 are exactly optimal.
Saliency: root mean square over channels of the input gradient of a
randomly initialised PreActResNet8 in eval mode (softmax cross-entropy), as
Puzzle Mix's saliency pass computes it (§3.1), on the real images.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sage_jax import models
from sage_jax.augment import grid_mrf
from cifar_archive import CIFAR_MEAN, CIFAR_STD, load_test_images
import puzzle_reference as ref

# 30 test images per class: 300 real images, paired at random into cases
# (~45,000 distinct ordered pairs for the 2,048 cases per block count).
NUM_IMAGES = 300
BATCH = 128
# 16 batches of 128 = 2,048 cases per block count (≥ 2,000 after skipping
# gco's int32-overflow cases, of which real maps give none so far).
CONTRACT_BATCHES = 16
CONTRACT_CASES = 2000
PUZZLE_TABLE = ref.pairwise_table()


# ----------------------------------------------------------------------------
# NumPy references.


def numpy_energy(labels, unary, pairwise, weight_vertical, weight_horizontal):
  return ref.grid_energy(labels, unary, pairwise, weight_vertical, weight_horizontal)


def brute_force(unary, pairwise, weight_vertical, weight_horizontal):
  """(labels (B, n, n) of the first minimum in itertools order, energies (B,))."""
  batch, n, _, num_labels = unary.shape
  every = np.array(list(itertools.product(range(num_labels), repeat=n * n)))
  every = every.reshape(-1, n, n)
  spread = lambda x, b: np.broadcast_to(x[b], (len(every),) + x.shape[1:])
  energies = np.stack([
      numpy_energy(every, spread(unary, b), pairwise, spread(weight_vertical, b),
                   spread(weight_horizontal, b))
      for b in range(batch)])
  best = energies.argmin(axis=1)
  return every[best], energies[np.arange(batch), best]


def numpy_row_dp(unary, pairwise, weight_vertical, weight_horizontal):
  """Minimum energies (B,) by a plain row-state DP with full L^n × L^n transitions."""
  unary = np.asarray(unary, np.float64)
  pairwise = np.asarray(pairwise, np.float64)
  batch, n, _, num_labels = unary.shape
  states = np.array(list(itertools.product(range(num_labels), repeat=n)))  # (S, n)
  columns = np.arange(n)

  def row_cost(r):
    cost = unary[:, r][:, columns, states].sum(-1)                        # (B, S)
    links = pairwise[states[:, :-1], states[:, 1:]]                       # (S, n-1)
    return cost + (weight_horizontal[:, r, None, :] * links[None]).sum(-1)

  message = row_cost(0)
  for r in range(1, n):
    between = pairwise[states[:, None, :], states[None, :, :]]            # (S, S, n)
    transition = (weight_vertical[:, r - 1, None, None, :] * between[None]).sum(-1)
    message = (message[:, :, None] + transition).min(axis=1) + row_cost(r)
  return message.min(axis=1)


def pava_decreasing(values):
  """Projection of a vector onto u_1 ≥ ... ≥ u_K by pool-adjacent-violators."""
  blocks = []  # [sum, count]
  for value in values:
    blocks.append([value, 1])
    while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
      total, count = blocks.pop()
      blocks[-1][0] += total
      blocks[-1][1] += count
  return np.concatenate([np.full(count, total / count) for total, count in blocks])


def random_problem(rng, batch, n, num_labels, table="any", weights="any"):
  unary = rng.normal(size=(batch, n, n, num_labels))
  if table == "any":
    pairwise = rng.normal(size=(num_labels, num_labels))
  else:  # convex function of l_p - l_q plus a random Monge part: submodular
    index = np.arange(num_labels, dtype=np.float64)
    diff = index[:, None] - index[None, :]
    pairwise = rng.uniform(0.1, 1.0) * diff ** 2 + rng.uniform(0, 1) * np.abs(diff)
    pairwise = pairwise + rng.normal(size=num_labels)[:, None] + rng.normal(size=num_labels)[None]
  low = -1.0 if weights == "any" else 0.0
  weight_vertical = rng.uniform(low, 1.0, size=(batch, n - 1, n))
  weight_horizontal = rng.uniform(low, 1.0, size=(batch, n, n - 1))
  return unary, pairwise, weight_vertical, weight_horizontal


def as_f32(*arrays):
  return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


@functools.lru_cache(maxsize=None)
def jitted(**options):
  return jax.jit(functools.partial(grid_mrf.solve_grid_mrf, **options))


def solve(problem, **options):
  """Jitted solve of a NumPy problem (the table traced: no static route check)."""
  return np.asarray(jitted(**options)(*as_f32(*problem)))


# ----------------------------------------------------------------------------
# Real Puzzle Mix cases.


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
  """uint8 (300, 32, 32, 3) RGB CIFAR-10 test images and their int labels."""
  return load_test_images(tmp_path_factory.mktemp("cifar10_mrf"), NUM_IMAGES // 10)


@pytest.fixture(scope="module")
def saliency_data(cifar):
  """(pixels float64 (300, 32, 32, 3) in [0, 1], saliency float64 (300, 32, 32))."""
  images, labels = cifar
  pixels = images.astype(np.float32) / 255.0
  normalised = jnp.asarray((pixels - CIFAR_MEAN) / CIFAR_STD)
  model = models.create_model("preactresnet8", num_classes=10, width=8)
  # An rbg key: the same model.init, ~6x faster to compile than threefry.
  variables = jax.jit(lambda key, x: model.init(key, x, train=False))(
      jax.random.key(0, impl="rbg"), normalised[:2])

  def loss(x):
    logits = model.apply(variables, x, train=False)   # eval mode: running stats
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = np.asarray(jax.jit(jax.grad(loss))(normalised), np.float64)
  saliency = np.sqrt(np.mean(grads ** 2, axis=-1))
  assert np.all(saliency.sum(axis=(1, 2)) > 0)
  return pixels.astype(np.float64), saliency


def puzzle_cases(saliency_data, n, batches, seed):
  """Float64 §3.3 terms of batches×128 random pairs (λ ~ U(0,1) per case)."""
  pixels, saliency = saliency_data
  rng = np.random.default_rng(seed)
  parts = []
  for _ in range(batches):
    index = rng.integers(0, len(pixels), BATCH)
    perm = rng.permutation(BATCH)
    lam = rng.uniform(0.0, 1.0, BATCH)
    parts.append(ref.puzzle_energy_terms(saliency[index], pixels[index], perm, lam, n))
  return {key: (np.concatenate([p[key] for p in parts]) if key != "pairwise"
                else parts[0][key]) for key in parts[0]}


def problem_of(terms):
  return (terms["unary"], terms["pairwise"], terms["weight_vertical"],
          terms["weight_horizontal"])


@functools.lru_cache(maxsize=None)
def jitted_solver(**options):
  # The Puzzle Mix table is a constant here, as in the training path.
  table = jnp.asarray(PUZZLE_TABLE, jnp.float32)
  return jax.jit(lambda u, wv, wh: grid_mrf.solve_grid_mrf(u, table, wv, wh, **options))


def solve_puzzle(terms, **options):
  solver = jitted_solver(**options)
  unary, _, vertical, horizontal = problem_of(terms)
  out = []
  for start in range(0, len(unary), BATCH):
    part = slice(start, start + BATCH)
    out.append(np.asarray(solver(*as_f32(unary[part], vertical[part], horizontal[part]))))
  return np.concatenate(out)


# ----------------------------------------------------------------------------
# Energy.


def test_energy_matches_numpy():
  rng = np.random.default_rng(0)
  energy = jax.jit(grid_mrf.grid_mrf_energy)
  for n, num_labels in ((1, 2), (5, 4), (16, 3)):
    problem = random_problem(rng, 6, n, num_labels)
    labels = rng.integers(0, num_labels, (6, n, n))
    got = np.asarray(energy(labels, *as_f32(*problem)))
    want = numpy_energy(labels, *as_f32(*problem))  # same float32 inputs
    assert got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_energy_rejects_bad_labels():
  problem = as_f32(*random_problem(np.random.default_rng(0), 2, 3, 3))
  with pytest.raises(ValueError, match="labels.*shape"):
    grid_mrf.grid_mrf_energy(np.zeros((2, 3, 4), np.int32), *problem)
  with pytest.raises(ValueError, match="labels.*integers"):
    grid_mrf.grid_mrf_energy(np.zeros((2, 3, 3), np.float32), *problem)
  with pytest.raises(ValueError, match=r"labels.*\[0, L=3\)"):
    grid_mrf.grid_mrf_energy(np.full((2, 3, 3), 3, np.int32), *problem)


# ----------------------------------------------------------------------------
# Exact route.


@pytest.mark.parametrize("n,num_labels", [(1, 5), (2, 4), (3, 2), (3, 3)])
def test_exact_equals_brute_force(n, num_labels):
  # Arbitrary (asymmetric) tables and weights of both signs: the DP is exact
  # for any energy; random floats make the minimiser unique.
  rng = np.random.default_rng(10 * n + num_labels)
  problem = random_problem(rng, 8, n, num_labels)
  labels = solve(problem, method="exact")
  want_labels, want_energy = brute_force(*as_f32(*problem))
  np.testing.assert_array_equal(labels, want_labels)
  np.testing.assert_allclose(numpy_energy(labels, *problem), want_energy, atol=1e-5)


def test_exact_equals_numpy_dp_on_larger_grids():
  rng = np.random.default_rng(1)
  for n, num_labels in ((4, 3), (3, 5)):
    problem = random_problem(rng, 16, n, num_labels)
    energy = numpy_energy(solve(problem, method="exact"), *problem)
    np.testing.assert_allclose(energy, numpy_row_dp(*problem), rtol=1e-5, atol=1e-5)


def test_exact_is_optimal_on_puzzle_cases(saliency_data):
  # n = 2 against brute force (all 81 labellings), n = 4 against the NumPy DP.
  for n in (2, 4):
    terms = puzzle_cases(saliency_data, n, 2, seed=100 + n)
    labels = solve_puzzle(terms)                     # "auto" = "exact" here
    assert grid_mrf.choose_method(n, 3, PUZZLE_TABLE) == "exact"
    energy = numpy_energy(labels, *problem_of(terms))
    if n == 2:
      want_labels, best = brute_force(*problem_of(terms))
      np.testing.assert_array_equal(labels, want_labels)
    else:
      best = numpy_row_dp(*problem_of(terms))
    assert np.all(energy <= best + 1e-6), np.max(energy - best)


def test_exact_refuses_too_many_states():
  problem = as_f32(*random_problem(np.random.default_rng(0), 1, 9, 3))
  with pytest.raises(ValueError, match="MAX_EXACT_STATES"):
    grid_mrf.solve_grid_mrf(*problem, method="exact")


# ----------------------------------------------------------------------------
# Lifted route.


@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_project_decreasing_equals_pava(depth):
  rng = np.random.default_rng(depth)
  values = rng.normal(size=(depth, 50)) * rng.integers(1, 4, size=(1, 50))
  project = grid_mrf._project_decreasing  # pylint: disable=protected-access
  got = np.asarray(project(jnp.asarray(values, jnp.float32)))
  want = np.stack([pava_decreasing(values[:, j]) for j in range(50)], axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_submodularity_check():
  assert grid_mrf.is_submodular(PUZZLE_TABLE)
  index = np.arange(5.0)
  assert grid_mrf.is_submodular(np.abs(index[:, None] - index[None]))
  assert grid_mrf.is_submodular(np.minimum((index[:, None] - index[None]) ** 2, 100))
  assert not grid_mrf.is_submodular(np.minimum(np.abs(index[:, None] - index[None]), 1))
  assert not grid_mrf.is_submodular(-PUZZLE_TABLE)


@pytest.mark.parametrize("num_labels", [2, 4])   # L = 3: the gco contract
def test_lifted_reaches_the_optimum_on_submodular_problems(num_labels):
  # No polish: the thresholded proximal solution alone must be optimal.
  rng = np.random.default_rng(num_labels)
  n = 4
  problem = random_problem(rng, 32, n, num_labels, table="submodular", weights="positive")
  assert grid_mrf.is_submodular(problem[1])
  labels = solve(problem, method="lifted", iterations=1000, polish_sweeps=0)
  energy = numpy_energy(labels, *as_f32(*problem))
  best = numpy_row_dp(*as_f32(*problem))
  assert np.all(energy <= best + 1e-4), np.max(energy - best)


def test_lifted_rejects_what_it_cannot_solve():
  rng = np.random.default_rng(0)
  unary, _, vertical, horizontal = as_f32(*random_problem(rng, 2, 4, 3, weights="positive"))
  with pytest.raises(ValueError, match="submodular"):
    grid_mrf.solve_grid_mrf(unary, -jnp.asarray(PUZZLE_TABLE, jnp.float32), vertical,
                            horizontal, method="lifted")
  with pytest.raises(ValueError, match="weight_vertical.*≥ 0"):
    grid_mrf.solve_grid_mrf(unary, jnp.asarray(PUZZLE_TABLE, jnp.float32), -vertical,
                            horizontal, method="lifted")


# ----------------------------------------------------------------------------
# Strips.


def test_strip_sweeps_never_increase_the_energy():
  def one_sweep(labels, unary, pairwise, weight_vertical, weight_horizontal):
    # Batch-last internals, as solve_grid_mrf calls them.
    moved = [jnp.moveaxis(x, 0, -1) for x in (labels, unary, weight_vertical,
                                              weight_horizontal)]
    sweeps = grid_mrf._strip_sweeps  # pylint: disable=protected-access
    out = sweeps(moved[0], moved[1], pairwise, moved[2], moved[3], 1)
    return jnp.moveaxis(out, -1, 0)

  one_sweep = jax.jit(one_sweep)
  rng = np.random.default_rng(3)
  for num_labels, table in ((3, "any"), (5, "submodular")):
    problem = as_f32(*random_problem(rng, 16, 9, num_labels, table=table))
    labels = jnp.argmin(problem[0], axis=-1).astype(jnp.int32)
    energies = [numpy_energy(labels, *problem)]
    for _ in range(3):
      labels = one_sweep(labels, *problem)
      energies.append(numpy_energy(labels, *problem))
    for before, after in zip(energies, energies[1:]):
      assert np.all(after <= before + 1e-5)
    assert np.mean(energies[-1] < energies[0] - 1e-6) > 0.5


def test_strips_cover_a_small_grid_exactly():
  # L = 3: strips are 4 wide, so on a 4×4 grid one strip is the whole grid.
  assert grid_mrf.strip_width(3, 4) == 4 and grid_mrf.strip_width(3, 16) == 4
  assert grid_mrf.strip_width(23, 4) == 1 and grid_mrf.strip_width(2, 16) == 6
  problem = random_problem(np.random.default_rng(4), 16, 4, 3)
  energy = numpy_energy(solve(problem, method="strips", polish_sweeps=1), *problem)
  np.testing.assert_allclose(energy, numpy_row_dp(*problem), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------
# The gco contract on real Puzzle Mix energies.


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_at_least_as_good_as_gco_swap(saliency_data, n):
  pytest.importorskip("gco")
  terms = puzzle_cases(saliency_data, n, CONTRACT_BATCHES, seed=n)
  discrete = ref.release_discretise(terms, n)
  keep = ~ref.gco_overflows(discrete)   # §3.4: the release's int32 overflow
  assert keep.sum() >= CONTRACT_CASES
  gco_labels = ref.gco_solve({k: (v[keep] if k != "pairwise" else v)
                              for k, v in discrete.items()})
  labels = solve_puzzle(terms)[keep]
  kept = {k: (v[keep] if k != "pairwise" else v) for k, v in terms.items()}
  ours = numpy_energy(labels, *problem_of(kept))
  theirs = numpy_energy(gco_labels, *problem_of(kept))
  relative = (ours - theirs) / np.abs(theirs)
  share = np.mean(ours <= theirs + 1e-6)
  assert share >= 0.99, (share, relative.max())
  assert relative.max() <= 0.005, relative.max()
  if n <= 4:  # exact route: never worse, even by rounding
    assert np.all(ours <= theirs + 1e-6)


# ----------------------------------------------------------------------------
# Compilation, determinism, routes.


def test_jit_equals_eager(saliency_data):
  for n, options in ((4, {}), (8, dict(method="lifted", iterations=40, polish_sweeps=0))):
    terms = puzzle_cases(saliency_data, n, 1, seed=7)
    terms = {k: (v[:16] if k != "pairwise" else v) for k, v in terms.items()}
    problem = as_f32(*problem_of(terms))
    eager = np.asarray(grid_mrf.solve_grid_mrf(*problem, **options))
    jitted = np.asarray(jax.jit(functools.partial(grid_mrf.solve_grid_mrf, **options))(*problem))
    np.testing.assert_array_equal(eager, jitted)
    assert jitted.dtype == np.int32 and jitted.shape == (16, n, n)


def test_vmap_matches_the_batched_call():
  rng = np.random.default_rng(5)
  for n, options in ((3, dict(method="exact")),
                     (6, dict(method="lifted", iterations=50, polish_sweeps=0))):
    problem = as_f32(*random_problem(rng, 12, n, 3, table="submodular", weights="positive"))
    solver = functools.partial(grid_mrf.solve_grid_mrf, **options)
    batched = np.asarray(jax.jit(solver)(*problem))
    split = [p.reshape((3, 4) + p.shape[1:]) for p in problem[:1] + problem[2:]]
    mapped = jax.jit(jax.vmap(lambda u, wv, wh: solver(u, problem[1], wv, wh)))(*split)
    np.testing.assert_array_equal(np.asarray(mapped).reshape(batched.shape), batched)


def test_auto_route_choice():
  table = PUZZLE_TABLE
  positive = np.ones((1, 7, 8))
  assert grid_mrf.choose_method(4, 3, table) == "exact"
  assert grid_mrf.choose_method(6, 3, table) == "exact"
  assert grid_mrf.choose_method(8, 3, table, positive, positive.transpose(0, 2, 1)) == "lifted"
  assert grid_mrf.choose_method(8, 3, table) == "run time"       # weights unknown
  assert grid_mrf.choose_method(8, 3, -table) == "strips"
  assert grid_mrf.choose_method(8, 3, table, -positive, positive.transpose(0, 2, 1)) == "strips"
  assert grid_mrf.choose_method(4, 23, 1 - np.eye(23)) == "strips"   # Potts: not submodular


def test_auto_decides_at_run_time_and_is_deterministic(saliency_data):
  # Traced weights: lax.cond picks "lifted" for Puzzle Mix energies and
  # "strips" when a weight is negative, the same labels as asking for them.
  # (Same shapes as the gco contract at n = 8: its compiled solver is reused.)
  terms = puzzle_cases(saliency_data, 8, 1, seed=9)
  unary, _, vertical, horizontal = as_f32(*problem_of(terms))
  auto = jitted_solver()
  first = np.asarray(auto(unary, vertical, horizontal))
  np.testing.assert_array_equal(first, np.asarray(auto(unary, vertical, horizontal)))
  lifted = jitted_solver(method="lifted")(unary, vertical, horizontal)
  np.testing.assert_array_equal(first, np.asarray(lifted))
  assert np.asarray(grid_mrf._lifted_applies(  # pylint: disable=protected-access
      jnp.asarray(PUZZLE_TABLE, jnp.float32), vertical, horizontal))
  flipped = vertical.at[0, 0, 0].set(-1.0)
  strips = jitted_solver(method="strips")(unary, flipped, horizontal)
  np.testing.assert_array_equal(np.asarray(auto(unary, flipped, horizontal)),
                                np.asarray(strips))


# ----------------------------------------------------------------------------
# Bad input.


GOOD = (np.zeros((2, 3, 3, 3), np.float32), np.zeros((3, 3), np.float32),
        np.zeros((2, 2, 3), np.float32), np.zeros((2, 3, 2), np.float32))


@pytest.mark.parametrize("index,value,message", [
    (0, np.zeros((3, 3, 3), np.float32), r"`unary` must have rank 4"),
    (0, np.zeros((2, 3, 4, 3), np.float32), r"square grid"),
    (0, np.zeros((2, 3, 3, 1), np.float32), r"L ≥ 2"),
    (0, np.zeros((0, 3, 3, 3), np.float32), r"B ≥ 1"),
    (0, np.zeros((2, 3, 3, 3), np.int32), r"`unary` must be a floating"),
    (1, np.zeros((3, 2), np.float32), r"`pairwise` must be a square \(L, L\)"),
    (1, np.zeros((4, 4), np.float32), r"`pairwise` must be a square \(L, L\)"),
    (2, np.zeros((2, 3, 3), np.float32), r"`weight_vertical` must have shape \(2, 2, 3\)"),
    (3, np.zeros((2, 2, 3), np.float32), r"`weight_horizontal` must have shape \(2, 3, 2\)"),
])
def test_bad_input(index, value, message):
  args = list(GOOD)
  args[index] = value
  with pytest.raises(ValueError, match=message):
    grid_mrf.solve_grid_mrf(*args)
  with pytest.raises(ValueError, match=message):
    grid_mrf.grid_mrf_energy(np.zeros((2, 3, 3), np.int32), *args)


def test_bad_options():
  with pytest.raises(ValueError, match="`method` must be one of"):
    grid_mrf.solve_grid_mrf(*GOOD, method="swap")
  with pytest.raises(ValueError, match="`iterations` must be a non-negative int"):
    grid_mrf.solve_grid_mrf(*GOOD, method="lifted", iterations=-1)
  with pytest.raises(TypeError, match="`iterations` is traced"):
    jax.jit(lambda it: grid_mrf.solve_grid_mrf(*GOOD, iterations=it))(3)


# ----------------------------------------------------------------------------
# The NumPy reference itself (BASELINES §3.3).


def test_reference_binary_labellings_pay_data_smoothness_directly():
  # §3.3: for l ∈ {0, 2} (whole blocks of x_i or x_j), E equals
  # Σ_p saliency lost + prior + Σ_edges (θ(source_p, source_q) + β'·[l_p ≠ l_q])
  # up to a constant. θ is recomputed here from the pixels, block by block.
  rng = np.random.default_rng(0)
  n, batch, beta, gamma = 4, 3, 1.2, 0.5
  saliency = rng.uniform(0, 1, (batch, 32, 32))
  pixels = rng.uniform(0, 1, (batch, 32, 32, 3))
  perm = np.array([1, 2, 0])
  terms = ref.puzzle_energy_terms(saliency, pixels, perm, 0.3, n)
  block = 32 // n
  pooled = pixels.reshape(batch, 8, 4, 8, 4, 3).mean(axis=(2, 4))  # neigh_size 4
  s_i = saliency.reshape(batch, n, block, n, block).mean(axis=(2, 4))
  s_i = s_i / s_i.sum(axis=(1, 2), keepdims=True)
  beta_block = beta / (16 * n)

  def theta(b, src_p, src_q, p, q):
    a_img = pooled[b] if src_p == 0 else pooled[perm[b]]
    b_img = pooled[b] if src_q == 0 else pooled[perm[b]]
    k = block // 4
    if p[1] == q[1]:  # vertical: last pooled row of p vs first of q
      cols = slice(p[1] * k, (p[1] + 1) * k)
      diff = np.abs(a_img[(p[0] + 1) * k - 1, cols] - b_img[q[0] * k, cols])
    else:
      rows = slice(p[0] * k, (p[0] + 1) * k)
      diff = np.abs(a_img[rows, (p[1] + 1) * k - 1] - b_img[rows, q[1] * k])
    return beta_block * gamma * diff.mean()

  prior = ref.label_prior(np.full(batch, 0.3), n, 0.2)
  edges = ([((r, c), (r + 1, c)) for r in range(n - 1) for c in range(n)]
           + [((r, c), (r, c + 1)) for r in range(n) for c in range(n - 1)])
  for b in range(batch):
    offsets = []
    for _ in range(6):
      source = rng.integers(0, 2, (n, n))        # 0: x_i, 1: x_j
      labels = 2 * source
      direct = sum((s_i[perm[b]][p] if source[p] == 0 else s_i[b][p]) + prior[b, labels[p]]
                    for p in itertools.product(range(n), repeat=2))
      direct += sum(theta(b, source[p], source[q], p, q) + beta_block * (source[p] != source[q])
                    for p, q in edges)
      energy = numpy_energy(labels[None], *problem_of(
          {k: (v[b:b + 1] if k != "pairwise" else v) for k, v in terms.items()}))[0]
      offsets.append(energy - direct)
    np.testing.assert_allclose(offsets, offsets[0], atol=1e-12)


def test_reference_edge_weights_and_discretisation():
  rng = np.random.default_rng(1)
  for n in (2, 4, 8, 16):
    terms = ref.puzzle_energy_terms(rng.uniform(0, 1, (4, 32, 32)),
                                    rng.uniform(0, 1, (4, 32, 32, 3)),
                                    rng.permutation(4), rng.uniform(0, 1, 4), n)
    beta_block = 1.2 / (16 * n)
    for key in ("weight_vertical", "weight_horizontal"):
      assert np.all(terms[key] >= beta_block * 0.5 - 1e-12)
      assert np.all(terms[key] <= beta_block * 1.5 + 1e-12)
    discrete = ref.release_discretise(terms, n)
    assert discrete["unary"].dtype == np.int32 and discrete["pairwise"].dtype == np.float32
    np.testing.assert_array_equal(discrete["unary"],
                                  np.trunc(1000 * n * n * terms["unary"]).astype(np.int32))
