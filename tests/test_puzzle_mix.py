"""Puzzle Mix: energy construction, the whole mix against a NumPy pipeline, properties."""
import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax import augment
import puzzle_reference
import transport_reference

pm = importlib.import_module("sage_jax.augment.puzzle_mix")

MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
PUZZLE_JIT = jax.jit(augment.puzzle_mix, static_argnames=augment.PUZZLE_STATIC_ARGNAMES)


def make_batch(batch=8, size=32, seed=0):
  """Smooth-ish images (so the smoothness term matters) and peaked saliency."""
  rng = np.random.default_rng(seed)
  coarse = rng.random((batch, size // 4, size // 4, 3)).astype(np.float32)
  pixels = np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)
  pixels = np.clip(pixels + 0.05 * rng.standard_normal(pixels.shape), 0, 1)
  images = ((pixels - MEAN) / STD).astype(np.float32)
  saliency = (rng.random((batch, size, size)) ** 6).astype(np.float32)
  labels = rng.integers(0, 10, batch).astype(np.int32)
  perm = rng.permutation(batch).astype(np.int32)
  return images, pixels.astype(np.float32), saliency, labels, perm


@pytest.mark.parametrize("block_num", [2, 4, 8, 16])
def test_block_energy_matches_the_numpy_reference(block_num):
  _, pixels, saliency, _, perm = make_batch()
  lam = np.linspace(0.05, 0.95, 8).astype(np.float32)
  got = pm.block_energy(jnp.asarray(saliency), jnp.asarray(pixels), jnp.asarray(perm),
                        jnp.asarray(lam), block_num=block_num)
  want = puzzle_reference.puzzle_energy_terms(saliency, pixels, perm, lam, block_num)
  for field in ("unary", "weight_vertical", "weight_horizontal", "pairwise"):
    np.testing.assert_allclose(np.asarray(getattr(got, field)), want[field],
                               rtol=2e-6, atol=1e-8, err_msg=field)


def unary_argmin(unary, *args, **kwargs):
  """A stand-in solver (each block's cheapest label) for the approximate routes."""
  del args, kwargs
  return jnp.argmin(jnp.asarray(unary), axis=-1).astype(jnp.int32)


def reference_mix(images, saliency, perm, lam, block_num, labels, solver):
  """Puzzle Mix of §3.3-3.5 in NumPy; the mask is `solver` on the reference
  energy (the solver itself is checked against brute force and gco in
  test_grid_mrf.py)."""
  pixels = images * STD + MEAN
  terms = puzzle_reference.puzzle_energy_terms(saliency, pixels, perm, lam, block_num)
  block_labels = np.asarray(solver(
      jnp.asarray(terms["unary"], jnp.float32), jnp.asarray(terms["pairwise"], jnp.float32),
      jnp.asarray(terms["weight_vertical"], jnp.float32),
      jnp.asarray(terms["weight_horizontal"], jnp.float32)))
  mask = 1.0 - block_labels / 2.0
  ratio = mask.mean(axis=(1, 2))
  size = images.shape[1]
  block_size = size // block_num
  cell = min(4, block_size)
  if cell < block_size:
    grid = size // cell
    mask = np.repeat(np.repeat(mask, grid // block_num, 1), grid // block_num, 2)
  else:
    grid = block_num
    cell = block_size
  sal = puzzle_reference.normalised_block_saliency(saliency, cell).astype(np.float32)
  own_plan = transport_reference.transport_plans(mask.astype(np.float32), sal)
  partner_plan = transport_reference.transport_plans((1 - mask).astype(np.float32),
                                                     sal[perm])
  own = np.stack([transport_reference.transport_image(x, p, grid)
                  for x, p in zip(images, own_plan)])
  partner = np.stack([transport_reference.transport_image(x, p, grid)
                      for x, p in zip(images[perm], partner_plan)])
  pixel_mask = np.repeat(np.repeat(mask, size // grid, 1), size // grid, 2)[..., None]
  mixed = pixel_mask * own + (1 - pixel_mask) * partner
  onehot = np.eye(10, dtype=np.float32)[labels]
  targets = ratio[:, None] * onehot + (1 - ratio[:, None]) * onehot[perm]
  return mixed, targets, ratio


@pytest.mark.parametrize("block_num", [2, 4, 8, 16])
def test_puzzle_mix_matches_the_numpy_pipeline(block_num, monkeypatch):
  # n = 2, 4: the exact solver on both sides (one optimum, ties aside). n = 8,
  # 16: the solver's approximate route can land on different near-optimal
  # labelings for float32-close energies, so both sides take each block's
  # cheapest label instead; this test pins everything around the solver.
  solver = augment.solve_grid_mrf
  if block_num >= 8:
    solver = unary_argmin
    monkeypatch.setattr(pm.grid_mrf, "solve_grid_mrf", unary_argmin)
  images, _, saliency, labels, perm = make_batch(seed=block_num)
  lam = 0.37
  # A fresh function, so that no compiled program of another test is reused.
  mix = jax.jit(lambda *a, **k: augment.puzzle_mix(*a, **k),
                static_argnames=augment.PUZZLE_STATIC_ARGNAMES)
  out = mix(jax.random.key(0), images, labels, saliency, lam=lam, perm=perm,
            block_num=block_num, mean=MEAN, std=STD, num_classes=10)
  mixed, targets, ratio = reference_mix(images, saliency, perm, lam, block_num, labels,
                                        solver)
  np.testing.assert_allclose(np.asarray(out.lam), ratio, rtol=0, atol=1e-7)
  np.testing.assert_allclose(np.asarray(out.labels), targets, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out.images), mixed, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.perm), perm)
  # Three labels: ρ is a multiple of 1/(2n²), and some blocks are shared.
  steps = np.asarray(out.lam) * 2 * block_num ** 2
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)


def test_labels_weights_determinism_and_the_drawn_block_count():
  # One compiled program with the four branches, shared by the checks below.
  images, _, saliency, labels, _ = make_batch(batch=8, size=16, seed=3)
  kwargs = dict(num_classes=10, mean=MEAN, std=STD)
  out = PUZZLE_JIT(jax.random.key(5), images, labels, saliency, **kwargs)
  again = PUZZLE_JIT(jax.random.key(5), images, labels, saliency, **kwargs)
  jax.tree.map(np.testing.assert_array_equal, out, again)
  np.testing.assert_allclose(np.asarray(out.labels).sum(axis=1), 1.0, atol=1e-6)
  assert np.all((np.asarray(out.lam) >= 0) & (np.asarray(out.lam) <= 1))
  onehot = np.eye(10)[labels]
  want = (np.asarray(out.lam)[:, None] * onehot
          + (1 - np.asarray(out.lam)[:, None]) * onehot[np.asarray(out.perm)])
  np.testing.assert_allclose(np.asarray(out.labels), want, atol=1e-6)
  assert sorted(np.asarray(out.perm).tolist()) == list(range(8))
  np.testing.assert_array_equal(np.asarray(out.offset), 0)

  counts = {}
  for seed in range(400):
    n = int(augment.drawn_block_num(jax.random.key(seed)))
    counts[n] = counts.get(n, 0) + 1
  assert set(counts) == {2, 4, 8, 16}
  assert all(70 <= c <= 130 for c in counts.values()), counts
  # `drawn_block_num` names the branch that ran.
  for seed in (0, 1):
    key = jax.random.key(seed)
    drawn = PUZZLE_JIT(key, images, labels, saliency, **kwargs)
    fixed = PUZZLE_JIT(key, images, labels, saliency, block_num=int(
        augment.drawn_block_num(key)), **kwargs)
    jax.tree.map(np.testing.assert_array_equal, drawn, fixed)


def test_jit_equals_eager():
  images, _, saliency, labels, perm = make_batch(batch=4, size=8, seed=6)
  kwargs = dict(lam=0.6, perm=perm, block_num=2, num_classes=10, mean=MEAN, std=STD)
  eager = augment.puzzle_mix(jax.random.key(1), images, labels, saliency, **kwargs)
  jitted = PUZZLE_JIT(jax.random.key(1), images, labels, saliency, **kwargs)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), eager, jitted)


