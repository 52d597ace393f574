"""Tests of sage_jax.augment.transport (Puzzle Mix's transport, BASELINES §3.5).

The oracle is `transport_reference`, a plain NumPy port of the released
algorithm written from the spec (one image at a time, the release's rounds
literally). Plans must be equal exactly, on random and structured inputs
(ties, empty and full masks, one-hot and flat saliency, inputs that force
the dense path) and on CIFAR-10 images with a normalised gradient saliency.
"""
import importlib
import io
import os
import re
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

import transport_reference as ref

tr = importlib.import_module("sage_jax.augment.transport")

ARCHIVE = os.environ.get(
    "SAGE_CIFAR10_ARCHIVE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "shared", "data", "cifar10-jpeg.tar.gz"))
MEMBER = re.compile(r"cifar10-jpeg/test/[a-z]+/000\d\.jpg$")

SOURCES_JIT = jax.jit(tr.transport_sources, static_argnames=tr.TRANSPORT_STATIC_ARGNAMES)
PLAN_JIT = jax.jit(tr.mask_transport, static_argnames=tr.TRANSPORT_STATIC_ARGNAMES)
MOVE_JIT = jax.jit(tr.move_patches, static_argnames=tr.MOVE_STATIC_ARGNAMES)
IMAGE_JIT = jax.jit(tr.transport_image, static_argnames=tr.MOVE_STATIC_ARGNAMES)


@jax.jit
def _fast_flags(mask, saliency):
  """bool (B,): whether the fast path hands image i over to the dense path."""
  batch, grid, _ = mask.shape
  kept = jnp.asarray(mask).reshape(batch, 1, -1) > 0
  sal = jnp.asarray(saliency, jnp.float32).reshape(batch, 1, -1)
  scaled = tr._scaled_cost(0.8, grid)
  return jax.vmap(lambda k, s: tr._fast_sources(k, s, scaled, grid, grid)[1])(kept, sal)


def ref_sources(plans):
  """(B, N, N) 0/1 plans → (B, N) source per cell, −1 where none."""
  return np.where(plans.sum(axis=1) > 0, plans.argmax(axis=1), -1)


def make_masks(rng, batch, grid):
  """Masks of every kind the release sees and a few it does not."""
  masks = []
  for index in range(batch):
    kind = index % 7
    if kind == 0:                        # three labels, as Puzzle Mix's masks
      mask = rng.integers(0, 3, (grid, grid)) / 2
    elif kind == 1:                      # one rectangle kept
      mask = np.zeros((grid, grid))
      top, left = rng.integers(0, grid, 2)
      height, width = rng.integers(1, grid + 1, 2)
      mask[top:top + height, left:left + width] = 1.0
    elif kind == 2:                      # random density
      mask = (rng.random((grid, grid)) < rng.random()).astype(float)
    elif kind == 3:                      # nothing kept
      mask = np.zeros((grid, grid))
    elif kind == 4:                      # everything kept
      mask = np.ones((grid, grid))
    elif kind == 5:                      # a few cells kept
      mask = np.zeros((grid, grid))
      mask.flat[rng.integers(0, grid * grid, rng.integers(1, 4))] = 0.5
    else:                                # almost everything kept
      mask = 1.0 - (rng.random((grid, grid)) < 0.15)
    masks.append(mask)
  return np.asarray(masks, np.float32)


def make_saliency(rng, batch, grid):
  """Saliency normalised to sum 1 like the release, with many ties."""
  maps = []
  for index in range(batch):
    kind = (index * 3 + 1) % 8
    if kind == 0:
      sal = rng.random((grid, grid)) ** 4
    elif kind == 1:                      # few levels: ties everywhere
      sal = rng.integers(0, 3, (grid, grid)).astype(float)
    elif kind == 2:                      # all of it on one cell (s = 1)
      sal = np.zeros((grid, grid))
      sal.flat[rng.integers(0, grid * grid)] = 1.0
    elif kind == 3:                      # flat
      sal = np.ones((grid, grid))
    elif kind == 4:                      # peaky
      sal = np.exp(rng.normal(0.0, 2.0, (grid, grid)))
    elif kind == 5:                      # sparse
      sal = np.zeros((grid, grid))
      sal.flat[rng.integers(0, grid * grid, 3)] = rng.random(3)
    elif kind == 6:                      # zero everywhere
      sal = np.zeros((grid, grid))
    else:
      sal = rng.random((grid, grid))
    total = sal.sum()
    maps.append(sal / total if total > 0 else sal)
  return np.asarray(maps, np.float32)


@pytest.fixture(scope="module")
def cifar():
  """float32 (100, 32, 32, 3) CIFAR-10 test images in [0, 1]."""
  if not os.path.exists(ARCHIVE):
    pytest.skip(f"CIFAR-10 archive not found at {ARCHIVE} (set SAGE_CIFAR10_ARCHIVE).")
  images = {}
  with tarfile.open(ARCHIVE) as tar:
    for member in tar:
      if member.isfile() and MEMBER.match(member.name):
        data = tar.extractfile(member).read()
        images[member.name] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  assert len(images) == 100
  return np.stack([images[name] for name in sorted(images)]).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def images32():
  """float32 (BATCH, 32, 32, 3) in [−1, 1]: CIFAR-10 if present, else noise."""
  if os.path.exists(ARCHIVE):
    with tarfile.open(ARCHIVE) as tar:
      names = sorted(m.name for m in tar if m.isfile() and MEMBER.match(m.name))[:BATCH]
      pixels = [np.asarray(Image.open(io.BytesIO(tar.extractfile(name).read())).convert("RGB"))
                for name in names]
    return np.stack(pixels).astype(np.float32) / 127.5 - 1.0
  return np.random.default_rng(0).uniform(-1.0, 1.0, (BATCH, 32, 32, 3)).astype(np.float32)


def gradient_saliency(images, grid):
  """Normalised cell saliency from image gradients (a stand-in for |∂L/∂x|)."""
  grad_rows = np.abs(np.diff(images, axis=1, append=images[:, -1:]))
  grad_cols = np.abs(np.diff(images, axis=2, append=images[:, :, -1:]))
  pixel = np.sqrt((grad_rows ** 2 + grad_cols ** 2).mean(axis=-1))
  batch, height, width = pixel.shape
  cells = pixel.reshape(batch, grid, height // grid, grid, width // grid).mean(axis=(2, 4))
  cells = cells.astype(np.float32)
  return cells / cells.sum(axis=(1, 2), keepdims=True)


def test_cost_matrix_matches_reference():
  for grid in (2, 3, 4, 8, 16):
    got = np.asarray(tr.transport_cost_matrix(grid))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref.cost_matrix(grid))
  corner = np.asarray(tr.transport_cost_matrix(4))
  assert corner[0, 15] == 2.0 and corner[0, 1] == np.float32(1 / 9)


# One batch size everywhere, so that the compiled functions are shared.
BATCH = 21


def _inputs(seed, grid, batch=BATCH):
  rng = np.random.default_rng(seed)
  masks = make_masks(rng, batch, grid)
  # Pair each mask kind with each saliency kind across the batches.
  sal = make_saliency(rng, batch, grid)[rng.permutation(batch)]
  return masks, sal


@pytest.mark.parametrize("grid", [2, 3, 4, 8, 16])
def test_plans_equal_reference(grid):
  masks, sal = _inputs(grid, grid)
  expected = ref.transport_plans(masks, sal)
  # The reference plans hold at most one 1 per column (and per row), so the
  # sources describe them fully.
  assert expected.sum(axis=1).max() <= 1 and expected.sum(axis=2).max() <= 1
  sources = np.asarray(SOURCES_JIT(masks, sal))
  assert sources.dtype == np.int32
  for index in range(BATCH):
    np.testing.assert_array_equal(sources[index], ref_sources(expected[index:index + 1])[0],
                                  err_msg=f"image {index}")
  if grid == 8:
    plans = np.asarray(PLAN_JIT(masks, sal))
    assert plans.dtype == np.float32
    np.testing.assert_array_equal(plans, expected)


@pytest.mark.parametrize("grid,eps,rounds", [(8, 0.05, None), (8, 5.0, 1), (4, 0.8, 40),
                                             (16, 0.3, 20)])
def test_plans_equal_reference_other_eps_and_rounds(grid, eps, rounds):
  masks, sal = _inputs(100 + grid, grid, batch=7)
  got = np.asarray(SOURCES_JIT(masks, sal, eps, num_rounds=rounds))
  np.testing.assert_array_equal(got, ref_sources(ref.transport_plans(masks, sal, eps, rounds)))


def test_plans_equal_reference_on_cifar_saliency(cifar):
  """Puzzle Mix's inputs: 3-label masks, normalised saliency; the fast path runs."""
  rng = np.random.default_rng(7)
  for grid in (8, 16):
    sal = gradient_saliency(cifar[:BATCH], grid)
    masks = (rng.integers(0, 3, (BATCH, grid, grid)) / 2).astype(np.float32)
    for mask in (masks, 1.0 - masks):   # x_i keeps mask, x_j keeps 1 − mask
      assert not np.asarray(_fast_flags(mask, sal)).any()
      got = np.asarray(SOURCES_JIT(mask, sal))
      np.testing.assert_array_equal(got, ref_sources(ref.transport_plans(mask, sal)))


def _hand_over_cases(grid):
  """(mask, saliency) pairs that each hit one hand-over condition."""
  cells = grid * grid
  levels = np.unique(ref.cost_matrix(grid) * np.float32(0.8))
  cases = []
  # s = 1: a penalised pick can come back to ≤ 0.
  one_hot = np.zeros(cells, np.float32)
  one_hot[cells // 2] = 1.0
  cases.append((np.ones(cells, np.float32), one_hot))
  # A non-kept row whose saliency equals a distance level.
  on_level = np.zeros(cells, np.float32)
  on_level[grid + 1] = levels[1]
  mask = np.zeros(cells, np.float32)
  mask[[grid + 2, 2 * grid + 1]] = 1.0
  cases.append((mask, on_level))
  # Rows 0..3 all pick cell 0 (the run of the leading rows is not resolved).
  corner = np.zeros(cells, np.float32)
  corner[0] = 1.0
  run = np.zeros(cells, np.float32)
  run[[0, 1, 2, 3]] = (0.1, 0.3, 0.85, 0.3) if grid == 3 else (0.01, 0.05, 0.1, 0.2)
  cases.append((corner, run))
  if grid == 16:   # > 16 rows with non-positive picks beyond the 64-cell window
    far = np.zeros(cells, np.float32)
    far[[cells - 1, cells - 2, cells - 1 - grid]] = 1.0
    cases.append((far, np.full(cells, 0.5, np.float32)))
  masks = np.stack([m for m, _ in cases]).reshape(-1, grid, grid)
  return masks, np.stack([s for _, s in cases]).reshape(-1, grid, grid)


@pytest.mark.parametrize("grid", [3, 8, 16])
def test_inputs_outside_the_fast_path_are_exact(grid):
  """Each hand-over condition triggers the dense path, which is exact too."""
  masks, sal = _hand_over_cases(grid)
  cases = len(masks)
  # Padded to the shared batch size with ordinary images.
  extra_masks, extra_sal = _inputs(50 + grid, grid, batch=BATCH - cases)
  masks = np.concatenate([masks, extra_masks])
  sal = np.concatenate([sal, extra_sal])
  assert np.asarray(_fast_flags(masks, sal))[:cases].all()
  got = np.asarray(SOURCES_JIT(masks, sal))
  np.testing.assert_array_equal(got, ref_sources(ref.transport_plans(masks, sal)))


@pytest.mark.parametrize("grid", [8, 16])
def test_dense_path_equals_reference(grid):
  masks, sal = _inputs(11 * grid, grid, batch=7)
  kept = jnp.asarray(masks.reshape(7, -1) > 0)
  got = jax.jit(tr._dense_sources, static_argnums=3)(
      kept, jnp.asarray(sal.reshape(7, -1)), jnp.asarray(tr._scaled_cost(0.8, grid)), grid)
  np.testing.assert_array_equal(np.asarray(got), ref_sources(ref.transport_plans(masks, sal)))


def test_own_cells_stay_without_rivals():
  """Every cell kept, equal saliency: each patch wins its own cell."""
  masks = np.ones((BATCH, 8, 8), np.float32)
  flat = np.full((BATCH, 8, 8), 1 / 64, np.float32)
  np.testing.assert_array_equal(np.asarray(SOURCES_JIT(masks, flat)),
                                np.tile(np.arange(64), (BATCH, 1)))


def one_hot_plans(sources, cells):
  return (sources[:, None, :] == np.arange(cells)[:, None]).astype(np.float32)


@pytest.mark.parametrize("grid,size", [(16, (32, 32)), (4, (32, 16))])
def test_images_moved_exactly(images32, grid, size):
  images = images32[:, :size[0], :size[1]]
  masks, sal = _inputs(grid, grid)
  sources = np.asarray(SOURCES_JIT(masks, sal))
  plans = one_hot_plans(sources, grid * grid)
  expected = np.stack([ref.transport_image(image, plan, grid)
                       for image, plan in zip(images, plans)])
  moved = np.asarray(MOVE_JIT(images, sources, grid))
  assert moved.dtype == np.float32
  np.testing.assert_array_equal(moved, expected)
  np.testing.assert_array_equal(np.asarray(IMAGE_JIT(images, plans, grid)), expected)
  # Cells nobody won are 0.
  cell_h, cell_w = size[0] // grid, size[1] // grid
  cells = moved.reshape(BATCH, grid, cell_h, grid, cell_w, 3).transpose(0, 1, 3, 2, 4, 5)
  cells = cells.reshape(BATCH, grid * grid, -1)
  assert (sources < 0).any()
  assert not cells[sources < 0].any()
  assert (cells[sources >= 0] != 0).any(axis=-1).all()


def test_jit_equals_eager_and_is_deterministic():
  masks, sal = _inputs(5, 8)
  eager = np.asarray(tr.transport_sources(masks, sal))
  np.testing.assert_array_equal(eager, np.asarray(SOURCES_JIT(masks, sal)))
  np.testing.assert_array_equal(eager, np.asarray(tr.transport_sources(masks, sal)))
  np.testing.assert_array_equal(np.asarray(tr.mask_transport(masks, sal)),
                                one_hot_plans(eager, 64))
  # A traced ε gives the same plans as a Python one.
  traced = jax.jit(lambda m, s, e: tr.transport_sources(m, s, e))(masks, sal, 0.8)
  np.testing.assert_array_equal(np.asarray(traced), eager)
  images = np.random.default_rng(5).random((BATCH, 16, 16, 3)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(tr.move_patches(images, eager, 8)),
                                np.asarray(MOVE_JIT(images, eager, 8)))
  np.testing.assert_array_equal(
      np.asarray(tr.transport_image(images, one_hot_plans(eager, 64), 8)),
      np.asarray(tr.move_patches(images, eager, 8)))


def test_vmap_equals_reference():
  masks, sal = _inputs(9, 8)
  masks, sal = masks.reshape(3, 7, 8, 8), sal.reshape(3, 7, 8, 8)
  mapped = np.asarray(jax.jit(jax.vmap(tr.transport_sources))(masks, sal))
  images = np.random.default_rng(9).random((3, 7, 16, 16, 3)).astype(np.float32)
  moved = np.asarray(jax.vmap(lambda x, s: tr.move_patches(x, s, 8))(images, mapped))
  for index in range(3):
    plans = ref.transport_plans(masks[index], sal[index])
    np.testing.assert_array_equal(mapped[index], ref_sources(plans))
    np.testing.assert_array_equal(
        moved[index], np.stack([ref.transport_image(x, p, 8)
                                for x, p in zip(images[index], plans)]))


def test_bad_inputs():
  mask = np.ones((2, 4, 4), np.float32)
  sal = np.full((2, 4, 4), 1 / 16, np.float32)
  with pytest.raises(ValueError, match="rank 3"):
    tr.mask_transport(mask[0], sal[0])
  with pytest.raises(ValueError, match="square"):
    tr.mask_transport(np.ones((2, 4, 3)), np.ones((2, 4, 3), np.float32))
  with pytest.raises(ValueError, match="2×2"):
    tr.mask_transport(np.ones((2, 1, 1)), np.ones((2, 1, 1), np.float32))
  with pytest.raises(ValueError, match="shape of `mask`"):
    tr.mask_transport(mask, sal[:1])
  with pytest.raises(TypeError, match="floating"):
    tr.mask_transport(mask, np.ones((2, 4, 4), np.int32))
  with pytest.raises(ValueError, match="finite"):
    tr.mask_transport(mask, np.where(np.eye(4) > 0, np.nan, sal).astype(np.float32))
  for eps in (0.0, -1.0, float("inf")):
    with pytest.raises(ValueError, match="eps"):
      tr.mask_transport(mask, sal, eps=eps)
  with pytest.raises(TypeError, match="eps"):
    tr.mask_transport(mask, sal, eps=np.ones(2))
  for rounds in (0, 2.5, True):
    with pytest.raises(ValueError, match="num_rounds"):
      tr.mask_transport(mask, sal, num_rounds=rounds)
  with pytest.raises(TypeError, match="static"):
    jax.jit(lambda m, s, r: tr.mask_transport(m, s, num_rounds=r))(mask, sal, 3)
  with pytest.raises(ValueError, match="grid_size"):
    tr.transport_cost_matrix(1)
  images = np.zeros((2, 32, 32, 3), np.float32)
  with pytest.raises(ValueError, match="multiples"):
    tr.move_patches(images, np.zeros((2, 25), np.int32), 5)
  with pytest.raises(ValueError, match=r"\(B, T²\)"):
    tr.move_patches(images, np.zeros((2, 15), np.int32), 4)
  with pytest.raises(ValueError, match=r"\[-1, 16\)"):
    tr.move_patches(images, np.full((2, 16), 16, np.int32), 4)
  with pytest.raises(TypeError, match="integer"):
    tr.move_patches(images, np.zeros((2, 16), np.float32), 4)
  with pytest.raises(ValueError, match="NCHW"):
    tr.move_patches(np.zeros((2, 3, 32, 32), np.float32), np.zeros((2, 16), np.int32), 4)
  with pytest.raises(ValueError, match=r"\(B, T², T²\)"):
    tr.transport_image(images, np.zeros((2, 16, 15), np.float32), 4)
  with pytest.raises(TypeError, match="static"):
    jax.jit(tr.move_patches)(images, np.zeros((2, 16), np.int32), 4)
