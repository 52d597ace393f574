"""Tests of sage_jax.augment.saliencymix against OpenCV and by properties.

OpenCV (`opencv-contrib-python-headless`, pinned for the tests) is the oracle
of `fine_grained_saliency` and of the released code's box; real images come
from the CIFAR-10 JPEG archive next to the repository.
"""
import importlib
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax import augment
from cifar_archive import CIFAR_MEAN, CIFAR_STD, load_test_images

# `augment.saliencymix` is the function (the package re-exports it under the
# module's name), so the module itself comes from importlib.
sm = importlib.import_module("sage_jax.augment.saliencymix")

# 60 test images per class: 600 real images, enough for ≥ 500 parity checks.

SALIENCY_JIT = jax.jit(augment.fine_grained_saliency)
SALIENCYMIX_JIT = jax.jit(augment.saliencymix,
                          static_argnames=augment.MIX_STATIC_ARGNAMES)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
  """uint8 (600, 32, 32, 3) RGB test images, extracted into pytest's tmp dir."""
  return load_test_images(tmp_path_factory.mktemp("cifar10"), 60)[0]


def cv2_saliency(image):
  ok, sal = cv2.saliency.StaticSaliencyFineGrained_create().computeSaliency(
      np.ascontiguousarray(image))
  assert ok
  return sal


def cv2_batch(images):
  return np.stack([cv2_saliency(image) for image in images])