@pytest.mark.parametrize("lam,keeps_own", [(1.0, True), (0.0, False)])
def test_a_certain_prior_keeps_one_image_unmoved(lam, keeps_own):
  # With λ ∈ {0, 1} and a large prior weight every block takes one image;
  # its mask is then all 1 (or 0) and transport leaves it where it is. The
  # two transport grids: the re-pooled one (n = 4) and the block grid (16).
  images, _, saliency, labels, perm = make_batch(batch=8, size=16, seed=7)
  for block_num in (4, 16):
    out = PUZZLE_JIT(jax.random.key(0), images, labels, saliency, lam=lam, perm=perm,
                     eta=1e4, block_num=block_num, num_classes=10, mean=MEAN, std=STD)
    want = images if keeps_own else images[perm]
    np.testing.assert_array_equal(np.asarray(out.images), want)
    np.testing.assert_array_equal(np.asarray(out.lam), lam)


def test_transport_off_mixes_the_images_in_place():
  images, _, saliency, labels, perm = make_batch(batch=8, seed=8)
  out = PUZZLE_JIT(jax.random.key(0), images, labels, saliency, lam=0.5, perm=perm,
                   block_num=4, transport=False, num_classes=10, mean=MEAN, std=STD)
  mixed = np.asarray(out.images)
  # Every 8×8 block is image i, its partner, or their average.
  for i, (r, c) in itertools.product(range(8), itertools.product(range(4), repeat=2)):
    block = (slice(8 * r, 8 * r + 8), slice(8 * c, 8 * c + 8))
    candidates = [images[i][block], images[perm[i]][block],
                  0.5 * (images[i][block] + images[perm[i]][block])]
    assert any(np.allclose(mixed[i][block], cand, atol=1e-6) for cand in candidates)


