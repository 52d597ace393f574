"""Robustness evaluation of a trained workdir: `evaluate_workdir(config, workdir)`.

    python main.py --config CFG --workdir DIR --mode=eval [--corrupted_dir D]

restores the latest checkpoint of DIR (parameters and the device-averaged
BatchNorm running statistics; the model runs with `train=False`) and measures
test accuracy on

* clean test images;
* Gaussian noise: N(0, σ²) with σ² = 0.01 (σ = 0.1) added in [0, 1] pixel
  space, clipped to [0, 1]. Image `i` of the test set always gets the noise
  of key fold_in(key(config.seed), i), whatever the batch size or device
  count;
* FGSM (ℓ∞, ε = 8/255) and FGM (ℓ2, ε = 0.5) in [0, 1] pixel space: one
  step along the gradient of the run's loss (`config.loss`, true one-hot
  label) with respect to the [0, 1] pixels, i.e. differentiated through the
  normalisation; the result is clipped to [0, 1]. Clipping can only shrink
  the perturbation, so an FGM image may end up closer than ε (in ℓ2) to the
  clean one. Perturbed images are not re-quantised to 8 bits;
* common corruptions, when the data is present offline: CIFAR-10-C from
  tfds (`cifar10_corrupted`, 19 corruptions × 5 severities) or the released
  `<corruption>.npy` files (CIFAR-10-C or CIFAR-100-C) in `corrupted_dir`.
  Nothing is ever downloaded: absent data gives a message in the results.

The attacks are small pure functions (`gaussian_noise`, `fgsm`, `fgm`); the
evaluation runs them inside a jitted data-parallel step that is written, like
the train step, as a per-device body mapped with `jax.shard_map` over the 1-D
'data' mesh, with the counts of correct predictions summed by `lax.psum`.

The results go to `<workdir>/eval.json` and `<workdir>/eval.md` (Markdown).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Iterator, NamedTuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sage_jax import checkpointing
from sage_jax import config as config_lib
from sage_jax import input_pipeline
from sage_jax import train

AXIS = train.AXIS

NOISE_VARIANCE = 0.01        # σ² of the additive Gaussian noise, [0, 1] pixels
FGSM_EPSILON = 8.0 / 255.0   # ℓ∞ budget, [0, 1] pixels
FGM_EPSILON = 0.5            # ℓ2 budget per image (over H, W, C), [0, 1] pixels
NUM_SEVERITIES = 5           # CIFAR-C: 5 severities of 10,000 images each

CIFAR10_C_TFDS_NAME = "cifar10_corrupted"
ATTACKS = ("clean", "gaussian_noise", "fgsm", "fgm")

# grad_fn(pixels (B, H, W, C) float in [0, 1], labels int (B,)) ->
#   d loss / d pixels (B, H, W, C), the loss summed over the batch.
GradFn = Callable[[jax.Array, jax.Array], jax.Array]


# --- Attacks: pure functions on [0, 1] pixels ------------------------------------


def gaussian_noise(key: jax.Array, pixels: jax.Array, variance: float) -> jax.Array:
  """Adds N(0, variance) noise to every pixel value and clips to [0, 1].

  Args:
    key: a PRNG key; the noise is a function of `key` and `pixels.shape`
      only. (The evaluation vmaps this over one key per test image, so an
      image's noise does not depend on the batch it is in.)
    pixels: float (..., H, W, C) in [0, 1].
    variance: σ² >= 0 of the noise in [0, 1] pixel units (0.01 = std 0.1).

  Returns:
    float array of `pixels`' shape and dtype, in [0, 1].
  """
  if variance < 0:
    raise ValueError(f"variance must be >= 0, got {variance!r}.")
  noise = jax.random.normal(key, pixels.shape, jnp.float32)
  noisy = pixels.astype(jnp.float32) + math.sqrt(variance) * noise
  return jnp.clip(noisy, 0.0, 1.0).astype(pixels.dtype)


def fgsm(grad_fn: GradFn, pixels: jax.Array, labels: jax.Array,
         epsilon: float) -> jax.Array:
  """Fast gradient sign method: clip(x + ε·sign(∇ₓ loss), 0, 1).

  Args:
    grad_fn: (pixels, labels) -> gradient of the loss w.r.t. `pixels`, same
      shape (see `input_gradient_fn`). Only its sign is used, so whether the
      loss is a sum or a mean over the batch does not matter.
    pixels: float (B, H, W, C) in [0, 1].
    labels: int (B,), the true labels.
    epsilon: ℓ∞ budget >= 0 in [0, 1] pixel units (8/255 is the usual one).

  Returns:
    The adversarial pixels, float (B, H, W, C) in [0, 1]. Before clipping,
    every pixel moved by exactly ε, except where the gradient is exactly 0
    (sign 0: that value is left unchanged).
  """
  if epsilon < 0:
    raise ValueError(f"epsilon must be >= 0, got {epsilon!r}.")
  grads = grad_fn(pixels, labels)
  return jnp.clip(pixels + epsilon * jnp.sign(grads), 0.0, 1.0)


def l2_direction(grads: jax.Array) -> jax.Array:
  """grads / ‖grads‖₂ per example (norm over all axes but the first).

  An all-zero gradient gives an all-zero direction (no perturbation) instead
  of NaN.

  Args:
    grads: float (B, ...).

  Returns:
    float (B, ...) with ℓ2 norm 1 per example, or 0 where grads is all 0.
  """
  axes = tuple(range(1, grads.ndim))
  grads = grads.astype(jnp.float32)
  # Dividing by the largest magnitude first keeps the squares in range: the
  # squares of a tiny but non-zero gradient (e.g. 1e-25) underflow to 0.
  scale = jnp.max(jnp.abs(grads), axis=axes, keepdims=True)
  grads = grads / jnp.where(scale > 0, scale, 1.0)
  norm = jnp.sqrt(jnp.sum(jnp.square(grads), axis=axes, keepdims=True))
  return grads / jnp.where(norm > 0, norm, 1.0)


def fgm(grad_fn: GradFn, pixels: jax.Array, labels: jax.Array,
        epsilon: float) -> jax.Array:
  """Fast gradient method, ℓ2: clip(x + ε·g/‖g‖₂, 0, 1), g = ∇ₓ loss.

  The norm is taken per image over (H, W, C). An image whose gradient is
  exactly 0 is left unchanged. Clipping to [0, 1] happens after the step, so
  the final perturbation can have an ℓ2 norm below ε.

  Args:
    grad_fn: (pixels, labels) -> gradient of the loss w.r.t. `pixels`. Each
      image's gradient must depend on that image only (e.g. a loss summed
      over the batch, model in eval mode); its scale does not matter.
    pixels: float (B, H, W, C) in [0, 1].
    labels: int (B,), the true labels.
    epsilon: ℓ2 budget >= 0 per image in [0, 1] pixel units (e.g. 0.5).

  Returns:
    The adversarial pixels, float (B, H, W, C) in [0, 1].
  """
  if epsilon < 0:
    raise ValueError(f"epsilon must be >= 0, got {epsilon!r}.")
  grads = grad_fn(pixels, labels)
  return jnp.clip(pixels + epsilon * l2_direction(grads), 0.0, 1.0)


def input_gradient_fn(logits_fn: Callable[[jax.Array], jax.Array],
                      loss_fn: Callable, num_classes: int) -> GradFn:
  """The attacks' `grad_fn` for a classifier on [0, 1] pixels.

  Args:
    logits_fn: pixels float (B, H, W, C) in [0, 1] -> logits (B, K),
      normalisation included (so the gradient flows through it).
    loss_fn: (logits (1, K), targets (1, K)) -> scalar, e.g. an entry of
      `train.LOSS_FNS`.
    num_classes: K.

  Returns:
    grad_fn(pixels, labels) -> d/d pixels of Σ_i loss_fn(logits_i, onehot_i):
    the per-example losses are summed, not averaged, so each image's
    gradient is that of its own loss, independent of the batch size.
  """
  def total_loss(pixels, labels):
    logits = logits_fn(pixels)
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    per_example = jax.vmap(lambda l, t: loss_fn(l[None], t[None]))(logits, targets)
    return jnp.sum(per_example)

  return jax.grad(total_loss)


# --- The data-parallel evaluation step ---------------------------------------------


def make_robustness_step(model, loss_fn: Callable, num_classes: int, mean, std,
                         mesh, *, seed: int,
                         noise_variance: float = NOISE_VARIANCE,
                         fgsm_epsilon: float = FGSM_EPSILON,
                         fgm_epsilon: float = FGM_EPSILON) -> Callable:
  """jit(shard_map(body)) counting correct predictions under every attack.

  The returned step maps (params, batch_stats, images uint8 (G, H, W, C),
  labels int32 (G,), mask float32 (G,), indices int32 (G,)) to a dict of
  float32 scalars: for every name in `ATTACKS` the number of correct
  predictions among rows with mask 1, and 'count' (the sum of the mask).
  `indices` are the images' positions in the test set (the noise key of
  image i is fold_in(key(seed), i)). Images, labels, mask and indices are
  sharded over 'data'; params and batch_stats are replicated.

  Args:
    model: a linen module called as `model.apply(variables, x, train=False)`.
    loss_fn: the run's loss, (logits (B, K), targets (B, K)) -> scalar.
    num_classes: K.
    mean, std: per-channel normalisation constants in [0, 1] pixel units.
    mesh: 1-D device mesh with axis 'data'.
    seed: seed of the Gaussian noise.
    noise_variance, fgsm_epsilon, fgm_epsilon: the attacks' strengths.
  """
  mean = np.asarray(mean, np.float32)
  std = np.asarray(std, np.float32)

  def body(params, batch_stats, images_uint8, labels, mask, indices):
    variables = {"params": params, "batch_stats": batch_stats}

    def logits_fn(pixels):
      # The same arithmetic as input_pipeline.normalize, so clean accuracy
      # matches the training run's evaluation bit for bit.
      return model.apply(variables, (pixels - mean) / std, train=False)

    pixels = images_uint8.astype(jnp.float32) / 255.0
    grads = input_gradient_fn(logits_fn, loss_fn, num_classes)(pixels, labels)
    # Both attacks start from the same clean pixels: one backward pass
    # serves both.
    clean_grad = lambda *_: grads
    base_key = jax.random.key(seed)
    keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(indices)
    inputs = {
        "clean": pixels,
        "gaussian_noise": jax.vmap(gaussian_noise, in_axes=(0, 0, None))(
            keys, pixels, noise_variance),
        "fgsm": fgsm(clean_grad, pixels, labels, fgsm_epsilon),
        "fgm": fgm(clean_grad, pixels, labels, fgm_epsilon),
    }
    sums = {"count": jnp.sum(mask)}
    for name, x in inputs.items():
      correct = jnp.argmax(logits_fn(x), axis=-1) == labels
      sums[name] = jnp.sum(correct.astype(jnp.float32) * mask)
    return jax.lax.psum(sums, AXIS)

  # check_vma=False: pmap semantics for the body that takes gradients, as in
  # train.make_train_step (no implicit collectives from differentiating).
  mapped = jax.shard_map(body, mesh=mesh,
                         in_specs=(P(), P(), P(AXIS), P(AXIS), P(AXIS), P(AXIS)),
                         out_specs=P(), check_vma=False)
  return jax.jit(mapped)


def _sharded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                     sharding, with_indices: bool) -> Iterator[tuple]:
  """(images, labels, mask[, indices]) global arrays of padded eval batches."""
  process_index, process_count = jax.process_index(), jax.process_count()
  local = batch_size // process_count
  for b, batch in enumerate(input_pipeline.eval_batches(
      images, labels, global_batch_size=batch_size, process_index=process_index,
      process_count=process_count)):
    batch["index"] = (b * batch_size + process_index * local
                      + np.arange(local, dtype=np.int32))
    keys = ("image", "label", "mask") + (("index",) if with_indices else ())
    yield tuple(jax.make_array_from_process_local_data(sharding, batch[k])
                for k in keys)


def _accumulate(step: Callable, variables: tuple, images, labels, batch_size,
                sharding, *, with_indices: bool = False) -> dict:
  """Runs `step` over padded batches and sums its outputs on the host.

  `step(*variables, images, labels, mask[, indices])` returns a dict of sums.
  """
  totals: dict = {}
  for arrays in _sharded_batches(images, labels, batch_size, sharding,
                                 with_indices):
    sums = step(*variables, *arrays)
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return totals


# --- Restoring a workdir -------------------------------------------------------------


def _require_checkpoint(workdir: str) -> None:
  """Fails fast (before any data is loaded) when `workdir` has no checkpoint.

  Opens the directory read-only (see `checkpointing.Checkpointer`), so a
  training run still writing to the workdir is not disturbed.
  """
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  hint = ("train first: `python main.py --config CFG --workdir "
          f"{workdir}`, or pass the --workdir of a trained run.")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"No checkpoint to evaluate: {directory} does not "
                            f"exist; {hint}")
  with checkpointing.Checkpointer(directory, read_only=True) as checkpointer:
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(f"No checkpoint to evaluate in {directory}; {hint}")


def _check_against_run_config(config, workdir: str) -> None:
  """Compares `config` with the run's <workdir>/config.json, if present."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    run = json.load(f)
  for field in ("model.name", "model.width"):
    section, leaf = field.split(".")
    ours, theirs = config[section][leaf], run.get(section, {}).get(leaf, None)
    if theirs is not None and ours != theirs:
      raise ValueError(
          f"config.{field}={ours!r} but the run in {workdir} was trained with "
          f"{theirs!r} (its config.json); pass the run's config.")
  for field in ("loss", "seed"):
    if field in run and run[field] != config[field]:
      logging.warning("config.%s=%r differs from the run's %r (%s); evaluating "
                      "with %r.", field, config[field], run[field], path,
                      config[field])