def released_box(saliency, lam):
  """The released `saliency_bbox` from an OpenCV map, in plain NumPy (float64)."""
  height, width = saliency.shape
  cut_rat = np.sqrt(1.0 - lam)
  cut_h, cut_w = int(height * cut_rat), int(width * cut_rat)
  levels = (saliency * 255).astype(np.uint8)
  row, col = np.unravel_index(np.argmax(levels), levels.shape)
  return (np.clip(row - cut_h // 2, 0, height), np.clip(row + cut_h // 2, 0, height),
          np.clip(col - cut_w // 2, 0, width), np.clip(col + cut_w // 2, 0, width))


def normalise(images):
  return (images.astype(np.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD


def assert_parity(images):
  """fine_grained_saliency (jitted) equals OpenCV bit for bit on every image."""
  ours = np.asarray(SALIENCY_JIT(images))
  theirs = cv2_batch(images)
  assert ours.dtype == np.float32 and ours.shape == theirs.shape
  unequal = np.nonzero(~np.all(ours == theirs, axis=(1, 2)))[0]
  assert unequal.size == 0, f"images {unequal[:10]} differ from OpenCV"


# ---------------------------------------------------------------- saliency


def test_parity_on_cifar_rgb_arrays(cifar):
  # The RGB array as given: OpenCV reads channel 0 as Blue.
  assert_parity(cifar)


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_parity_on_cifar_other_channel_counts(cifar, channels):
  if channels == 1:
    images = cifar[..., 1:2]
  elif channels == 2:
    images = cifar[..., :2]
  else:  # A varied alpha channel, so the byte-wise reads of C = 4 matter.
    images = np.concatenate([cifar, 255 - cifar[..., :1]], axis=-1)
  assert_parity(np.ascontiguousarray(images))


def test_parity_non_square_and_tiny_images(cifar):
  wide = np.concatenate([cifar[:100, :24], cifar[100:200, :24, :8]], axis=2)
  assert wide.shape == (100, 24, 40, 3)
  assert_parity(wide)
  assert_parity(np.ascontiguousarray(np.swapaxes(wide, 1, 2)))
  rng = np.random.default_rng(0)
  for shape in [(1, 1, 3), (1, 7, 1), (2, 2, 4), (5, 3, 2)]:
    assert_parity(rng.integers(0, 256, (4,) + shape, dtype=np.uint8))


def test_constant_images_give_zeros():
  images = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (0, 77, 255)])
  maps = np.asarray(SALIENCY_JIT(images))
  assert not np.isnan(maps).any()
  np.testing.assert_array_equal(maps, 0.0)
  np.testing.assert_array_equal(maps, cv2_batch(images))


def test_uint8_wrap_around_matches_opencv():
  # A pixel both brighter than its near and darker than its far surround:
  # 255·(on' + off')/peak passes 255 and OpenCV's uint8 result wraps.
  image = np.full((64, 64, 1), 215, np.uint8)
  image[0:36, 37:64] = 204
  image[14:21, 53:60] = 69
  raw = np.asarray(jax.jit(sm._fine_grained)(image[None]))[0]  # pylint: disable=protected-access
  assert raw.max() > 255
  wrapped = (raw % 256).astype(np.float32) * np.float32(1 / 255)
  np.testing.assert_array_equal(wrapped, cv2_saliency(image))


def test_large_images_reproduce_float32_integral_rounding(cifar):
  # Past 2^24 OpenCV's float32 integral image is rounded; the table must be
  # rounded the same way (a 400×400 smooth image hits this).
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (400, 400), dtype=np.uint8)
  smooth = cv2.GaussianBlur(noise, (0, 0), 5).astype(np.float64)
  smooth = ((smooth - smooth.min()) * 255.0 / (smooth.max() - smooth.min())).astype(np.uint8)
  gray = jnp.asarray(smooth[None, :, :, None], jnp.int32)
  assert not np.array_equal(sm._integral(gray, exact=True),  # pylint: disable=protected-access
                            sm._integral(gray, exact=False))  # pylint: disable=protected-access
  assert_parity(smooth[None, :, :, None])
  # 7×7 CIFAR tiles (224×224): all six scales fit, float32 table path.
  tiles = cifar[:49].reshape(7, 7, 32, 32, 3).transpose(0, 2, 1, 3, 4)
  assert_parity(np.ascontiguousarray(tiles.reshape(1, 224, 224, 3)))


def test_jit_equals_eager_and_vmap_is_safe(cifar):
  images = cifar[:4]
  eager = np.asarray(augment.fine_grained_saliency(images))
  np.testing.assert_array_equal(eager, np.asarray(SALIENCY_JIT(images)))
  grouped = jax.jit(jax.vmap(augment.fine_grained_saliency))(
      images.reshape(2, 2, 32, 32, 3))
  np.testing.assert_array_equal(np.asarray(grouped).reshape(4, 32, 32), eager)
  per_image = jax.jit(jax.vmap(lambda x: augment.fine_grained_saliency(x[None])[0]))
  np.testing.assert_array_equal(np.asarray(per_image(images)), eager)


def test_floor_div_is_exact_over_int32():
  rng = np.random.default_rng(0)
  num = np.concatenate([rng.integers(0, 2**31 - 1, 100_000),
                        rng.integers(0, 600_000, 100_000),
                        [0, 1, 2**31 - 1, 2**24 + 1, 2**24 - 1]]).astype(np.int32)
  den = np.concatenate([rng.integers(1, 2**31 - 1, 50_000),
                        rng.integers(1, 60_000, 150_000),
                        [1, 1, 1, 3, 2**24]]).astype(np.int32)
  got = np.asarray(jax.jit(sm._floor_div)(num, den))  # pylint: disable=protected-access
  np.testing.assert_array_equal(got, num // den)


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((2, 8, 8, 5), np.uint8), "channels"),
    (np.zeros((8, 8, 3), np.uint8), "rank 4"),
    (np.zeros((0, 8, 8, 3), np.uint8), "non-empty"),
])
def test_saliency_bad_input(images, message):
  with pytest.raises(ValueError, match=message):
    augment.fine_grained_saliency(images)


# ---------------------------------------------------------------- box


def test_cut_sizes_equal_float64_next_to_every_threshold():
  # Next to λ = 1 - k²/S² a float32 sqrt would be off by one; the table
  # reproduces the released code's float64 `int(S·sqrt(1-λ))` exactly.
  cut = jax.jit(jax.vmap(sm._cut, in_axes=(None, 0)),  # pylint: disable=protected-access
                static_argnums=0)
  rng = np.random.default_rng(0)
  for size in (24, 32, 40):
    exact = np.float32(1.0 - (np.arange(size + 1) / size) ** 2).view(np.int32)
    near = (exact[:, None] + np.arange(-4, 5)[None, :]).reshape(-1)
    lams = np.concatenate([near.astype(np.int32).view(np.float32),
                           rng.beta(1.0, 1.0, 2000).astype(np.float32),
                           np.float32([0.0, 1.0, 1e-30, 1e-8, 0.5])])
    lams = lams[(lams >= 0) & (lams <= 1)]
    expected = [int(size * np.sqrt(1.0 - float(lam))) for lam in lams]
    np.testing.assert_array_equal(np.asarray(cut(size, lams)), expected)


