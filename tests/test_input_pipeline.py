"""Tests for sage_jax.input_pipeline (no network, no real dataset needed)."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from sage_jax import input_pipeline as ip

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toy(n=50, h=6, w=5, c=3, seed=0):
  """Distinct uint8 images (pixel values never 0) and labels = example id."""
  rng = np.random.default_rng(seed)
  images = rng.integers(1, 256, size=(n, h, w, c), dtype=np.uint8)
  return images, np.arange(n, dtype=np.int32)


def _collect(it):
  batches = list(it)
  return batches, [b["image"] for b in batches], [b["label"] for b in batches]


# ----------------------------------------------------------------- loading --


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10),
                                              ("cifar100", 100)])
def test_tfds_cifar_under_mock_data(name, num_classes, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    ds = ip.load_dataset(name, str(tmp_path))
  info = ds.info
  assert info.name == name
  assert info.num_classes == num_classes == len(info.class_names)
  assert (info.num_train, info.num_test) == (12, 12)
  assert info.image_shape == (32, 32, 3)
  assert len(info.mean) == len(info.std) == 3
  assert all(0 < m < 1 for m in info.mean) and all(0 < s < 1 for s in info.std)
  for images, labels in [(ds.train_images, ds.train_labels),
                         (ds.test_images, ds.test_labels)]:
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < num_classes


def test_cifar_constants():
  np.testing.assert_allclose(np.array(ip.CIFAR10_MEAN) * 255,
                             [125.3, 123.0, 113.9])
  np.testing.assert_allclose(np.array(ip.CIFAR100_STD) * 255,
                             [68.2, 65.4, 70.4])


def test_missing_tfds_data_fails_fast_with_instructions(tmp_path):
  # In a subprocess so that a hang (network retries) fails this test instead
  # of blocking the suite.
  code = ("from sage_jax import input_pipeline as ip\n"
          f"ip.load_dataset('cifar10', {str(tmp_path)!r})\n")
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, JAX_PLATFORMS="cpu",
             TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  start = time.monotonic()
  try:
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
  except subprocess.TimeoutExpired:
    pytest.fail("load_dataset('cifar10', <empty dir>) hung for 60 s")
  elapsed = time.monotonic() - start
  assert proc.returncode != 0
  assert "FileNotFoundError" in proc.stderr, proc.stderr[-3000:]
  for hint in ("tfds build cifar10", "download_and_prepare",
               "cifar-10-binary.tar.gz", "image_folder", str(tmp_path),
               os.path.join(str(tmp_path), "cifar10", "3.0.2"),
               "load_dataset(download=False) never downloads"):
    assert hint in proc.stderr, hint
  # Includes importing TensorFlow; the lookup itself takes milliseconds.
  assert elapsed < 45, elapsed
  assert os.listdir(tmp_path) == []  # Nothing was written or downloaded.


def _write_folder(root, classes=("cat", "dog", "emu"), per_class=(3, 2),
                  size=(8, 8)):
  """Writes PNGs whose pixels encode (split, class, index); returns expected."""
  from PIL import Image
  expected = {}
  for split, count in zip(("train", "test"), per_class):
    images, labels = [], []
    for label, name in enumerate(classes):
      os.makedirs(root / split / name)
      for i in range(count):
        value = 10 * label + i + (100 if split == "test" else 0)
        pixels = np.full(size[::-1] + (3,), value, np.uint8)
        pixels[0, 0] = (label, i, 7)  # Non-uniform channels.
        mode = "L" if (label, i) == (1, 0) else "RGB"  # One grayscale file.
        img = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
        img.save(root / split / name / f"{i:03d}.png")
        images.append(np.repeat(pixels[..., :1], 3, -1) if mode == "L"
                      else pixels)
        labels.append(label)
    expected[split] = (np.stack(images), np.array(labels))
  (root / "train" / "cat" / ".notes.txt").write_text("hidden: ignored")
  return expected


def test_image_folder_loads(tmp_path):
  expected = _write_folder(tmp_path)
  ds = ip.load_dataset("image_folder", str(tmp_path))
  info = ds.info
  assert info.name == "image_folder"
  assert info.class_names == ("cat", "dog", "emu") and info.num_classes == 3
  assert (info.num_train, info.num_test) == (9, 6)
  assert info.image_shape == (8, 8, 3)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.train_images, expected["train"][0])
  np.testing.assert_array_equal(ds.train_labels, expected["train"][1])
  np.testing.assert_array_equal(ds.test_images, expected["test"][0])
  np.testing.assert_array_equal(ds.test_labels, expected["test"][1])
  # Non-CIFAR classes: statistics computed from the train images.
  pixels = expected["train"][0].reshape(-1, 3) / 255.0
  np.testing.assert_allclose(info.mean, pixels.mean(0))
  np.testing.assert_allclose(info.std, pixels.std(0))


def test_image_folder_parallel_decode_matches_serial(tmp_path):
  _write_folder(tmp_path, per_class=(6, 2))
  serial = ip.load_dataset("image_folder", str(tmp_path), num_workers=0)
  pooled = ip.load_dataset("image_folder", str(tmp_path), num_workers=2)
  np.testing.assert_array_equal(serial.train_images, pooled.train_images)
  np.testing.assert_array_equal(serial.test_images, pooled.test_images)


def test_image_folder_cifar10_classes_use_cifar10_stats(tmp_path):
  _write_folder(tmp_path, classes=ip.CIFAR10_CLASS_NAMES, per_class=(1, 1),
                size=(4, 4))
  info = ip.load_dataset("image_folder", str(tmp_path)).info
  assert info.mean == ip.CIFAR10_MEAN and info.std == ip.CIFAR10_STD


def test_image_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="train"):
    ip.load_dataset("image_folder", str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="data_dir"):
    ip.load_dataset("image_folder", None)
  with pytest.raises(ValueError, match="name"):
    ip.load_dataset("imagenet", str(tmp_path))

  _write_folder(tmp_path / "a")
  os.makedirs(tmp_path / "a" / "test" / "fox")
  with pytest.raises(ValueError, match="fox"):
    ip.load_dataset("image_folder", str(tmp_path / "a"))

  from PIL import Image
  _write_folder(tmp_path / "b")
  odd = tmp_path / "b" / "test" / "dog" / "001.png"
  Image.new("RGB", (9, 8)).save(odd)
  with pytest.raises(ValueError, match="001.png"):
    ip.load_dataset("image_folder", str(tmp_path / "b"))


# ----------------------------------------------------------- train batches --


def test_train_batches_deterministic_and_epoch_dependent():
  images, labels = _toy()
  kw = dict(global_batch_size=8, seed=3)
  _, imgs_a, labs_a = _collect(ip.train_batches(images, labels, epoch=0, **kw))
  _, imgs_b, labs_b = _collect(ip.train_batches(images, labels, epoch=0, **kw))
  _, _, labs_c = _collect(ip.train_batches(images, labels, epoch=1, **kw))
  _, _, labs_d = _collect(ip.train_batches(images, labels, epoch=0,
                                           global_batch_size=8, seed=4))
  np.testing.assert_array_equal(np.stack(imgs_a), np.stack(imgs_b))
  np.testing.assert_array_equal(np.stack(labs_a), np.stack(labs_b))
  assert not np.array_equal(np.stack(labs_a), np.stack(labs_c))
  assert not np.array_equal(np.stack(labs_a), np.stack(labs_d))
  # The documented order.
  perm = np.random.default_rng([3, 0]).permutation(50)
  np.testing.assert_array_equal(np.concatenate(labs_a), perm[:48])


def test_train_epoch_covers_examples_once_and_drops_partial_batch():
  images, labels = _toy(n=50)
  assert ip.steps_per_epoch(50, 8) == 6
  batches, imgs, labs = _collect(
      ip.train_batches(images, labels, global_batch_size=8, seed=0, epoch=2))
  assert len(batches) == 6
  for b in batches:
    assert b["image"].shape == (8, 6, 5, 3) and b["image"].dtype == np.uint8
    assert b["label"].shape == (8,) and b["label"].dtype == np.int32
  seen = np.concatenate(labs)
  assert len(seen) == 48 and len(np.unique(seen)) == 48


def test_start_batch_equals_skipping():
  images, labels = _toy()
  kw = dict(global_batch_size=8, seed=1, epoch=5)
  _, full_imgs, full_labs = _collect(ip.train_batches(images, labels, **kw))
  _, imgs, labs = _collect(ip.train_batches(images, labels, start_batch=4,
                                            **kw))
  assert len(imgs) == 2
  np.testing.assert_array_equal(np.stack(imgs), np.stack(full_imgs[4:]))
  np.testing.assert_array_equal(np.stack(labs), np.stack(full_labs[4:]))
  assert list(ip.train_batches(images, labels, start_batch=6, **kw)) == []


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_concatenate_to_global_batch(process_count):
  images, labels = _toy()
  kw = dict(global_batch_size=8, seed=9, epoch=1)
  _, full_imgs, full_labs = _collect(ip.train_batches(images, labels, **kw))
  shards = [_collect(ip.train_batches(images, labels, process_index=p,
                                      process_count=process_count, **kw))
            for p in range(process_count)]
  for b in range(len(full_imgs)):
    assert shards[0][1][b].shape[0] == 8 // process_count
    np.testing.assert_array_equal(
        np.concatenate([s[1][b] for s in shards]), full_imgs[b])
    np.testing.assert_array_equal(
        np.concatenate([s[2][b] for s in shards]), full_labs[b])


def _reference_augment(image, flip, oy, ox, pad):
  """Direct per-image computation: zero-pad, crop at (oy, ox), then mirror."""
  h, w, _ = image.shape
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  out = padded[oy:oy + h, ox:ox + w]
  return out[:, ::-1] if flip else out


def test_augment_batch_matches_per_image_reference():
  images, _ = _toy(n=200, h=7, w=6)
  for pad in (0, 1, 2, 3):
    flip, oy, ox = ip.augment_params(5, 1, 2, 200, pad)
    assert oy.min() >= 0 and max(oy.max(), ox.max()) <= 2 * pad
    out = ip.augment_batch(images, flip, oy, ox, pad)
    ref = np.stack([_reference_augment(images[i], flip[i], oy[i], ox[i], pad)
                    for i in range(200)])
    np.testing.assert_array_equal(out, ref)
  # With pad=2 both flips and all 25 offsets occur in 200 draws.
  flip, oy, ox = ip.augment_params(5, 1, 2, 200, 2)
  assert 0 < flip.sum() < 200 and len(set(zip(oy, ox))) == 25


def test_train_batches_are_flipped_and_shifted_inputs():
  images, labels = _toy(n=64, h=8, w=8)
  pad = 2
  flips = shifts = 0
  for batch in ip.train_batches(images, labels, global_batch_size=16, seed=2,
                                epoch=0, pad=pad):
    for out, label in zip(batch["image"], batch["label"]):
      src = images[label]
      candidates = [(f, dy, dx) for f in (False, True)
                    for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                    if np.array_equal(
                        out, _reference_augment(src, f, dy, dx, pad))]
      assert candidates, "output is not a padded crop / flip of its input"
      f, dy, dx = candidates[0]
      flips += f
      shifts += (dy, dx) != (pad, pad)
      # Zero fill (source pixels are never 0): exactly the uncovered border.
      uncovered = (out == 0).all(-1)
      assert uncovered.sum() == 64 - (8 - abs(dy - pad)) * (8 - abs(dx - pad))
  assert 0 < flips < 64 and shifts > 0
  # pad=0: flips only.
  batch = next(ip.train_batches(images, labels, global_batch_size=16, seed=2,
                                epoch=0, pad=0))
  for out, label in zip(batch["image"], batch["label"]):
    assert (np.array_equal(out, images[label]) or
            np.array_equal(out, images[label][:, ::-1]))


# ------------------------------------------------------------ eval batches --


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once_with_mask(process_count):
  images, labels = _toy(n=21)
  per_process = [list(ip.eval_batches(images, labels, global_batch_size=8,
                                      process_index=p,
                                      process_count=process_count))
                 for p in range(process_count)]
  assert all(len(batches) == 3 for batches in per_process)
  real_images, real_labels = [], []
  for b in range(3):
    for p in range(process_count):
      batch = per_process[p][b]
      assert batch["image"].shape == (8 // process_count, 6, 5, 3)
      assert batch["mask"].dtype == np.float32
      assert batch["label"].dtype == np.int32
      keep = batch["mask"] == 1.0
      assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
      assert (batch["image"][~keep] == 0).all()
      real_images.append(batch["image"][keep])
      real_labels.append(batch["label"][keep])
  np.testing.assert_array_equal(np.concatenate(real_labels), labels)
  np.testing.assert_array_equal(np.concatenate(real_images), images)


def test_eval_batch_larger_than_dataset():
  images, labels = _toy(n=5)
  (batch,) = ip.eval_batches(images, labels, global_batch_size=16)
  np.testing.assert_array_equal(batch["mask"], [1] * 5 + [0] * 11)


# ------------------------------------------------------ normalize / errors --


def test_normalize_matches_formula():
  import jax
  images, _ = _toy(n=4)
  mean, std = ip.CIFAR10_MEAN, ip.CIFAR10_STD
  expected = (images.astype(np.float64) / 255 - mean) / std
  out = jax.jit(ip.normalize, static_argnums=(1, 2))(images, mean, std)
  assert out.dtype == np.float32 and out.shape == images.shape
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  out_f = ip.normalize(images.astype(np.float32), np.array(mean), np.array(std))
  np.testing.assert_allclose(out_f, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,argname", [
    (dict(global_batch_size=0), "global_batch_size"),
    (dict(global_batch_size=51), "global_batch_size"),
    (dict(global_batch_size=9, process_count=2), "process_count"),
    (dict(process_count=0), "process_count"),
    (dict(process_index=2, process_count=2), "process_index"),
    (dict(process_index=-1), "process_index"),
    (dict(seed=-1), "seed"),
    (dict(epoch=-1), "epoch"),
    (dict(start_batch=7), "start_batch"),
    (dict(pad=-1), "pad"),
])
def test_train_batches_bad_arguments(kwargs, argname):
  images, labels = _toy()
  args = dict(global_batch_size=8, seed=0, epoch=0)
  args.update(kwargs)
  with pytest.raises(ValueError, match=argname):
    ip.train_batches(images, labels, **args)  # Raises before iterating.


def test_other_bad_arguments():
  images, labels = _toy()
  with pytest.raises(ValueError, match="labels"):
    ip.train_batches(images, labels[:-1], global_batch_size=8, seed=0, epoch=0)
  with pytest.raises(ValueError, match="global_batch_size"):
    ip.eval_batches(images, labels, global_batch_size=0)
  with pytest.raises(ValueError, match="process_count"):
    ip.eval_batches(images, labels, global_batch_size=9, process_count=2)
  with pytest.raises(ValueError, match="global_batch_size"):
    ip.steps_per_epoch(10, 11)