def _replicate(tree, mesh):
  """Host arrays -> jax.Arrays replicated over `mesh` (multi-host safe)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: jax.make_array_from_callback(
          np.shape(x), sharding, lambda index, x=x: np.asarray(x)[index]), tree)


# --- Corrupted test sets -------------------------------------------------------------


class CorruptedSet(NamedTuple):
  """One corruption at one severity: uint8 (N, H, W, C) images, int (N,) labels."""
  corruption: str
  severity: int
  images: np.ndarray
  labels: np.ndarray


class _Unavailable(Exception):
  """The corrupted data is not there; the message goes into the results."""


def cifar10_c_config_names() -> list[str]:
  """tfds's `cifar10_corrupted` configs, '<corruption>_<severity>' (95).

  Read from the builder class, so no data and no network are needed.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return [c.name for c in tfds.builder_cls(CIFAR10_C_TFDS_NAME).BUILDER_CONFIGS]


def _split_config_name(name: str) -> tuple[str, int]:
  corruption, _, severity = name.rpartition("_")
  return corruption, int(severity)


def _missing_cifar10_c_message(data_dir: str | None) -> str:
  if data_dir:
    where, copy_to = data_dir, data_dir
  else:
    where = "the tfds default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    copy_to = "~/tensorflow_datasets (or set $TFDS_DATA_DIR=DIR)"
  return (
      f"not available: prepare it offline with `tfds build {CIFAR10_C_TFDS_NAME} "
      f"--data_dir DIR` on a machine with internet and copy DIR to {copy_to}, "
      "or put CIFAR-10-C.tar (https://zenodo.org/record/2535967) into "
      "DIR/downloads/manual/ and run that command here; or extract "
      "CIFAR-10-C.tar and pass --corrupted_dir=<its folder of .npy files>. "
      f"tfds dataset {CIFAR10_C_TFDS_NAME!r} is not prepared in {where} "
      "(main.py downloads it when the download host is reachable and "
      "dataset.download is True).")


