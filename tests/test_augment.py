"""Tests of sage_jax.augment against the NumPy reference and by properties."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax import augment
from sage_jax.augment import rearrange
import sage_reference as ref

SAGE_JIT = jax.jit(augment.sage, static_argnames=("search", "sample_fraction",
                                                  "num_classes"))


def blob_saliency(rng, batch, height, width, blobs=2):
  """Object-like saliency: a few Gaussian blobs per image plus faint noise."""
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  maps = np.zeros((batch, height, width))
  for b in range(batch):
    for _ in range(blobs):
      cy, cx = rng.uniform(0, height), rng.uniform(0, width)
      radius = rng.uniform(1.0, max(height, width) / 4)
      maps[b] += rng.uniform(0.5, 2.0) * np.exp(
          -((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * radius ** 2))
  maps += 0.01 * rng.uniform(size=maps.shape)
  return maps.astype(np.float32)


def make_batch(seed, batch, height, width, channels=3, num_classes=5):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
  labels = rng.integers(0, num_classes, size=batch).astype(np.int32)
  saliency = blob_saliency(rng, batch, height, width)
  return images, labels, saliency


def onehot(labels, num_classes):
  return np.eye(num_classes)[labels]


# --- saliency_map --------------------------------------------------------------

@pytest.mark.parametrize("shape,sigma,kernel_size", [
    ((3, 16, 16, 3), 1.0, 5), ((2, 12, 20, 1), 1.0, 5), ((2, 9, 7, 4), 0.7, 3),
    ((1, 5, 6, 2), 2.0, 5)])
def test_saliency_map_matches_reference(shape, sigma, kernel_size):
  grads = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  got = augment.saliency_map(grads, sigma=sigma, kernel_size=kernel_size)
  assert got.shape == shape[:3] and got.dtype == jnp.float32
  np.testing.assert_allclose(got, ref.saliency_map(grads, sigma, kernel_size),
                             atol=1e-5, rtol=1e-5)


def test_saliency_map_reflect_padding_not_edge():
  # A bright corner pixel: with reflect padding the padded row -1 is row 1
  # (zero here), so the corner's smoothed value is the centre tap squared;
  # edge padding ('symmetric'/'edge') would add the mirrored corner copies.
  grads = np.zeros((1, 8, 8, 1), np.float32)
  grads[0, 0, 0, 0] = 1.0
  got = np.asarray(augment.saliency_map(grads))
  np.testing.assert_allclose(got, ref.saliency_map(grads), atol=1e-7)
  taps = np.exp(-np.arange(-2, 3) ** 2 / 2.0)
  taps /= taps.sum()
  np.testing.assert_allclose(got[0, 0, 0], taps[2] ** 2, rtol=1e-6)


def test_saliency_map_errors():
  with pytest.raises(ValueError, match="input_grads"):
    augment.saliency_map(np.zeros((4, 4, 3), np.float32))
  with pytest.raises(ValueError, match="kernel_size"):
    augment.saliency_map(np.zeros((1, 4, 4, 3), np.float32), kernel_size=4)
  with pytest.raises(ValueError, match="sigma"):
    augment.saliency_map(np.zeros((1, 4, 4, 3), np.float32), sigma=0.0)


# --- sage: parity with the reference ----------------------------------------------

def check_against_reference(out, images, targets, saliency, lam, perm, offsets):
  want_images, want_labels, want_gamma, want_offset = ref.sage(
      images, targets, saliency, lam, np.asarray(perm), offsets)
  np.testing.assert_array_equal(out.offset, want_offset)
  np.testing.assert_allclose(out.images, want_images, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(out.labels, want_labels, atol=1e-5)
  np.testing.assert_allclose(out.lam, want_gamma, atol=1e-5)


@pytest.mark.parametrize("height,width", [(8, 8), (6, 11)])
def test_sage_overrides_match_reference(height, width):
  images, labels, saliency = make_batch(1, 6, height, width)
  perm = np.array([3, 0, 5, 1, 2, 4], np.int32)
  offsets = np.array([[0, 0], [2, -3], [-1, 4], [height - 1, 0], [1, 1],
                      [-(height - 1), -(width - 1)]], np.int32)
  out = augment.sage(jax.random.key(0), images, labels, saliency, lam=0.35,
                     perm=perm, offsets=offsets, num_classes=5)
  np.testing.assert_array_equal(out.perm, perm)
  check_against_reference(out, images, onehot(labels, 5), saliency, 0.35, perm,
                          [tuple(o) for o in offsets])


@pytest.mark.parametrize("height,width", [(16, 16), (10, 14)])
def test_sage_sampled_matches_reference(height, width):
  images, labels, saliency = make_batch(2, 8, height, width)
  key = jax.random.key(7)
  fraction = 0.05
  out = augment.sage(key, images, labels, saliency, lam=0.6, num_classes=5,
                     sample_fraction=fraction)
  # `sage` documents its key split: (λ, permutation, sampled offsets).
  offsets_key = jax.random.split(key, 3)[2]
  candidates = np.asarray(augment.sample_offsets(offsets_key, height, width, fraction))
  expected_count = int(fraction * (2 * height - 1) * (2 * width - 1))
  assert candidates.shape == (expected_count, 2)
  assert len({tuple(c) for c in candidates}) == expected_count  # distinct
  assert set(map(tuple, np.asarray(out.offset))) <= set(map(tuple, candidates))
  check_against_reference(out, images, onehot(labels, 5), saliency, 0.6, out.perm,
                          [tuple(o) for o in candidates])


def test_sampled_count_matches_paper():
  # 1% of the 63×63 offsets of a 32×32 image: 39, as in the released code.
  assert augment.num_sampled_offsets(32, 32, 0.01) == 39
  assert augment.num_sampled_offsets(2, 2, 0.01) == 1


@pytest.mark.parametrize("height,width,batch", [(8, 8, 8), (7, 12, 6), (1, 5, 2)])
def test_sage_exhaustive_matches_brute_force_reference(height, width, batch):
  images, labels, saliency = make_batch(3, batch, height, width)
  out = augment.sage(jax.random.key(1), images, labels, saliency, lam=0.45,
                     num_classes=5, search="exhaustive")
  check_against_reference(out, images, onehot(labels, 5), saliency, 0.45, out.perm,
                          ref.all_offsets(height, width))


def test_exhaustive_equals_brute_force_at_32x32():
  images, labels, saliency = make_batch(4, 24, 32, 32)
  key = jax.random.key(3)
  fast = SAGE_JIT(key, images, labels, saliency, num_classes=5, search="exhaustive")
  brute = SAGE_JIT(key, images, labels, saliency, num_classes=5,
                   offsets=augment.all_offsets(32, 32))
  np.testing.assert_array_equal(fast.offset, brute.offset)
  np.testing.assert_allclose(fast.images, brute.images, atol=1e-6)


def test_approximate_scores_track_exact_scores():
  _, _, saliency = make_batch(5, 4, 12, 12)
  sal0 = jnp.asarray(saliency / saliency.sum((1, 2), keepdims=True) * 0.4)
  sal1 = jnp.asarray(saliency[::-1] / saliency[::-1].sum((1, 2), keepdims=True) * 0.6)
  offsets = augment.all_offsets(12, 12)
  exact = jax.vmap(lambda a, b: jax.vmap(
      rearrange.kept_saliency, in_axes=(None, None, 0))(a, b, offsets))(sal0, sal1)
  approx = rearrange.approximate_scores(sal0, sal1) + jnp.sum(sal0, axis=(1, 2))[:, None]
  # The 12-term exponential sum for 1/x is accurate to ~0.5% (it only ranks;
  # the best offsets are rescored exactly), so H(τ) is off by ≲ 1% of itself.
  np.testing.assert_allclose(approx, exact, atol=3e-3)


def test_search_none_never_shifts():
  images, labels, saliency = make_batch(6, 5, 9, 9)
  out = augment.sage(jax.random.key(2), images, labels, saliency, lam=0.5,
                     num_classes=5, search="none")
  np.testing.assert_array_equal(out.offset, 0)
  check_against_reference(out, images, onehot(labels, 5), saliency, 0.5, out.perm,
                          [(0, 0)])


# --- sage: properties ----------------------------------------------------------------

@pytest.mark.parametrize("search", augment.SEARCH_MODES)
def test_sage_properties(search):
  images, labels, saliency = make_batch(7, 8, 12, 10, channels=2)
  out = augment.sage(jax.random.key(4), images, labels, saliency, num_classes=5,
                     upper_lambda=0.6, search=search, sample_fraction=0.05)
  assert out.images.shape == images.shape and out.images.dtype == jnp.float32
  assert out.labels.shape == (8, 5) and out.lam.shape == (8,)
  assert out.perm.dtype == jnp.int32 and out.offset.dtype == jnp.int32
  np.testing.assert_allclose(out.labels.sum(axis=1), 1.0, atol=1e-6)
  assert np.all((out.lam >= 0) & (out.lam <= 1))
  assert sorted(np.asarray(out.perm).tolist()) == list(range(8))
  assert np.all(np.abs(out.offset[:, 0]) <= 11) and np.all(np.abs(out.offset[:, 1]) <= 9)


def test_mixed_image_is_the_mask_and_gamma_its_mean():
  # Image i all ones, its partner all zeros: x' = M·1 + (1-M)·0 = M.
  _, _, saliency = make_batch(8, 2, 10, 10)
  images = np.stack([np.ones((10, 10, 1)), np.zeros((10, 10, 1))]).astype(np.float32)
  labels = np.array([0, 1], np.int32)
  for search in augment.SEARCH_MODES:
    out = augment.sage(jax.random.key(5), images, labels, saliency, num_classes=2,
                       perm=np.array([1, 0], np.int32), search=search)
    mask = np.asarray(out.images[0, ..., 0])
    assert mask.min() >= 0.0 and mask.max() <= 1.0 + 1e-7
    np.testing.assert_allclose(out.lam[0], mask.mean(), atol=1e-6)
    np.testing.assert_allclose(out.labels[0], [mask.mean(), 1 - mask.mean()], atol=1e-6)


def test_lambda_recovered_with_uniform_saliency():
  # Uniform saliency and no shift: M = λ/(λ + 1-λ) = λ everywhere, so γ = λ.
  images, labels, _ = make_batch(9, 6, 8, 8)
  saliency = np.ones((6, 8, 8), np.float32)
  out = augment.sage(jax.random.key(6), images, labels, saliency, lam=0.3,
                     num_classes=5, search="none")
  np.testing.assert_allclose(out.lam, 0.3, atol=1e-6)
  draws = [float(augment.sage(jax.random.key(s), images, labels, saliency,
                              upper_lambda=0.6, num_classes=5, search="none").lam[0])
           for s in range(40)]
  assert 0.0 <= min(draws) and max(draws) <= 0.6 and np.std(draws) > 0.05


def test_upper_lambda_scales_beta_draw():
  images, labels, _ = make_batch(9, 4, 8, 8)
  saliency = np.ones((4, 8, 8), np.float32)
  key = jax.random.key(11)
  lam_key = jax.random.split(key, 3)[0]
  want = 0.6 * float(jax.random.beta(lam_key, 1.0, 1.0))
  out = augment.sage(key, images, labels, saliency, upper_lambda=0.6,
                     num_classes=5, search="none")
  np.testing.assert_allclose(out.lam, want, atol=1e-6)


def test_determinism_and_key_dependence():
  images, labels, saliency = make_batch(10, 8, 16, 16)
  a = augment.sage(jax.random.key(0), images, labels, saliency, num_classes=5)
  b = augment.sage(jax.random.key(0), images, labels, saliency, num_classes=5)
  c = augment.sage(jax.random.key(1), images, labels, saliency, num_classes=5)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.images, c.images)


@pytest.mark.parametrize("search", augment.SEARCH_MODES)
def test_jit_equals_eager(search):
  images, labels, saliency = make_batch(11, 8, 12, 12)
  key = jax.random.key(9)
  eager = augment.sage(key, images, labels, saliency, num_classes=5, search=search,
                       upper_lambda=0.7)
  jitted = SAGE_JIT(key, images, labels, saliency, num_classes=5, search=search,
                    upper_lambda=0.7)
  np.testing.assert_array_equal(eager.offset, jitted.offset)
  np.testing.assert_array_equal(eager.perm, jitted.perm)
  np.testing.assert_allclose(eager.images, jitted.images, atol=1e-6)
  np.testing.assert_allclose(eager.labels, jitted.labels, atol=1e-6)


def test_soft_float_labels_and_batch_of_one():
  images, labels, saliency = make_batch(12, 1, 8, 8)
  soft = np.array([[0.2, 0.8, 0.0]], np.float32)
  out = augment.sage(jax.random.key(0), images, soft, saliency, search="exhaustive")
  np.testing.assert_array_equal(out.perm, [0])
  np.testing.assert_allclose(out.labels, soft, atol=1e-6)  # mixed with itself
  assert np.all(np.isfinite(out.images))


def test_zero_saliency_is_finite():
  images, labels, _ = make_batch(13, 4, 8, 8)
  zeros = np.zeros((4, 8, 8), np.float32)
  for search in augment.SEARCH_MODES:
    out = augment.sage(jax.random.key(0), images, labels, zeros, num_classes=5,
                       search=search)
    for leaf in (out.images, out.labels, out.lam):
      assert np.all(np.isfinite(leaf))


def test_bfloat16_images_keep_dtype():
  images, labels, saliency = make_batch(14, 4, 8, 8)
  out = augment.sage(jax.random.key(0), images.astype(jnp.bfloat16), labels,
                     saliency, num_classes=5)
  assert out.images.dtype == jnp.bfloat16 and out.labels.dtype == jnp.float32


def test_shift_moves_content_down_and_right():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(augment.shift(x, jnp.array([1, 2])),
                                ref.shift(np.asarray(x), 1, 2))
  np.testing.assert_array_equal(augment.shift(x, jnp.array([-2, -3])),
                                ref.shift(np.asarray(x), -2, -3))
  assert float(augment.shift(x, jnp.array([1, 2]))[1, 2]) == 0.0  # x[0, 0]


# --- errors -------------------------------------------------------------------------

def test_sage_errors_name_the_argument():
  images, labels, saliency = make_batch(15, 4, 8, 8)
  key = jax.random.key(0)
  cases = [
      (dict(images=images[0]), "images"),
      (dict(saliency=saliency[:2]), "saliency"),
      (dict(saliency=saliency[..., None]), "saliency"),
      (dict(saliency=-saliency), "non-negative"),
      (dict(labels=labels[:3]), "batch size"),
      (dict(num_classes=None), "num_classes"),
      (dict(labels=labels + 10), "num_classes"),
      (dict(search="greedy"), "search"),
      (dict(sample_fraction=0.0), "sample_fraction"),
      (dict(alpha=0.0), "alpha"),
      (dict(upper_lambda=1.5), "upper_lambda"),
      (dict(lam=-0.1), "lam"),
      (dict(perm=np.arange(3, dtype=np.int32)), "perm"),
      (dict(offsets=np.array([[8, 0]], np.int32)), "offsets"),
      (dict(offsets=np.zeros((3,), np.int32)), "offsets"),
      (dict(images=images.astype(np.int32)), "images"),
  ]
  base = dict(images=images, labels=labels, saliency=saliency, num_classes=5)
  for overrides, message in cases:
    kwargs = {**base, **overrides}
    with pytest.raises(ValueError, match=message):
      augment.sage(key, kwargs.pop("images"), kwargs.pop("labels"),
                   kwargs.pop("saliency"), **kwargs)


def test_baseline_errors():
  images, labels, _ = make_batch(16, 4, 8, 8)
  for fn in (augment.mixup, augment.cutmix):
    with pytest.raises(ValueError, match="num_classes"):
      fn(jax.random.key(0), images, labels)
    with pytest.raises(ValueError, match="images"):
      fn(jax.random.key(0), images[0], labels, num_classes=5)
    with pytest.raises(ValueError, match="alpha"):
      fn(jax.random.key(0), images, labels, num_classes=5, alpha=-1.0)


# --- mixup and cutmix -----------------------------------------------------------------

def test_mixup_formula():
  images, labels, _ = make_batch(17, 6, 8, 8)
  key = jax.random.key(3)
  out = augment.mixup(key, images, labels, num_classes=5)
  lam_key, perm_key = jax.random.split(key)
  lam = float(jax.random.beta(lam_key, 1.0, 1.0))
  perm = np.asarray(jax.random.permutation(perm_key, 6))
  np.testing.assert_array_equal(out.perm, perm)
  np.testing.assert_allclose(out.lam, lam, atol=1e-6)
  np.testing.assert_allclose(out.images, lam * images + (1 - lam) * images[perm],
                             atol=1e-5)
  targets = onehot(labels, 5)
  np.testing.assert_allclose(out.labels, lam * targets + (1 - lam) * targets[perm],
                             atol=1e-6)
  np.testing.assert_array_equal(out.offset, 0)


@pytest.mark.parametrize("height,width", [(8, 8), (9, 13)])
def test_cutmix_box_and_corrected_lambda(height, width):
  images, labels, _ = make_batch(18, 5, height, width)
  for seed in range(10):
    out = augment.cutmix(jax.random.key(seed), images, labels, num_classes=5)
    perm = np.asarray(out.perm)
    from_partner = np.all(np.asarray(out.images) == images[perm], axis=-1)
    from_self = np.all(np.asarray(out.images) == images, axis=-1)
    distinct = perm != np.arange(5)
    assert np.all(from_partner | from_self)
    # The pasted region is one rectangle and its area sets the label weight.
    own_fraction = 1.0 - from_partner[distinct][0].mean() if distinct.any() else None
    if own_fraction is not None:
      np.testing.assert_allclose(out.lam[0], own_fraction, atol=1e-6)
    np.testing.assert_allclose(out.labels.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(out.offset, 0)


def test_baselines_jit_and_batch_of_one():
  images, labels, _ = make_batch(19, 1, 8, 8)
  for fn in (augment.mixup, augment.cutmix):
    jitted = jax.jit(fn, static_argnames=("num_classes",))
    a = jitted(jax.random.key(0), images, labels, num_classes=5)
    b = fn(jax.random.key(0), images, labels, num_classes=5)
    np.testing.assert_allclose(a.images, b.images, atol=1e-6)
    np.testing.assert_allclose(a.images, images, atol=1e-6)  # paired with itself


# --- sage(mask="constant"): the "w/o SM" ablation ------------------------------------

SAGE_JIT_MASK = jax.jit(augment.sage, static_argnames=(
    "search", "sample_fraction", "num_classes", "mask"))


@pytest.mark.parametrize("search", augment.SEARCH_MODES)
def test_constant_mask_keeps_offsets_and_matches_reference(search):
  images, labels, saliency = make_batch(20, 8, 12, 10)
  key = jax.random.key(21)
  kwargs = dict(num_classes=5, upper_lambda=0.6, search=search, sample_fraction=0.05)
  guided = augment.sage(key, images, labels, saliency, **kwargs)
  constant = augment.sage(key, images, labels, saliency, mask="constant", **kwargs)
  # Same λ, partners and search: only the mix differs.
  np.testing.assert_array_equal(constant.offset, guided.offset)
  np.testing.assert_array_equal(constant.perm, guided.perm)
  lam = 0.6 * float(jax.random.beta(jax.random.split(key, 3)[0], 1.0, 1.0))
  np.testing.assert_allclose(constant.lam, lam, atol=1e-6)   # γ_i = λ
  # The NumPy reference, given row i's chosen offset, mixes with M = λ.
  for i in range(8):
    want_images, want_labels, want_gamma, _ = ref.sage(
        images, onehot(labels, 5), saliency, lam,
        np.asarray(constant.perm), [tuple(np.asarray(constant.offset[i]))],
        mask="constant")
    np.testing.assert_allclose(constant.images[i], want_images[i], atol=1e-5)
    np.testing.assert_allclose(constant.labels[i], want_labels[i], atol=1e-6)
    np.testing.assert_allclose(constant.lam[i], want_gamma[i], atol=1e-6)


def test_constant_mask_matches_reference_with_overrides():
  images, labels, saliency = make_batch(22, 6, 8, 8)
  perm = np.array([3, 0, 5, 1, 2, 4], np.int32)
  offsets = np.array([[0, 0], [2, -3], [-1, 4], [7, 0], [1, 1]], np.int32)
  out = augment.sage(jax.random.key(0), images, labels, saliency, lam=0.35,
                     perm=perm, offsets=offsets, num_classes=5, mask="constant")
  want_images, want_labels, want_gamma, want_offset = ref.sage(
      images, onehot(labels, 5), saliency, 0.35, perm,
      [tuple(o) for o in offsets], mask="constant")
  np.testing.assert_array_equal(out.offset, want_offset)
  np.testing.assert_allclose(out.images, want_images, atol=1e-5)
  np.testing.assert_allclose(out.labels, want_labels, atol=1e-6)
  np.testing.assert_allclose(out.lam, 0.35, atol=1e-7)
  np.testing.assert_allclose(want_gamma, 0.35)
  # Formula by hand for one row: λ·x_i + (1-λ)·T_τ(x_π(i)), zero fill included.
  i = 1
  dy, dx = np.asarray(out.offset[i])
  partner = ref.shift(images[perm[i]], int(dy), int(dx))
  np.testing.assert_allclose(out.images[i], 0.35 * images[i] + 0.65 * partner,
                             atol=1e-5)


def test_constant_mask_without_shift_is_mixup():
  images, labels, saliency = make_batch(23, 6, 9, 9)
  key = jax.random.key(5)
  mixed = augment.mixup(key, images, labels, num_classes=5)
  out = augment.sage(key, images, labels, saliency, num_classes=5, search="none",
                     mask="constant", lam=mixed.lam[0], perm=mixed.perm)
  np.testing.assert_allclose(out.images, mixed.images, atol=1e-6)
  np.testing.assert_allclose(out.labels, mixed.labels, atol=1e-6)


@pytest.mark.parametrize("search", augment.SEARCH_MODES)
def test_constant_mask_jit_equals_eager(search):
  images, labels, saliency = make_batch(24, 8, 12, 12)
  key = jax.random.key(8)
  kwargs = dict(num_classes=5, search=search, upper_lambda=0.7, mask="constant")
  eager = augment.sage(key, images, labels, saliency, **kwargs)
  jitted = SAGE_JIT_MASK(key, images, labels, saliency, **kwargs)
  np.testing.assert_array_equal(eager.offset, jitted.offset)
  np.testing.assert_allclose(eager.images, jitted.images, atol=1e-6)
  np.testing.assert_allclose(eager.lam, jitted.lam, atol=1e-7)


def test_mask_error_names_the_argument():
  images, labels, saliency = make_batch(25, 4, 8, 8)
  with pytest.raises(ValueError, match="`mask` must be one of"):
    augment.sage(jax.random.key(0), images, labels, saliency, num_classes=5,
                 mask="uniform")


# --- mixup / cutmix with lam= and perm= overrides -------------------------------------

def test_baselines_accept_lam_and_perm_overrides():
  images, labels, _ = make_batch(26, 6, 8, 8)
  perm = np.array([5, 4, 3, 2, 1, 0], np.int32)
  key = jax.random.key(12)
  mixed = augment.mixup(key, images, labels, num_classes=5, lam=0.3, perm=perm)
  np.testing.assert_array_equal(mixed.perm, perm)
  np.testing.assert_allclose(mixed.images, 0.3 * images + 0.7 * images[perm],
                             atol=1e-6)
  np.testing.assert_allclose(mixed.lam, 0.3, atol=1e-7)
  # CutMix: `lam` sizes the box, whose position still comes from `key`.
  cut = augment.cutmix(key, images, labels, num_classes=5, lam=0.75, perm=perm)
  np.testing.assert_array_equal(cut.perm, perm)
  box_key = jax.random.split(key, 3)[2]
  top, bottom, left, right = (int(v) for v in augment.mixing.cutmix_box(
      box_key, 8, 8, jnp.float32(0.75)))
  want = images.copy()
  want[:, top:bottom, left:right] = images[perm][:, top:bottom, left:right]
  np.testing.assert_array_equal(cut.images, want)
  np.testing.assert_allclose(cut.lam, 1 - (bottom - top) * (right - left) / 64,
                             atol=1e-6)
  # Without overrides the draws are unchanged (same key, same result).
  default = augment.cutmix(key, images, labels, num_classes=5)
  lam_draw = jax.random.beta(jax.random.split(key, 3)[0], 1.0, 1.0)
  drawn_perm = jax.random.permutation(jax.random.split(key, 3)[1], 6)
  again = augment.cutmix(key, images, labels, num_classes=5, lam=lam_draw,
                         perm=drawn_perm)
  np.testing.assert_array_equal(default.images, again.images)
  for fn in (augment.mixup, augment.cutmix):
    with pytest.raises(ValueError, match="lam"):
      fn(key, images, labels, num_classes=5, lam=1.5)
    with pytest.raises(ValueError, match="perm"):
      fn(key, images, labels, num_classes=5, perm=perm[:3])
