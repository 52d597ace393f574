"""In-memory CIFAR input pipeline with deterministic, resumable batches.

CIFAR-sized datasets fit in host memory many times over, so the whole dataset
is decoded once into uint8 numpy arrays and every batch is then cut out of
those arrays with numpy. Batches are a pure function of
(seed, epoch, batch index):

* the order of an epoch is ``np.random.default_rng([seed, epoch]).permutation(N)``
  and global batch ``b`` holds the examples ``perm[b * G:(b + 1) * G]``;
* the augmentation of batch ``b`` (random horizontal flip with p=0.5, then a
  random crop back to H x W after zero-padding ``pad`` pixels on each side, as
  in PyTorch's ``RandomCrop(size, padding=pad)`` + ``RandomHorizontalFlip()``)
  is drawn from a generator seeded by (seed, epoch, b) alone.

Therefore training resumes at any step exactly (``start_batch`` jumps to a
batch without generating the ones before it), and every process of a
multi-host run computes the same global batch and keeps its own contiguous
slice of rows, so the concatenation over processes equals the single-process
batch exactly.

Batches stay uint8 (4x less host-to-device traffic than float32);
:func:`normalize` converts them on device.

Datasets (:data:`DATASET_NAMES`):

* ``cifar10`` / ``cifar100``: read with tensorflow-datasets from the tfds
  ``data_dir``. With ``download=False`` (the default here) nothing is
  downloaded and a missing dataset raises :class:`FileNotFoundError` within
  seconds, explaining how to prepare it; ``download=True`` first runs
  :func:`sage_jax.datasets.ensure_tfds` (downloads when the host answers;
  ``main.py`` does this).
* ``image_folder``: ``data_dir/{train,test}/<class>/<image files>``, decoded
  with PIL. Classes are the sorted subfolder names of ``train/``. The folder
  is checked before anything trains: a file that is not an image (by its
  extension), an image PIL cannot decode, an image of another size than the
  first, a non-8-bit image (modes I, I;16, F), an empty class folder, or a
  class missing from one split stops the load with one :class:`DataError`
  listing every such file and its fix. Hidden files (``.*``) are ignored.
  Other modes are converted with PIL's ``convert("RGB")``: grayscale
  (``L``, ``1``) is repeated over the channels, palette images (``P``) are
  looked up, ``RGBA``/``LA`` lose their alpha channel (it is dropped, not
  composited onto a background), ``CMYK``/``YCbCr`` are converted; a log line
  counts the converted files.
"""
from __future__ import annotations

import concurrent.futures
from concurrent.futures import process as futures_process
import dataclasses
import logging
import multiprocessing
import os
from typing import Iterator, Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image

DATASET_NAMES = ("cifar10", "cifar100", "image_folder")

CIFAR10_CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog",
                       "frog", "horse", "ship", "truck")

# Per-channel statistics of the training sets in [0, 1] pixel units (the
# constants the reference PyTorch SAGE code normalises with).
CIFAR10_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR10_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
CIFAR100_MEAN = (129.3 / 255, 124.1 / 255, 112.4 / 255)
CIFAR100_STD = (68.2 / 255, 65.4 / 255, 70.4 / 255)

_TFDS_STATS = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm",
                    ".tif", ".tiff", ".webp")

# A decoding pool pays off only for many files and several CPUs: each spawned
# worker spends about a second importing this module, and on 2 CPUs (measured,
# CIFAR-10 JPEGs) 2 workers saved at most ~15% and lost time on a busy host.
_MIN_FILES_FOR_POOL = 8192
_MIN_CPUS_FOR_POOL = 4
# Second SeedSequence word stream for augmentation draws. SeedSequence pads a
# short entropy list with zeros, so [seed, epoch] (the permutation) and
# [seed, epoch, 0] would be the same stream; the trailing 1 keeps them apart.
_AUGMENT_STREAM = 1

_log = logging.getLogger(__name__)

# Image modes `convert("RGB")` maps faithfully onto 8-bit RGB; other modes
# (I, I;16, F: 16/32-bit or float pixels) would be clipped to 0..255.
CONVERTIBLE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGBA", "RGBa", "RGBX",
                     "CMYK", "YCbCr", "LAB", "HSV")
_MAX_LISTED_PROBLEMS = 10