def _tfds_corrupted_sets(data_dir: str | None) -> tuple[list, Callable]:
  """The CIFAR-10-C configs and a loader reading one of them from `data_dir`.

  Returns:
    (names, load) with `load(name) -> CorruptedSet`; `load` raises
    `_Unavailable` when that config is not prepared in `data_dir`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  input_pipeline._disable_tfds_network(tfds)  # pylint: disable=protected-access
  not_found = (AssertionError, FileNotFoundError,
               tfds.core.registered.DatasetNotFoundError)

  dataset_absent = []  # set once <data_dir>/cifar10_corrupted is known absent

  def load(name: str) -> CorruptedSet:
    if dataset_absent:  # No config can be there: skip 94 more tfds lookups.
      raise _Unavailable(_missing_cifar10_c_message(data_dir))
    # Attempt the read and translate tfds's "not prepared" error (as
    # input_pipeline does) rather than asking `is_prepared()` first: it is
    # just as quick, and it also works under tfds.testing.mock_data.
    builder = None
    try:
      builder = tfds.builder(f"{CIFAR10_C_TFDS_NAME}/{name}", data_dir=data_dir,
                             try_gcs=False)
      ds = builder.as_dataset(split="test", shuffle_files=False)
    except not_found as e:  # tfds raises AssertionError when unprepared.
      # data_path is <data_dir>/cifar10_corrupted/<config>/<version>.
      if builder is None or not builder.data_path.parent.parent.exists():
        dataset_absent.append(True)
      raise _Unavailable(_missing_cifar10_c_message(data_dir)) from e
    images, labels = input_pipeline._tf_dataset_to_numpy(tfds, ds)  # pylint: disable=protected-access
    corruption, severity = _split_config_name(name)
    return CorruptedSet(corruption, severity, images, labels)

  return cifar10_c_config_names(), load


def _load_npy(path: str, **kwargs) -> np.ndarray:
  """np.load of one .npy file; DataError naming it when it cannot be read."""
  try:
    return np.load(path, allow_pickle=False, **kwargs)
  except (OSError, ValueError, EOFError) as error:
    raise input_pipeline.DataError(
        f"{path} is not a readable .npy file ({type(error).__name__}: "
        f"{error}): download it again, or move it out of the folder.") from None


def _npy_corrupted_sets(directory: str, image_shape, num_classes: int) -> tuple:
  """The `<corruption>.npy` sets in `directory` and a loader for each.

  The released CIFAR-10-C / CIFAR-100-C layout: `labels.npy` int (N,) and for
  each corruption `<corruption>.npy` uint8 (N, H, W, C), N = 5 × n: rows
  [(s-1)·n, s·n) hold severity s.

  Returns:
    (names '<corruption>_<severity>', load(name) -> CorruptedSet).

  Raises:
    input_pipeline.MissingDataError (a FileNotFoundError) /
    input_pipeline.DataError (a ValueError): naming --corrupted_dir or each
    bad file, and the fix; raised before any evaluation.
  """
  if not os.path.isdir(directory):
    raise input_pipeline.MissingDataError(
        f"--corrupted_dir={directory} is not a directory; pass the folder of "
        "the released CIFAR-10-C/CIFAR-100-C .npy files.")
  labels_path = os.path.join(directory, "labels.npy")
  if not os.path.exists(labels_path):
    raise input_pipeline.MissingDataError(
        f"--corrupted_dir={directory} has no labels.npy; expected the released "
        "CIFAR-10-C/CIFAR-100-C layout: labels.npy and <corruption>.npy.")
  labels = _load_npy(labels_path)
  if (labels.ndim != 1 or len(labels) % NUM_SEVERITIES or not len(labels)
      or labels.dtype.kind not in "iu"):
    raise input_pipeline.DataError(
        f"{labels_path} must hold integer labels of shape (5·n,) (n test "
        f"images × 5 severities), got {labels.dtype} {labels.shape}: use the "
        "labels.npy released with these files.")
  bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
  if bad.size:
    raise input_pipeline.DataError(
        f"{labels_path} holds {bad.size} label(s) outside [0, {num_classes}) "
        f"of the evaluated model (e.g. row {bad[0]}: {labels[bad[0]]}): it "
        f"belongs to a dataset with more classes; pass the corrupted version "
        f"of the dataset this model was trained on ({num_classes} classes).")
  files = sorted(f for f in os.listdir(directory)
                 if f.endswith(".npy") and f != "labels.npy")
  if not files:
    raise input_pipeline.MissingDataError(
        f"--corrupted_dir={directory} holds no <corruption>.npy files besides "
        "labels.npy.")
  expected = (len(labels),) + tuple(image_shape)
  problems = []
  for f in files:  # Check every file up front, before hours of evaluation.
    path = os.path.join(directory, f)
    try:
      array = _load_npy(path, mmap_mode="r")
    except input_pipeline.DataError as error:
      problems.append(str(error))
      continue
    if array.shape != expected or array.dtype != np.uint8:
      problems.append(
          f"{path} is {array.dtype} {array.shape}, but must be uint8 "
          f"{expected} (5 severities × the {len(labels) // NUM_SEVERITIES} "
          f"test images of labels.npy, each like the model's "
          f"{tuple(image_shape)}): use the file released with labels.npy, or "
          "move it out of the folder.")
  input_pipeline._raise_problems(  # pylint: disable=protected-access
      f"--corrupted_dir={directory}", problems)
  n = len(labels) // NUM_SEVERITIES

  def load(name: str) -> CorruptedSet:
    corruption, severity = _split_config_name(name)
    array = np.load(os.path.join(directory, corruption + ".npy"), mmap_mode="r")
    rows = slice((severity - 1) * n, severity * n)
    return CorruptedSet(corruption, severity, np.ascontiguousarray(array[rows]),
                        labels[rows].astype(np.int32))

  names = [f"{f[:-4]}_{s}" for f in files for s in range(1, NUM_SEVERITIES + 1)]
  return names, load


def _corruption_source(config, info: input_pipeline.DatasetInfo,
                       corrupted_dir: str | None) -> tuple[str, Any]:
  """(description, (names, load) or the not-available message)."""
  if corrupted_dir:
    return (f".npy files in {corrupted_dir}",
            _npy_corrupted_sets(corrupted_dir, info.image_shape, info.num_classes))
  is_cifar10 = (config.dataset.name == "cifar10" or (
      config.dataset.name == "image_folder"
      and tuple(info.class_names) == input_pipeline.CIFAR10_CLASS_NAMES))
  if is_cifar10:
    # An image folder of CIFAR-10 has no tfds dir of its own: tfds's default.
    data_dir = ((config.dataset.data_dir or None)
                if config.dataset.name == "cifar10" else None)
    where = data_dir or "the tfds default data dir"
    return f"tfds {CIFAR10_C_TFDS_NAME} in {where}", _tfds_corrupted_sets(data_dir)
  if config.dataset.name == "cifar100":
    return "CIFAR-100-C", (
        "not available: CIFAR-100-C is not in tfds. Download CIFAR-100-C.tar "
        "(https://zenodo.org/record/3555552) on a machine with internet, "
        "extract it and pass --corrupted_dir=<the CIFAR-100-C folder with "
        "labels.npy and <corruption>.npy>.")
  return "corrupted test set", (
      "not available: no corrupted version of this image folder is known; "
      "pass --corrupted_dir=<folder with labels.npy and <corruption>.npy>.")


def _evaluate_corruptions(names, load, eval_step, variables, batch_size,
                          sharding) -> dict:
  """Accuracy of every available (corruption, severity) and the means.

  Returns:
    {'available': False, 'message'} when no set could be loaded, else
    {'available': True, 'accuracy': {corruption: {'1'..'5', 'mean'}},
    'severity_mean', 'mean_accuracy', 'num_sets'} plus 'missing' and
    'message' when only some sets were found.
  """
  table: dict = {}
  missing, message = [], ""
  for name in names:
    try:
      data = load(name)
    except _Unavailable as e:
      missing.append(name)
      message = str(e)
      continue
    sums = _accumulate(eval_step, variables, data.images, data.labels,
                       batch_size, sharding)
    table.setdefault(data.corruption, {})[str(data.severity)] = (
        sums["correct"] / sums["count"])
    logging.info("%s severity %d: accuracy %.4f", data.corruption, data.severity,
                 table[data.corruption][str(data.severity)])
  if not table:
    return {"available": False, "message": message}
  by_severity: dict = {}
  for row in table.values():
    row["mean"] = float(np.mean(list(row.values())))
    for severity, accuracy in row.items():
      if severity != "mean":
        by_severity.setdefault(severity, []).append(accuracy)
  values = [a for row in table.values() for s, a in row.items() if s != "mean"]
  results = {
      "available": True,
      "accuracy": table,
      "severity_mean": {s: float(np.mean(v)) for s, v in sorted(by_severity.items())},
      "mean_accuracy": float(np.mean(values)),
      "num_sets": len(values),
  }
  if missing:
    results["missing"] = missing
    results["message"] = (f"{len(missing)} of {len(names)} sets missing (the "
                          f"means leave them out): {message}")
  return results


# --- The whole evaluation ---------------------------------------------------------------


def _mesh(config) -> jax.sharding.Mesh:
  devices = jax.devices()
  if config.num_devices > len(devices):
    raise ValueError(f"config.num_devices={config.num_devices} but only "
                     f"{len(devices)} devices are available.")
  devices = devices[:config.num_devices] if config.num_devices else devices
  if config.eval_batch_size % len(devices):
    raise ValueError(
        f"config.eval_batch_size={config.eval_batch_size} must be divisible by "
        f"the number of devices ({len(devices)}).")
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str, *,
                     corrupted_dir: str | None = None) -> dict:
  """Evaluates the latest checkpoint of `workdir`; writes eval.json and eval.md.

  Args:
    config: the run's configuration (model, dataset, loss, seed,
      eval_batch_size, num_devices are used).
    workdir: a training workdir (`<workdir>/checkpoints`).
    corrupted_dir: optional folder of released `<corruption>.npy` +
      `labels.npy` files (CIFAR-10-C or CIFAR-100-C); without it CIFAR-10
      runs look for tfds's `cifar10_corrupted` in the run's tfds data dir.

  Returns:
    The results (the content of eval.json): 'clean', 'gaussian_noise',
    'fgsm', 'fgm' each with 'accuracy' and the attack's settings, and
    'corruptions' with 'available' and either the accuracies or 'message'.

  Raises:
    FileNotFoundError: no checkpoint in `workdir` (checked before any data is
      loaded), the dataset is missing, or `corrupted_dir` is unusable.
    ValueError: invalid config, or a model differing from the run's.
  """
  start = time.perf_counter()
  config_lib.validate_config(config)
  _require_checkpoint(workdir)
  _check_against_run_config(config, workdir)
  mesh = _mesh(config)
  sharding = NamedSharding(mesh, P(AXIS))

  data = input_pipeline.load_dataset(config.dataset.name,
                                     config.dataset.data_dir or None)
  info = data.info
  corruption_source = _corruption_source(config, info, corrupted_dir)

  parts = train.create_components(
      config, mesh, num_classes=info.num_classes, mean=info.mean, std=info.std,
      steps_per_epoch=max(1, info.num_train // config.batch_size))
  params, batch_stats, step = train.restore_variables(
      config, workdir, parts.model, parts.tx, info.image_shape)
  variables = (_replicate(params, mesh), _replicate(batch_stats, mesh))
  logging.info("Evaluating step %d of %s on %d devices.", step, workdir,
               mesh.devices.size)

  robustness_step = make_robustness_step(
      parts.model, parts.loss_fn, info.num_classes, info.mean, info.std, mesh,
      seed=config.seed)
  sums = _accumulate(robustness_step, variables, data.test_images,
                     data.test_labels, config.eval_batch_size, sharding,
                     with_indices=True)
  accuracy = {name: sums[name] / sums["count"] for name in ATTACKS}

  results = {
      "workdir": os.path.abspath(workdir),
      "step": step,
      "model": config.model.name,
      "method": config.method,
      "dataset": config.dataset.name,
      "loss": config.loss,
      "num_test": int(sums["count"]),
      "num_devices": int(mesh.devices.size),
      "clean": {"accuracy": accuracy["clean"]},
      "gaussian_noise": {"accuracy": accuracy["gaussian_noise"],
                         "variance": NOISE_VARIANCE,
                         "std": math.sqrt(NOISE_VARIANCE), "seed": config.seed},
      "fgsm": {"accuracy": accuracy["fgsm"], "norm": "linf",
               "epsilon": FGSM_EPSILON},
      "fgm": {"accuracy": accuracy["fgm"], "norm": "l2", "epsilon": FGM_EPSILON},
  }
  source, found = corruption_source
  if isinstance(found, str):
    results["corruptions"] = {"source": source, "available": False,
                              "message": found}
  else:
    results["corruptions"] = {"source": source, **_evaluate_corruptions(
        *found, parts.eval_step, variables, config.eval_batch_size, sharding)}
  results["seconds"] = time.perf_counter() - start
  if jax.process_index() == 0:
    write_results(results, workdir)
  return results


# --- Output ----------------------------------------------------------------------------


def _percent(accuracy: float) -> str:
  return f"{100 * accuracy:.2f}"


def to_markdown(results: dict) -> str:
  """eval.md: the summary table and, when evaluated, the corruption table."""
  lines = [
      "# Robustness evaluation",
      "",
      f"`{results['workdir']}`, checkpoint step {results['step']}: "
      f"{results['model']} trained with {results['method']} on "
      f"{results['dataset']}, {results['num_test']} test images.",
      "",
      "| evaluation | setting ([0, 1] pixels) | accuracy (%) |",
      "|---|---|---|",
      f"| clean | | {_percent(results['clean']['accuracy'])} |",
      f"| Gaussian noise | σ² = {results['gaussian_noise']['variance']:g} "
      f"(σ = {results['gaussian_noise']['std']:g}), seed "
      f"{results['gaussian_noise']['seed']} | "
      f"{_percent(results['gaussian_noise']['accuracy'])} |",
      f"| FGSM | ℓ∞, ε = {round(results['fgsm']['epsilon'] * 255):d}/255 | "
      f"{_percent(results['fgsm']['accuracy'])} |",
      f"| FGM | ℓ2, ε = {results['fgm']['epsilon']:g} | "
      f"{_percent(results['fgm']['accuracy'])} |",
  ]
  corruptions = results["corruptions"]
  if corruptions["available"]:
    lines.append(f"| corruptions (mean of {corruptions['num_sets']}) | "
                 f"{corruptions['source']} | "
                 f"{_percent(corruptions['mean_accuracy'])} |")
  else:
    lines.append(f"| corruptions | {corruptions['source']} | n/a |")
  lines += [
      "",
      "Perturbed images are clipped to [0, 1] after the perturbation, so the "
      "FGM perturbation's ℓ2 norm can end up below ε. Attacks use the run's "
      f"loss ({results['loss']}) with the true label, one step, no "
      "re-quantisation to 8 bits.",
      "",
  ]
  if corruptions["available"]:
    severities = list(corruptions["severity_mean"])
    lines += ["## Corruptions: accuracy (%) per severity", "",
              "| corruption | " + " | ".join(severities) + " | mean |",
              "|---|" + "---|" * (len(severities) + 1)]
    for name, row in sorted(corruptions["accuracy"].items()):
      cells = [_percent(row[s]) if s in row else "" for s in severities]
      lines.append(f"| {name} | " + " | ".join(cells) + f" | {_percent(row['mean'])} |")
    lines.append("| **mean** | " + " | ".join(
        _percent(corruptions["severity_mean"][s]) for s in severities)
                 + f" | **{_percent(corruptions['mean_accuracy'])}** |")
  else:
    lines.append(f"Corruptions: {corruptions['message']}")
  return "\n".join(lines) + "\n"


def write_results(results: dict, workdir: str) -> None:
  """Writes <workdir>/eval.json and <workdir>/eval.md."""
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(workdir, "eval.md"), "w") as f:
    f.write(to_markdown(results))