def test_boxes_equal_released_code_on_opencv_maps(cifar):
  rng = np.random.default_rng(1)
  lams = rng.beta(1.0, 1.0, len(cifar)).astype(np.float32)
  lams[:32] = np.float32(1.0 - (np.arange(32) / 32.0) ** 2)  # Exact-integer cuts.
  boxes = jax.jit(jax.vmap(augment.saliency_box))
  released_maps = cv2_batch(normalise(cifar))  # What the released code boxes.
  for maps in (released_maps, cv2_batch(cifar)):
    ours = np.stack([np.asarray(b) for b in boxes(maps, lams)], axis=1)
    assert ours.dtype == np.int32
    theirs = np.array([released_box(m, float(l)) for m, l in zip(maps, lams)])
    np.testing.assert_array_equal(ours, theirs)
  # Non-square maps.
  wide = np.concatenate([cifar[:50, :24], cifar[50:100, :24, :8]], axis=2)
  maps = cv2_batch(wide)
  ours = np.stack([np.asarray(b) for b in boxes(maps, lams[:50])], axis=1)
  theirs = np.array([released_box(m, float(l)) for m, l in zip(maps, lams[:50])])
  np.testing.assert_array_equal(ours, theirs)


def test_box_bad_input():
  with pytest.raises(ValueError, match="rank 2"):
    augment.saliency_box(np.zeros((1, 4, 4), np.float32), 0.5)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    augment.saliency_box(np.full((4, 4), 2.0, np.float32), 0.5)
  with pytest.raises(ValueError, match="lam"):
    augment.saliency_box(np.zeros((4, 4), np.float32), 1.5)


# ---------------------------------------------------------------- mixing


def small_batch(cifar, batch=8):
  images = normalise(cifar[:batch])
  labels = (np.arange(batch) % 10).astype(np.int32)
  saliency = np.asarray(SALIENCY_JIT(cifar[:batch]))
  return images, labels, saliency


def test_saliencymix_pastes_one_box_and_weights_labels(cifar):
  images, labels, saliency = small_batch(cifar)
  for seed in range(5):
    out = SALIENCYMIX_JIT(jax.random.PRNGKey(seed), images, labels, saliency,
                          mix_prob=1.0, num_classes=10)
    perm = np.asarray(out.perm)
    np.testing.assert_array_equal(np.sort(perm), np.arange(8))
    _, lam_key, _ = jax.random.split(jax.random.PRNGKey(seed), 3)
    lam = float(jax.random.beta(lam_key, 1.0, 1.0))
    top, bottom, left, right = released_box(saliency[perm[0]], lam)
    in_box = np.zeros((32, 32), bool)
    in_box[top:bottom, left:right] = True
    expected = np.where(in_box[None, :, :, None], images[perm], images)
    np.testing.assert_array_equal(np.asarray(out.images), expected)
    own = 1.0 - in_box.sum() / 1024.0
    np.testing.assert_allclose(np.asarray(out.lam), np.full(8, own), rtol=1e-6)
    onehot = np.eye(10)[labels]
    np.testing.assert_allclose(np.asarray(out.labels),
                               own * onehot + (1 - own) * onehot[perm], atol=1e-6)
    np.testing.assert_allclose(np.asarray(out.labels).sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.offset), np.zeros((8, 2)))


def test_saliencymix_mixes_half_the_batches(cifar):
  images, labels, saliency = small_batch(cifar)
  keys = jax.random.split(jax.random.PRNGKey(0), 2000)
  # λ = 0.5 makes a non-empty box, so λ' < 1 exactly when the batch is mixed.
  run = jax.jit(jax.vmap(lambda k: augment.saliencymix(
      k, images, labels, saliency, lam=0.5, num_classes=10).lam[0]))
  frequency = float(np.mean(np.asarray(run(keys)) < 1.0))
  assert abs(frequency - 0.5) < 0.05, frequency