class DataError(ValueError):
  """A dataset file or folder that cannot be used as it is. The message names
  each bad file (or folder) and how to fix it."""


class MissingDataError(DataError, FileNotFoundError):
  """A dataset file or folder that does not exist."""


def _raise_problems(what: str, problems: Sequence[str]) -> None:
  """One DataError listing `problems` (the first few, then a count)."""
  if not problems:
    return
  shown = list(problems[:_MAX_LISTED_PROBLEMS])
  more = len(problems) - len(shown)
  if more:
    shown.append(f"... and {more} more")
  raise DataError(f"{what}: {len(problems)} problem(s), nothing was trained:\n  "
                  + "\n  ".join(shown))


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of a dataset.

  Attributes:
    name: one of :data:`DATASET_NAMES`.
    num_classes: number of labels; labels are 0..num_classes-1.
    num_train: number of training examples.
    num_test: number of test examples.
    image_shape: (H, W, C) of every image.
    mean: per-channel mean in [0, 1] pixel units (length C).
    std: per-channel standard deviation in [0, 1] pixel units (length C).
    class_names: name of each label, in label order.
  """
  name: str
  num_classes: int
  num_train: int
  num_test: int
  image_shape: tuple
  mean: tuple
  std: tuple
  class_names: tuple


@dataclasses.dataclass(frozen=True)
class InMemoryDataset:
  """A whole dataset decoded into host memory.

  Attributes:
    info: the :class:`DatasetInfo`.
    train_images: uint8 (num_train, H, W, C).
    train_labels: int32 (num_train,).
    test_images: uint8 (num_test, H, W, C).
    test_labels: int32 (num_test,).
  """
  info: DatasetInfo
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


# --------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------


def load_dataset(name: str, data_dir: str | None, *,
                 num_workers: int | None = None,
                 download: bool = False) -> InMemoryDataset:
  """Decodes a whole dataset into memory.

  Args:
    name: one of :data:`DATASET_NAMES`.
    data_dir: for ``cifar10``/``cifar100`` the tfds data dir (None = tfds's
      default, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``); for
      ``image_folder`` the root holding ``train/`` and ``test/`` (required).
    num_workers: ``image_folder`` only: decoding processes; None picks one per
      CPU (at most 16) for large folders on hosts with >= 4 CPUs, else 0;
      0 or 1 decodes in this process.
    download: ``cifar10``/``cifar100`` only: True downloads and prepares a
      missing dataset when its host is reachable
      (:func:`sage_jax.datasets.ensure_tfds`); False never touches the
      network.

  Returns:
    An :class:`InMemoryDataset` (uint8 images, int32 labels).

  Raises:
    ValueError: unknown ``name``; ``data_dir`` missing for ``image_folder``;
      malformed image folder (class sets differ, mixed image sizes, ...).
    FileNotFoundError: the dataset is not present under ``data_dir`` (and
      could not be downloaded).
  """
  if name in _TFDS_STATS:
    if download:
      from sage_jax import datasets  # pylint: disable=g-import-not-at-top
      datasets.ensure_tfds(name, data_dir, download=True)
    return _load_tfds(name, data_dir)
  if name == "image_folder":
    if data_dir is None:
      raise ValueError("data_dir must be given for name='image_folder' (the "
                       "root holding train/<class>/ and test/<class>/).")
    return _load_image_folder(data_dir, num_workers=num_workers)
  raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}.")


def _missing_tfds_message(name: str, data_dir: str | None, builder) -> str:
  from sage_jax import datasets  # pylint: disable=g-import-not-at-top
  root = str(getattr(builder, "data_dir_root", None) or data_dir
             or "the tfds default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)")
  return datasets.missing_message(
      name, root, "load_dataset(download=False) never downloads; main.py and "
      "load_dataset(..., download=True) do when the host is reachable",
      looked_in=str(getattr(builder, "data_dir", "") or "") or None)


def _disable_tfds_network(tfds) -> None:
  """Makes sure tfds cannot reach Google Cloud Storage.

  Without internet, tfds's GCS lookups (dataset_info metadata, prepared copies
  in gs://tfds-data) retry for minutes instead of failing. tfds 4.9.10 ships
  with ``gcs_utils._is_gcs_disabled = True`` already; older releases default to
  False and document this flag as the offline switch, so set it anyway.
  """
  tfds.core.utils.gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access


def _load_tfds(name: str, data_dir: str | None) -> InMemoryDataset:
  """Loads cifar10/cifar100 from a prepared tfds data dir (never downloads)."""
  # Imported lazily: TensorFlow takes seconds to import and image_folder and
  # the batch functions do not need it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  _disable_tfds_network(tfds)

  builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
  arrays = {}
  for split in ("train", "test"):
    # Attempt the read and translate tfds's "not prepared" error instead of
    # checking `builder.is_prepared()` first: under tfds.testing.mock_data the
    # builder points at a non-existent dir, yet `as_dataset` is mocked to work.
    try:
      ds = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:  # tfds raises AssertionError when unprepared.
      raise FileNotFoundError(_missing_tfds_message(name, data_dir, builder)) from e
    arrays[split] = _tf_dataset_to_numpy(tfds, ds)

  label_feature = builder.info.features["label"]
  mean, std = _TFDS_STATS[name]
  info = DatasetInfo(
      name=name,
      num_classes=int(label_feature.num_classes),
      num_train=len(arrays["train"][1]),
      num_test=len(arrays["test"][1]),
      image_shape=tuple(int(d) for d in arrays["train"][0].shape[1:]),
      mean=tuple(mean),
      std=tuple(std),
      class_names=tuple(label_feature.names),
  )
  return InMemoryDataset(info, arrays["train"][0], arrays["train"][1],
                         arrays["test"][0], arrays["test"][1])


def _tf_dataset_to_numpy(tfds, ds) -> tuple[np.ndarray, np.ndarray]:
  """Drains a tfds split into (uint8 images (N,H,W,C), int32 labels (N,))."""
  # Large batches keep the per-element tf.data overhead negligible. For
  # cifar100 'label' is the fine (100-way) label.
  ds = ds.map(lambda ex: (ex["image"], ex["label"])).batch(10_000)
  images, labels = [], []
  for image, label in tfds.as_numpy(ds):
    images.append(image)
    labels.append(label)
  return (np.ascontiguousarray(np.concatenate(images).astype(np.uint8)),
          np.concatenate(labels).astype(np.int32))


def _list_images(class_dir: str) -> list[str]:
  """Sorted paths of the image files directly inside ``class_dir``."""
  names = sorted(
      entry.name for entry in os.scandir(class_dir)
      if entry.is_file() and not entry.name.startswith(".")
      and entry.name.lower().endswith(IMAGE_EXTENSIONS))
  return [os.path.join(class_dir, n) for n in names]


def _scan_class_dir(class_dir: str) -> tuple[list[str], list[str]]:
  """(sorted image paths, problems) of one class folder.

  Problems: a visible entry that is not an image file (by extension), a
  subfolder (its images would be ignored), or no image at all.
  """
  images, problems = [], []
  for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
    if entry.name.startswith("."):
      continue
    if entry.is_dir():
      problems.append(f"{entry.path} is a folder: a class folder holds image "
                      "files directly; move its images up or remove it.")
    elif not entry.name.lower().endswith(IMAGE_EXTENSIONS):
      problems.append(f"{entry.path} is not an image file (extensions "
                      f"{', '.join(IMAGE_EXTENSIONS)}): move it out of the "
                      "class folder.")
    else:
      images.append(entry.path)
  if not images and not problems:
    problems.append(f"{class_dir} holds no image files: add images, or remove "
                    "this class folder from both train/ and test/.")
  return images, problems


def _list_split(root: str, split: str,
                class_names: Sequence[str]) -> tuple[list[str], np.ndarray, list[str]]:
  """Paths, int32 labels and problems of ``root/split/<class>/*`` in (class,
  name) order."""
  paths, labels, problems = [], [], []
  for label, class_name in enumerate(class_names):
    files, found = _scan_class_dir(os.path.join(root, split, class_name))
    problems.extend(found)
    paths.extend(files)
    labels.extend([label] * len(files))
  return paths, np.asarray(labels, dtype=np.int32), problems


def _class_names(root: str) -> tuple[str, ...]:
  """Sorted class folder names of ``root/train``; checks ``root/test`` matches."""
  for split in ("train", "test"):
    if not os.path.isdir(os.path.join(root, split)):
      raise MissingDataError(
          f"Image folder dataset: {os.path.join(root, split)} is not a "
          "directory. Expected the layout "
          "<data_dir>/{train,test}/<class>/<image files>.")

  def subdirs(split):
    return {e.name for e in os.scandir(os.path.join(root, split))
            if e.is_dir() and not e.name.startswith(".")}

  train, test = subdirs("train"), subdirs("test")
  if not train:
    raise DataError(f"{os.path.join(root, 'train')} has no class subfolders; "
                    "expected <data_dir>/train/<class>/<image files>.")
  if train != test:
    problems = [f"{os.path.join(root, 'train', c)} has no "
                f"{os.path.join(root, 'test', c)}: add test images of class "
                f"{c!r} there, or remove the class from train/."
                for c in sorted(train - test)]
    problems += [f"{os.path.join(root, 'test', c)} has no "
                 f"{os.path.join(root, 'train', c)}: add training images of "
                 f"class {c!r} there, or remove the class from test/."
                 for c in sorted(test - train)]
    _raise_problems(f"Image folder dataset {root}: train/ and test/ must have "
                    "the same class subfolders", problems)
  return tuple(sorted(train))


def _decode_file(path: str) -> np.ndarray:
  """uint8 (H, W, 3) pixels of one image file (grayscale/RGBA become RGB)."""
  return _decode_checked(path)[0]


def _decode_checked(path: str) -> tuple[np.ndarray | None, str | None, str | None]:
  """(uint8 (H, W, 3) pixels or None, the converted mode or None, problem or
  None) of one image file."""
  try:
    with Image.open(path) as im:
      mode = im.mode
      if mode != "RGB" and mode not in CONVERTIBLE_MODES:
        return None, None, (
            f"{path} has PIL mode {mode} (16/32-bit or float pixels), which "
            "has no faithful 8-bit RGB conversion: save it as 8-bit RGB.")
      if mode != "RGB":
        im = im.convert("RGB")
      pixels = np.asarray(im, dtype=np.uint8)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    # PIL: UnidentifiedImageError (an OSError) for a non-image, OSError for a
    # truncated file, SyntaxError for some malformed headers.
    detail = str(error).replace(f"'{path}'", "").replace(path, "").strip(" :")
    detail = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    return None, None, (f"{path} cannot be decoded ({detail}): replace it with "
                        "a valid image or delete it.")
  return pixels, (None if mode == "RGB" else mode), None


def _decode_files(paths: Sequence[str], shape: tuple) -> tuple:
  """Decodes ``paths`` into uint8 (len(paths), *shape).

  Module-level so that a process pool can pickle it.

  Returns:
    (images, problems, {converted mode: count}): a problem for each file that
    cannot be decoded, has an unconvertible mode, or whose (H, W, C) differs
    from ``shape`` (its row of ``images`` is then zeros).
  """
  out = np.zeros((len(paths),) + tuple(shape), dtype=np.uint8)
  problems, converted = [], {}
  for i, path in enumerate(paths):
    pixels, mode, problem = _decode_checked(path)
    if problem:
      problems.append(problem)
      continue
    if mode:
      converted[mode] = converted.get(mode, 0) + 1
    if pixels.shape != tuple(shape):
      problems.append(
          f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels but the "
          f"images are {shape[1]}x{shape[0]} (the size of the first one): "
          "resize it to that size or remove it.")
      continue
    out[i] = pixels
  return out, problems, converted


def _cpu_count() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    return os.cpu_count() or 1


def _decode_all(paths: Sequence[str], shape: tuple,
                num_workers: int | None) -> np.ndarray:
  """Decodes many files, in parallel processes when that pays off.

  Returns what `_decode_files` returns, for all of `paths`.

  PIL's per-file Python overhead holds the GIL, so threads are slower than a
  serial loop (measured); processes scale. The pool uses the "spawn" start
  method because forking a process that already runs JAX/TF threads can
  deadlock.
  """
  if num_workers is None:
    cpus = _cpu_count()
    num_workers = (min(cpus, 16) if len(paths) >= _MIN_FILES_FOR_POOL
                   and cpus >= _MIN_CPUS_FOR_POOL else 0)
  if num_workers <= 1 or len(paths) < 2 * num_workers:
    return _decode_files(paths, shape)
  # Several chunks per worker balance the load; each chunk returns one array.
  chunk = max(256, -(-len(paths) // (4 * num_workers)))
  chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
  try:
    with concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
      parts = list(pool.map(_decode_files, chunks, [shape] * len(chunks)))
  except futures_process.BrokenProcessPool as e:
    _log.warning("Decoding pool failed (%s); decoding serially.", e)
    return _decode_files(paths, shape)
  converted = {}
  for _, _, part in parts:
    for mode, count in part.items():
      converted[mode] = converted.get(mode, 0) + count
  return (np.concatenate([images for images, _, _ in parts]),
          [p for _, problems, _ in parts for p in problems], converted)


def _channel_stats(images: np.ndarray) -> tuple[tuple, tuple]:
  """Per-channel mean and std of uint8 (N,H,W,C) images in [0, 1] units."""
  levels = np.arange(256, dtype=np.float64)
  means, stds = [], []
  for ch in range(images.shape[-1]):
    # A 256-bin histogram gives exact moments without a float copy of the
    # whole dataset (150M values, 1.2 GB as float64, for CIFAR-sized data).
    hist = np.bincount(images[..., ch].ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    mean = float(p @ levels)
    std = float(np.sqrt(p @ np.square(levels - mean)))
    means.append(mean / 255)
    # A constant channel would divide by zero in `normalize`; one grey level
    # is a harmless floor.
    stds.append(max(std, 1.0) / 255)
  return tuple(means), tuple(stds)


def _load_image_folder(root: str, *,
                       num_workers: int | None) -> InMemoryDataset:
  """Loads ``root/{train,test}/<class>/*`` (see :func:`load_dataset`)."""
  class_names = _class_names(root)
  train_paths, train_labels, problems = _list_split(root, "train", class_names)
  test_paths, test_labels, test_problems = _list_split(root, "test", class_names)
  what = f"Image folder dataset {root}"
  _raise_problems(what, problems + test_problems)
  # The first decodable image fixes the size every other image must have.
  shape = None
  for path in train_paths + test_paths:
    pixels, _, problem = _decode_checked(path)
    if problem is None:
      shape = pixels.shape
      break
  if shape is None:
    _raise_problems(what, [_decode_checked(p)[2] for p in train_paths + test_paths])
  images, problems, converted = _decode_all(train_paths + test_paths, shape,
                                            num_workers)
  _raise_problems(what, problems)
  if converted:
    _log.info("%s: converted %s to RGB (alpha, if any, dropped).", what,
              ", ".join(f"{n} {mode} image(s)" for mode, n in sorted(converted.items())))
  train_images, test_images = images[:len(train_paths)], images[len(train_paths):]

  if class_names == CIFAR10_CLASS_NAMES:
    mean, std = CIFAR10_MEAN, CIFAR10_STD
  else:
    mean, std = _channel_stats(train_images)
  info = DatasetInfo(
      name="image_folder",
      num_classes=len(class_names),
      num_train=len(train_paths),
      num_test=len(test_paths),
      image_shape=tuple(int(d) for d in shape),
      mean=tuple(mean),
      std=tuple(std),
      class_names=class_names,
  )
  return InMemoryDataset(info, train_images, train_labels, test_images,
                         test_labels)


# --------------------------------------------------------------------------
# Batches.
# --------------------------------------------------------------------------


def _check_nonnegative_int(value, argname: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{argname} must be a non-negative integer, got {value!r}.")


def _check_examples(images: np.ndarray, labels: np.ndarray) -> None:
  if np.ndim(images) != 4:
    raise ValueError(f"images must have shape (N, H, W, C), got shape "
                     f"{np.shape(images)}.")
  if np.shape(labels) != (len(images),):
    raise ValueError(f"labels must have shape ({len(images)},) to match "
                     f"images, got {np.shape(labels)}.")


def _check_processes(global_batch_size: int, process_index: int,
                     process_count: int) -> None:
  if (isinstance(process_count, bool) or
      not isinstance(process_count, (int, np.integer)) or process_count < 1):
    raise ValueError(f"process_count must be a positive integer, got "
                     f"{process_count!r}.")
  _check_nonnegative_int(process_index, "process_index")
  if process_index >= process_count:
    raise ValueError(f"process_index must be < process_count="
                     f"{process_count}, got {process_index}.")
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be "
                     f"divisible by process_count={process_count}.")


def steps_per_epoch(num_train: int, global_batch_size: int) -> int:
  """Number of full global batches per epoch (the partial last one is dropped).

  Raises:
    ValueError: ``num_train`` negative, or ``global_batch_size`` not in
      [1, num_train].
  """
  _check_nonnegative_int(num_train, "num_train")
  _check_nonnegative_int(global_batch_size, "global_batch_size")
  if not 1 <= global_batch_size <= num_train:
    raise ValueError(f"global_batch_size must be in [1, num_train={num_train}]"
                     f", got {global_batch_size}.")
  return num_train // global_batch_size


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The int64 (num_examples,) example order of ``epoch``: a pure function."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def augment_params(seed: int, epoch: int, batch: int, batch_size: int,
                   pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Random flip and crop offsets of one global batch.

  Returns:
    (flip bool (batch_size,), offset_y int (batch_size,), offset_x int
    (batch_size,)), offsets in [0, 2 * pad]: the top-left corner of the crop
    inside the zero-padded image. Drawn from a generator seeded by exactly
    (seed, epoch, batch), so any batch can be regenerated on its own.
  """
  rng = np.random.default_rng([seed, epoch, batch, _AUGMENT_STREAM])
  flip = rng.random(batch_size) < 0.5
  offsets = rng.integers(0, 2 * pad + 1, size=(2, batch_size))
  return flip, offsets[0], offsets[1]


def augment_batch(images: np.ndarray, flip: np.ndarray, offset_y: np.ndarray,
                  offset_x: np.ndarray, pad: int) -> np.ndarray:
  """Zero-pads, crops and optionally mirrors a batch.

  Output ``i`` is ``padded[i, oy:oy + H, ox:ox + W]`` with
  ``padded = images`` zero-padded by ``pad`` pixels on each spatial side,
  ``(oy, ox) = (offset_y[i], offset_x[i])``, then mirrored left-right if
  ``flip[i]`` (PyTorch's RandomCrop(padding=pad) then RandomHorizontalFlip).

  Args:
    images: (B, H, W, C), any dtype (zero is the fill value).
    flip: bool (B,).
    offset_y, offset_x: int (B,) in [0, 2 * pad].
    pad: non-negative padding.

  Returns:
    (B, H, W, C) array of ``images.dtype``.
  """
  b, h, w, c = images.shape
  padded = np.zeros((b, h + 2 * pad, w + 2 * pad, c), images.dtype)
  padded[:, pad:pad + h, pad:pad + w] = images
  # Mirroring the padded image first turns "crop at x then mirror" into a
  # plain crop at the mirrored offset 2 * pad - x, so only the offsets differ
  # per image and images sharing an offset pair are cropped in one slice.
  padded[flip] = padded[flip, :, ::-1]
  offset_x = np.where(flip, 2 * pad - offset_x, offset_x)
  n = 2 * pad + 1
  key = offset_y * n + offset_x
  out = np.empty_like(images)
  for k in np.unique(key):  # At most (2 * pad + 1)**2 groups.
    rows = np.flatnonzero(key == k)
    oy, ox = divmod(int(k), n)
    out[rows] = padded[rows, oy:oy + h, ox:ox + w]
  return out


def train_batches(images: np.ndarray, labels: np.ndarray, *,
                  global_batch_size: int, seed: int, epoch: int,
                  start_batch: int = 0, process_index: int = 0,
                  process_count: int = 1, pad: int = 2) -> Iterator[dict]:
  """Augmented training batches of one epoch, this process's share.

  Global batch ``b`` (for ``b`` from ``start_batch`` to
  ``steps_per_epoch(N, global_batch_size) - 1``) holds the examples
  ``epoch_permutation(N, seed, epoch)[b * G:(b + 1) * G]``, augmented with
  :func:`augment_batch` using :func:`augment_params` (seed, epoch, b). This
  process receives rows ``[process_index * G / P, (process_index + 1) * G / P)``
  of it. The partial last batch is dropped, so every example appears at most
  once per epoch.

  Args:
    images: uint8 (N, H, W, C).
    labels: int (N,).
    global_batch_size: G, summed over processes; 1 <= G <= N, divisible by P.
    seed, epoch: non-negative integers that determine order and augmentation.
    start_batch: first batch to produce, in [0, steps_per_epoch]; earlier
      batches are skipped without being computed (resuming mid-epoch).
    process_index, process_count: this process and the number P of processes.
    pad: zero padding of the random crop in pixels (0 = no crop).

  Returns:
    An iterator of dicts ``{'image': (G/P, H, W, C) images.dtype,
    'label': int32 (G/P,)}``. Arguments are checked when called, not on the
    first ``next``.

  Raises:
    ValueError: naming the offending argument.
  """
  _check_examples(images, labels)
  num_steps = steps_per_epoch(len(images), global_batch_size)
  _check_processes(global_batch_size, process_index, process_count)
  _check_nonnegative_int(seed, "seed")
  _check_nonnegative_int(epoch, "epoch")
  _check_nonnegative_int(pad, "pad")
  _check_nonnegative_int(start_batch, "start_batch")
  if start_batch > num_steps:
    raise ValueError(f"start_batch must be <= steps_per_epoch={num_steps}, "
                     f"got {start_batch}.")
  return _train_batches(images, labels, global_batch_size, seed, epoch,
                        start_batch, num_steps, process_index, process_count,
                        pad)


def _train_batches(images, labels, global_batch_size, seed, epoch,
                   start_batch, num_steps, process_index, process_count,
                   pad) -> Iterator[dict]:
  perm = epoch_permutation(len(images), seed, epoch)
  local = global_batch_size // process_count
  lo, hi = process_index * local, (process_index + 1) * local
  for b in range(start_batch, num_steps):
    # Random draws always cover the whole global batch, so a process's rows
    # get the same augmentation whatever process_count is.
    flip, oy, ox = augment_params(seed, epoch, b, global_batch_size, pad)
    idx = perm[b * global_batch_size + lo:b * global_batch_size + hi]
    yield {
        "image": augment_batch(images[idx], flip[lo:hi], oy[lo:hi], ox[lo:hi],
                               pad),
        "label": labels[idx].astype(np.int32),
    }


def eval_batches(images: np.ndarray, labels: np.ndarray, *,
                 global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict]:
  """Evaluation batches in dataset order, every example exactly once.

  The last global batch is padded to ``global_batch_size`` with zero images,
  label 0 and mask 0.0. Each process receives rows
  ``[process_index * G / P, (process_index + 1) * G / P)`` of every global
  batch (possibly all padding).

  Args:
    images: (N, H, W, C).
    labels: int (N,).
    global_batch_size: G >= 1, divisible by P (may exceed N).
    process_index, process_count: this process and the number P of processes.

  Returns:
    An iterator of ``ceil(N / G)`` dicts ``{'image': (G/P, H, W, C)
    images.dtype, 'label': int32 (G/P,), 'mask': float32 (G/P,)}`` with mask
    1.0 for real examples.

  Raises:
    ValueError: naming the offending argument.
  """
  _check_examples(images, labels)
  _check_nonnegative_int(global_batch_size, "global_batch_size")
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}.")
  _check_processes(global_batch_size, process_index, process_count)
  return _eval_batches(images, labels, global_batch_size, process_index,
                       process_count)


def _eval_batches(images, labels, global_batch_size, process_index,
                  process_count) -> Iterator[dict]:
  n = len(images)
  local = global_batch_size // process_count
  for start in range(0, n, global_batch_size):
    lo = start + process_index * local
    real = max(0, min(local, n - lo))  # Rows of this slice that exist.
    image = np.zeros((local,) + images.shape[1:], images.dtype)
    label = np.zeros((local,), np.int32)
    mask = np.zeros((local,), np.float32)
    image[:real] = images[lo:lo + real]
    label[:real] = labels[lo:lo + real]
    mask[:real] = 1.0
    yield {"image": image, "label": label, "mask": mask}


def normalize(images, mean, std):
  """((x / 255 - mean) / std) as float32, on device; jit-safe.

  Args:
    images: (..., C) uint8 or float in [0, 255] (numpy or jax).
    mean, std: length-C sequences or arrays in [0, 1] pixel units.

  Returns:
    float32 jax array of the same shape.
  """
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (x - mean) / std