def test_saliency_is_rms_over_channels():
  grads = np.random.default_rng(0).standard_normal((2, 4, 5, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(augment.puzzle_saliency(grads)),
                             np.sqrt((grads ** 2).mean(-1)), rtol=1e-6)


def test_zero_saliency_does_not_give_nan():
  # (The shapes and options of the test above: its compiled program.)
  images, _, _, labels, perm = make_batch(batch=8, size=16, seed=9)
  out = PUZZLE_JIT(jax.random.key(0), images, labels, np.zeros((8, 16, 16), np.float32),
                   lam=0.5, perm=perm, eta=0.2, block_num=4, num_classes=10, mean=MEAN,
                   std=STD)
  assert np.all(np.isfinite(np.asarray(out.images)))
  assert np.all(np.isfinite(np.asarray(out.labels)))


@pytest.mark.parametrize("kwargs,message", [
    (dict(block_num=3), "divide the image size"),
    (dict(block_nums=(2, 32)), "divide the image size"),
    (dict(block_nums=()), "at least one"),
    (dict(neigh_size=0), "positive int"),
    (dict(transport_eps=0.0), "transport_eps"),
    (dict(beta=-1.0), "beta"),
    (dict(mean=np.zeros(2)), "mean"),
    (dict(lam=1.5), "lam"),
])
def test_bad_input(kwargs, message):
  images, _, saliency, labels, _ = make_batch(batch=4, size=16)
  with pytest.raises(ValueError, match=message):
    augment.puzzle_mix(jax.random.key(0), images, labels, saliency, num_classes=10,
                       **kwargs)


def test_bad_shapes():
  images, _, saliency, labels, _ = make_batch(batch=4, size=16)
  with pytest.raises(ValueError, match="square"):
    augment.puzzle_mix(jax.random.key(0), images[:, :8], labels, saliency[:, :8],
                       num_classes=10)
  with pytest.raises(ValueError, match="saliency"):
    augment.puzzle_mix(jax.random.key(0), images, labels, saliency[:, :8],
                       num_classes=10)
  with pytest.raises(ValueError, match="non-negative"):
    augment.puzzle_mix(jax.random.key(0), images, labels, -saliency, num_classes=10)
  with pytest.raises(TypeError, match="block_num"):
    jax.jit(lambda n: augment.puzzle_mix(jax.random.key(0), images, labels, saliency,
                                         num_classes=10, block_num=n))(4)


# --- The program: main.py trains and evaluates it; other architectures ---------------


def test_main_trains_and_evaluates_puzzle_mix_on_eight_devices(tmp_path):
  from test_train import main_train_then_eval
  # 16×16 images: all four block counts fit; 2 images per device.
  for row in main_train_then_eval(tmp_path, ["--config.method=puzzle_mix"], 16):
    assert np.isfinite(row["loss"]) and 0 <= row["mix_label_weight"] <= 1
    assert 2 <= row["block_num"] <= 16


@pytest.mark.parametrize("name", ["wrn16_8", "resnext29_4_24"])
def test_puzzle_mix_step_on_the_other_architectures(name):
  from test_train import one_method_step, tiny_config
  config = tiny_config(method="puzzle_mix", **{"puzzle_mix.block_nums": (4,)})
  images, _, _, labels, _ = make_batch(batch=4, size=8, seed=11)
  out = one_method_step(config, name, images, labels, MEAN, STD)
  assert float(out.metrics["block_num"]) == 4.0