def test_saliencymix_deterministic_and_jit_equals_eager(cifar):
  images, labels, saliency = small_batch(cifar)
  key = jax.random.PRNGKey(3)
  first = SALIENCYMIX_JIT(key, images, labels, saliency, num_classes=10)
  second = SALIENCYMIX_JIT(key, images, labels, saliency, num_classes=10)
  eager = augment.saliencymix(key, images, labels, saliency, num_classes=10)
  for a, b, c in zip(first, second, eager):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))


def test_saliencymix_mix_prob_zero_leaves_batch_unchanged(cifar):
  images, labels, saliency = small_batch(cifar)
  for seed in range(3):
    out = SALIENCYMIX_JIT(jax.random.PRNGKey(seed), images, labels, saliency,
                          mix_prob=0.0, num_classes=10)
    np.testing.assert_array_equal(np.asarray(out.images), images)
    np.testing.assert_array_equal(np.asarray(out.labels), np.eye(10)[labels])
    np.testing.assert_array_equal(np.asarray(out.lam), np.ones(8))


def test_saliencymix_single_map_needs_perm(cifar):
  images, labels, saliency = small_batch(cifar)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="perm"):
    augment.saliencymix(key, images, labels, saliency[0], num_classes=10)
  perm = np.array([3, 0, 1, 2, 7, 6, 5, 4], np.int32)
  single = augment.saliencymix(key, images, labels, saliency[perm[0]],
                               perm=perm, mix_prob=1.0, num_classes=10)
  full = augment.saliencymix(key, images, labels, saliency, perm=perm,
                             mix_prob=1.0, num_classes=10)
  for a, b in zip(single, full):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_saliencymix_bad_input(cifar):
  images, labels, saliency = small_batch(cifar)
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="saliency"):
    augment.saliencymix(key, images, labels, saliency[:, :16], num_classes=10)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    augment.saliencymix(key, images, labels, saliency * 3.0 + 0.5, num_classes=10)
  with pytest.raises(ValueError, match="mix_prob"):
    augment.saliencymix(key, images, labels, saliency, mix_prob=1.5, num_classes=10)
  with pytest.raises(ValueError, match="num_classes"):
    augment.saliencymix(key, images, labels, saliency)


# ---------------------------------------------------------------- OpenCV option


def test_opencv_saliency_under_jit_vmap_and_shard_map(cifar):
  images = normalise(cifar[:4])
  expected = cv2_batch(images)  # The released code's call on float32 RGB.
  single = jax.jit(augment.opencv_saliency)
  for image, want in zip(images, expected):
    np.testing.assert_array_equal(np.asarray(single(image)), want)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(jax.vmap(augment.opencv_saliency))(images)), expected)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  spec = jax.sharding.PartitionSpec()
  sharded = jax.jit(jax.shard_map(augment.opencv_saliency, mesh=mesh,
                                  in_specs=spec, out_specs=spec))
  np.testing.assert_array_equal(np.asarray(sharded(images[0])), expected[0])


def test_released_path_box_from_opencv_saliency(cifar):
  images, labels, _ = small_batch(cifar)

  @jax.jit
  def released(key, perm):
    saliency = augment.opencv_saliency(jnp.asarray(images)[perm[0]])
    return augment.saliencymix(key, images, labels, saliency, perm=perm,
                               lam=0.3, mix_prob=1.0, num_classes=10)

  perm = np.array([5, 2, 3, 0, 1, 4, 7, 6], np.int32)
  out = released(jax.random.PRNGKey(0), perm)
  top, bottom, left, right = released_box(cv2_saliency(images[perm[0]]),
                                          float(np.float32(0.3)))
  own = 1.0 - (bottom - top) * (right - left) / 1024.0
  np.testing.assert_allclose(np.asarray(out.lam), own, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(out.images)[:, top:bottom, left:right],
                                images[perm][:, top:bottom, left:right])


def test_opencv_saliency_missing_cv2_names_the_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "cv2", None)  # Makes `import cv2` fail.
  with pytest.raises(ImportError, match="opencv-contrib-python-headless"):
    augment.opencv_saliency(np.zeros((8, 8, 3), np.float32))
