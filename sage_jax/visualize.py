"""A picture of what SAGE, its ablations, Mixup and CutMix make of real images.

    python -m sage_jax.visualize --workdir DIR --out grid.png --num_pairs 4
    python -m sage_jax.visualize --config configs/smoke.py \\
        --data_dir /tmp/cifar10-jpeg --out grid.png     # untrained model

One row per pair (image i, partner π(i)), with the columns of `COLUMNS`:
the two images, their saliency, SAGE's mask M (white = image i, black =
partner), the SAGE image, "w/o OR" (no shift, `search="none"`), "w/o SM"
(constant mask M = λ, `mask="constant"`), Mixup, CutMix, SaliencyMix
(its box around the peak of the partner's fine-grained saliency, shown for
every row's own partner and always mixed), Puzzle Mix and Co-Mixup (all the
images of the picture mixed as one chunk, so not only the pair). Every
pairwise method mixes the same pair
with the same λ (the `lam=`/`perm=` overrides) and the same key, so the
columns differ only by the method. Manifold Mixup mixes hidden features; its
input-level case (k = 0) is the Mixup column. Under each mixed image
are its label weights, e.g. "cat 0.62 / dog 0.38".

The saliency is that of the workdir's trained model (the latest checkpoint),
computed as in training: gradient of the training loss with respect to the
normalised input, BatchNorm in train mode (the updated statistics are thrown
away), then `augment.saliency_map`. Without `--workdir` the model is freshly
initialised and the title says so.

`augmentation_grid` is the pure part (arrays in, an RGB array out); `main`
adds loading the run and its data.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sage_jax import augment
from sage_jax import input_pipeline
from sage_jax.curves import write_png  # re-exported: the PNG writer

COLUMNS = ("image i", "partner π(i)", "saliency s_i", "saliency s_π(i)",
           "SAGE mask M\n(white: image i)", "SAGE", "w/o OR\n(no shift)", "w/o SM\n(M = λ)",
           "Mixup", "CutMix", "SaliencyMix", "Puzzle Mix", "Co-Mixup")
# The mixed-image columns, in order (names of `mix_columns`' results).
MIXED_COLUMNS = ("SAGE", "w/o OR", "w/o SM", "Mixup", "CutMix", "SaliencyMix",
                 "Puzzle Mix", "Co-Mixup")

# Layout in inches (at any dpi): square image cells, a caption band under
# each row for up to three lines of 7-pt text, a header band for the
# two-line column titles and a band for the figure title.
_CELL = 1.0
_GAP = 0.12
_CAPTION = 0.42
_HEADER = 0.42
_TITLE = 0.5
_MARGIN = 0.1
_SALIENCY_CMAP = "inferno"


# --- Pure helpers ---------------------------------------------------------------------


def pair_permutation(num_pairs: int) -> np.ndarray:
  """Partners for a batch of 2n images: image k pairs with k+n and back.

  Returns:
    int32 (2n,) π with π(k) = k + n for k < n and π(k) = k - n otherwise;
    rows 0..n-1 are the displayed pairs.
  """
  n = int(num_pairs)
  return np.concatenate([np.arange(n, 2 * n), np.arange(0, n)]).astype(np.int32)


def pick_pairs(labels: np.ndarray, num_pairs: int, seed: int = 0) -> np.ndarray:
  """Indices of 2n examples to show: n images, then their n partners.

  Draws images at random (seeded) and, for each, a partner of another class
  when there is one, so the mixed labels are informative.

  Args:
    labels: int (N,) labels of the pool, N ≥ 2·num_pairs.
    num_pairs: n ≥ 1.
    seed: for the draw.

  Returns:
    int64 (2n,) distinct indices into `labels`, in `pair_permutation` order.

  Raises:
    ValueError: if `num_pairs` < 1 or the pool has fewer than 2n examples.
  """
  labels = np.asarray(labels)
  if num_pairs < 1:
    raise ValueError(f"num_pairs must be >= 1; got {num_pairs}.")
  if len(labels) < 2 * num_pairs:
    raise ValueError(f"{num_pairs} pairs need {2 * num_pairs} images; the "
                     f"test split has {len(labels)}.")
  order = list(np.random.default_rng(seed).permutation(len(labels)))
  firsts = order[:num_pairs]
  rest = order[num_pairs:]
  partners = []
  for first in firsts:
    other = next((k for k in rest if labels[k] != labels[first]), rest[0])
    rest.remove(other)
    partners.append(other)
  return np.asarray(firsts + partners, np.int64)


def denormalize(images: Any, mean: Sequence[float], std: Sequence[float]
                ) -> np.ndarray:
  """Normalised (..., C) images -> float32 [0, 1] for display (clipped).

  The inverse of `input_pipeline.normalize`; the zero fill of a shifted
  partner comes back as the dataset mean colour.
  """
  pixels = np.asarray(images, np.float32) * np.asarray(std, np.float32)
  return np.clip(pixels + np.asarray(mean, np.float32), 0.0, 1.0)


def colorize(maps: Any, cmap: str = _SALIENCY_CMAP, vmax: Any = None
             ) -> np.ndarray:
  """(..., H, W) maps -> float32 (..., H, W, 3) RGB with a matplotlib colormap.

  Each map is scaled to [0, 1] by its own maximum (saliency has no natural
  unit), unless `vmax` is given (e.g. 1.0 for a mask in [0, 1]).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  maps = np.asarray(maps, np.float32)
  if vmax is None:
    top = maps.max(axis=(-2, -1), keepdims=True)
    scaled = maps / np.where(top > 0, top, 1.0)
  else:
    scaled = maps / vmax
  return matplotlib.colormaps[cmap](np.clip(scaled, 0.0, 1.0))[..., :3].astype(
      np.float32)


def _to_rgb(images: np.ndarray) -> np.ndarray:
  """(..., H, W, C) with C in {1, 3} -> (..., H, W, 3)."""
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _weights_caption(names: Sequence[str], own: Sequence[int], partner: Sequence[int],
                     weight: Sequence[float]) -> list[str]:
  """Per row "cat 0.62\\ndog 0.38": image i's class and γ, partner's and 1-γ."""
  return [f"{names[a]} {w:.2f}\n{names[b]} {1.0 - w:.2f}"
          for a, b, w in zip(own, partner, np.asarray(weight, np.float64))]


def _top_classes_caption(names: Sequence[str], label_vectors: np.ndarray) -> list[str]:
  """Per row the two heaviest classes of a (n, K) label vector, e.g.
  "ship 0.75\\ncat 0.25" (one line when a single class has all the weight)."""
  captions = []
  for vector in np.asarray(label_vectors, np.float64):
    top = np.argsort(-vector, kind="stable")[:2]
    lines = [f"{names[c]} {vector[c]:.2f}" for c in top if vector[c] > 0.005]
    captions.append("\n".join(lines))
  return captions


def mix_columns(key: jax.Array, images: jax.Array, labels: np.ndarray,
                saliency: jax.Array, *, num_classes: int, lam: float,
                search: str = "sampled", sample_fraction: float = 0.01,
                images_uint8: Any = None, mean: Any = 0.0, std: Any = 1.0) -> dict:
  """Every method's result for the pairs of `pair_permutation`.

  Args:
    key: PRNG key shared by all methods (SAGE's offset sample, CutMix's box).
    images: float32 (2n, H, W, C) normalised images; rows n.. are partners.
    labels: int (2n,).
    saliency: float32 (2n, H, W), non-negative.
    num_classes: K.
    lam: λ in [0, 1], the share of image i, used by every method.
    search, sample_fraction: SAGE's offset search (as in training).
    images_uint8: the same images as uint8 (2n, H, W, C), for SaliencyMix's
      saliency; without them there is no "SaliencyMix" entry.
    mean, std: the normalisation of `images` (Puzzle Mix compares colours in
      pixel space).

  Returns:
    dict with, for the n displayed rows: "mask" (n, H, W) SAGE's mask M,
    "offset" int (n, 2) SAGE's τ*, and for each of "SAGE", "w/o OR",
    "w/o SM", "Mixup", "CutMix" (and "SaliencyMix") a pair (images
    (n, H, W, C) normalised, weights (n,) = the label weight of image i).
    SaliencyMix pastes one box per row, from the map of that row's partner
    (the training step uses one box per batch). Puzzle Mix uses `saliency`
    with the block count `puzzle_block_num(H)` (training draws one per
    batch). Co-Mixup mixes all 2n images as one chunk (training: chunks of
    20); its weight is the share of image i in output i, and "Co-Mixup
    labels" (n, K) holds the outputs' label vectors.
  """
  num_pairs = images.shape[0] // 2
  # One compiled program for all methods: op-by-op dispatch of six SAGE
  # calls compiles hundreds of small kernels, several times slower on CPU.
  columns = _all_methods(key, jnp.asarray(images, jnp.float32),
                         jnp.asarray(labels, jnp.int32),
                         jnp.asarray(saliency, jnp.float32),
                         jnp.asarray(lam, jnp.float32), num_classes=num_classes,
                         search=search, sample_fraction=sample_fraction,
                         mean=jnp.asarray(mean, jnp.float32),
                         std=jnp.asarray(std, jnp.float32))
  if images_uint8 is not None:
    columns["SaliencyMix"] = _saliencymix_rows(
        key, jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32),
        jnp.asarray(images_uint8, jnp.uint8), jnp.asarray(lam, jnp.float32),
        num_classes=num_classes)
  return jax.tree.map(lambda x: np.asarray(x)[:num_pairs], columns)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _saliencymix_rows(key, images, labels, images_uint8, lam, *, num_classes):
  """SaliencyMix of each pair with its own partner's box (always mixed)."""
  perm = jnp.asarray(pair_permutation(images.shape[0] // 2))
  maps = augment.fine_grained_saliency(images_uint8)

  def one_row(row):
    # A two-image batch (image, its partner) with perm (1, 0): the box comes
    # from the map of the partner of sample 0, as in training.
    partner = perm[row]
    pair = jnp.stack([images[row], images[partner]])
    result = augment.saliencymix(
        key, pair, jnp.stack([labels[row], labels[partner]]), maps[partner],
        mix_prob=1.0, lam=lam, perm=jnp.array([1, 0], jnp.int32),
        num_classes=num_classes)
    return result.images[0], result.lam[0]

  return jax.vmap(one_row)(jnp.arange(images.shape[0]))


@functools.partial(jax.jit, static_argnames=("num_classes", "search",
                                             "sample_fraction"))
def _all_methods(key, images, labels, saliency, lam, *, num_classes, search,
                 sample_fraction, mean, std):
  """`mix_columns` for all 2n rows, in one jitted program."""
  num_pairs = images.shape[0] // 2
  perm = pair_permutation(num_pairs)
  common = dict(num_classes=num_classes, lam=lam, perm=perm)
  sage_args = dict(common, search=search, sample_fraction=sample_fraction)
  results = {
      "SAGE": augment.sage(key, images, labels, saliency, **sage_args),
      "w/o OR": augment.sage(key, images, labels, saliency,
                             **dict(sage_args, search="none")),
      "w/o SM": augment.sage(key, images, labels, saliency, mask="constant",
                             **sage_args),
      "Mixup": augment.mixup(key, images, labels, **common),
      "CutMix": augment.cutmix(key, images, labels, **common),
      "Puzzle Mix": augment.puzzle_mix(
          key, images, labels, saliency, mean=mean, std=std,
          block_num=puzzle_block_num(images.shape[1]), **common),
      # All 2n images form one chunk: output i draws on every image, not on
      # a partner, so its weight is the share of image i itself.
      "Co-Mixup": augment.co_mixup(
          key, images, labels, saliency, num_classes=num_classes,
          chunk_size=images.shape[0],
          block_num=4 if images.shape[1] % 4 == 0 else 2),
  }
  # SAGE's mask, read off through the public function: image i all ones and
  # its partner (a row ≥ n) all zeros give x' = M·1 + (1-M)·T(0) = M. The
  # offsets depend only on the saliency and the key, so they are the same.
  indicator = jnp.concatenate([jnp.ones((num_pairs,) + images.shape[1:3] + (1,)),
                               jnp.zeros((num_pairs,) + images.shape[1:3] + (1,))])
  masks = augment.sage(key, indicator, labels, saliency, **sage_args).images
  columns = {name: (r.images, r.lam) for name, r in results.items()}
  # Co-Mixup's output i mixes any images of the chunk, not image i and its
  # partner: its caption comes from its label vector.
  columns["Co-Mixup labels"] = results["Co-Mixup"].labels
  columns["mask"] = masks[..., 0]
  columns["offset"] = results["SAGE"].offset
  return columns


def puzzle_block_num(size: int) -> int:
  """The picture's Puzzle Mix block count for size×size images.

  The finest of 2, 4, 8, 16 whose blocks are still ≥ 4 pixels on a side (8
  for CIFAR); for other sizes, the smallest count the release's 4-pixel
  pooling and transport cells fit (blocks of 4k pixels, or fewer than 4).
  """
  def fits(n):
    block = size // n
    return size % n == 0 and block % min(4, block) == 0

  preferred = [n for n in (2, 4, 8, 16) if fits(n) and size // n >= 4]
  if preferred:
    return max(preferred)
  return min(n for n in range(2, size + 1) if fits(n))


def grid_figure_size(num_pairs: int, num_columns: int = len(COLUMNS)
                     ) -> tuple[float, float]:
  """(width, height) in inches of the grid figure; pixels = inches · dpi."""
  width = 2 * _MARGIN + num_columns * _CELL + (num_columns - 1) * _GAP
  height = _TITLE + _HEADER + num_pairs * (_CELL + _CAPTION) + _MARGIN
  return width, height


def render_grid(cells: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str],
                captions: Sequence[Sequence[str]], title: str, *, dpi: int = 80
                ) -> np.ndarray:
  """Draws rows of RGB images with column titles and captions.

  Args:
    cells: rows × columns of float (h, w, 3) images in [0, 1].
    column_titles: one per column, shown above the first row.
    captions: rows × columns of text under each image ("" for none).
    title: figure title.
    dpi: pixels per inch.

  Returns:
    uint8 (H, W, 3) picture; (H, W) = `grid_figure_size` · dpi, truncated.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  num_rows, num_columns = len(cells), len(column_titles)
  width, height = grid_figure_size(num_rows, num_columns)
  # Figure + Agg canvas, not pyplot: no global state, no GUI backend.
  fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
  canvas = FigureCanvasAgg(fig)
  fig.text(0.5, 1.0 - 0.5 * _TITLE / height, title, ha="center", va="center",
           fontsize=9)
  for r, row in enumerate(cells):
    top = _TITLE + _HEADER + r * (_CELL + _CAPTION)
    for c, cell in enumerate(row):
      left = _MARGIN + c * (_CELL + _GAP)
      ax = fig.add_axes((left / width, 1.0 - (top + _CELL) / height,
                         _CELL / width, _CELL / height))
      ax.imshow(cell, interpolation="nearest", vmin=0.0, vmax=1.0)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(column_titles[c], fontsize=8, pad=3)
      if captions[r][c]:
        ax.text(0.5, -0.03, captions[r][c], transform=ax.transAxes, ha="center",
                va="top", fontsize=7, linespacing=1.1)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def augmentation_grid(images_uint8: np.ndarray, labels: np.ndarray,
                      saliency: np.ndarray, class_names: Sequence[str], *,
                      mean: Sequence[float], std: Sequence[float],
                      lam: float = 0.5, seed: int = 0, search: str = "sampled",
                      sample_fraction: float = 0.01, title: str = "",
                      dpi: int = 80) -> np.ndarray:
  """The comparison picture for n pairs, from images and their saliency.

  Args:
    images_uint8: uint8 (2n, H, W, C) images; image k (k < n) is mixed with
      partner k + n (see `pick_pairs`, `pair_permutation`).
    labels: int (2n,) labels in [0, len(class_names)).
    saliency: float (2n, H, W) non-negative saliency (e.g. from
      `model_saliency`).
    class_names: name of each label.
    mean, std: the dataset's normalisation (length C, in [0, 1] units).
    lam: λ, image i's share, for every method.
    seed: PRNG seed of the key all methods share.
    search, sample_fraction: SAGE's offset search.
    title: figure title (a line with λ and the search is appended).
    dpi: resolution.

  Returns:
    uint8 (H, W, 3) picture with n rows and the columns of `COLUMNS`.

  Raises:
    ValueError: on inconsistent shapes (or any error of `augment.sage`).
  """
  images_uint8 = np.asarray(images_uint8)
  labels = np.asarray(labels)
  if images_uint8.ndim != 4 or images_uint8.shape[0] < 2 or images_uint8.shape[0] % 2:
    raise ValueError("images_uint8 must be (2n, H, W, C) with n ≥ 1 pairs; got "
                     f"shape {images_uint8.shape}.")
  if labels.shape != images_uint8.shape[:1]:
    raise ValueError(f"labels must have shape {images_uint8.shape[:1]}; got "
                     f"{labels.shape}.")
  num_pairs = images_uint8.shape[0] // 2
  images = input_pipeline.normalize(images_uint8, mean, std)
  columns = mix_columns(jax.random.key(seed), images, labels.astype(np.int32),
                        jnp.asarray(saliency, jnp.float32),
                        num_classes=len(class_names), lam=lam, search=search,
                        sample_fraction=sample_fraction, images_uint8=images_uint8,
                        mean=mean, std=std)
  shown = denormalize(images, mean, std)
  own, partner = labels[:num_pairs], labels[num_pairs:]
  heat = colorize(saliency)
  mask_rgb = colorize(columns["mask"], cmap="gray", vmax=1.0)
  method_names = MIXED_COLUMNS
  cells = [[_to_rgb(shown[k]), _to_rgb(shown[k + num_pairs]), heat[k],
            heat[k + num_pairs], mask_rgb[k]] for k in range(num_pairs)]
  captions = [[class_names[own[k]], class_names[partner[k]], "", "",
               f"τ* = ({columns['offset'][k][0]}, {columns['offset'][k][1]})"]
              for k in range(num_pairs)]
  for name in method_names:
    mixed, weight = columns[name]
    mixed = denormalize(mixed, mean, std)
    texts = (_top_classes_caption(class_names, columns["Co-Mixup labels"])
             if name == "Co-Mixup" else
             _weights_caption(class_names, own, partner, weight))
    for k, text in enumerate(texts):
      cells[k].append(_to_rgb(mixed[k]))
      captions[k].append(text)
  search_text = (f"{search} search ({augment.num_sampled_offsets(*images.shape[1:3], sample_fraction)} shifts)"
                 if search == "sampled" else f"{search} search")
  subtitle = f"λ = {lam:.2f} for every method; SAGE: {search_text}"
  return render_grid(cells, COLUMNS, captions,
                     f"{title}\n{subtitle}" if title else subtitle, dpi=dpi)


# --- The model's saliency ---------------------------------------------------------------


def model_saliency(model, variables: dict, images: jax.Array, labels: np.ndarray,
                   loss_fn, *, num_classes: int, sigma: float = 1.0,
                   kernel_size: int = 5) -> jax.Array:
  """SAGE's saliency of a batch under a model, as the train step computes it.

  Args:
    model: a flax linen module of `sage_jax.models`.
    variables: {"params", "batch_stats"}.
    images: float32 (B, H, W, C) normalised images.
    labels: int (B,).
    loss_fn: `loss_fn(logits, targets)` -> scalar (a `train.LOSS_FNS` value).
    num_classes: K.
    sigma, kernel_size: the smoothing of `augment.saliency_map`.

  Returns:
    float32 (B, H, W). BatchNorm runs in train mode (batch statistics), as
    in training; its updated running statistics are discarded.
  """
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)

  def loss(variables, x):
    logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return loss_fn(logits, targets)

  # Jitted: op-by-op dispatch compiles every layer's kernels one by one.
  grads = jax.jit(jax.grad(loss, argnums=1))(variables, images)
  return augment.saliency_map(grads, sigma=sigma, kernel_size=kernel_size)


# --- Loading a run ----------------------------------------------------------------------


def load_workdir_config(workdir: str):
  """The ConfigDict a run used: base_config() updated with <workdir>/config.json.

  Raises:
    FileNotFoundError: if the workdir or its config.json is missing.
  """
  from sage_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"Workdir {workdir} does not exist.")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{path} is missing: {workdir} is not a training workdir (main.py "
        "writes config.json when a run starts). Pass --config to say which "
        "model and data to use.")
  with open(path, encoding="utf-8") as f:
    saved = json.load(f)
  config = config_lib.base_config()
  # Start from the defaults so that a config.json from an older version
  # (fewer fields) still gives a complete config.
  config.update(saved)
  return config


def latest_checkpoint_step(workdir: str) -> int:
  """The newest finished checkpoint step in <workdir>/checkpoints.

  Opened read-only (`checkpointing.Checkpointer`): nothing is created and a
  save in flight is left alone.

  Raises:
    FileNotFoundError: if there is none.
  """
  from sage_jax import checkpointing  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, "checkpoints")
  step = None
  if os.path.isdir(directory):
    with checkpointing.Checkpointer(directory, read_only=True) as checkpointer:
      step = checkpointer.latest_step()
  if step is None:
    raise FileNotFoundError(
        f"No checkpoint in {directory}: train the run first (python main.py "
        f"--workdir {workdir} ...), or leave out --workdir to show an "
        "untrained model.")
  return step


def build_model(config, info):
  """(model, optimizer) of a run, for restoring its state.

  The model computes in float32 even for half-precision runs (the saliency
  is then a little more precise than in training) and never averages
  BatchNorm statistics across devices (nothing here is mapped over devices).
  """
  from sage_jax import models  # pylint: disable=g-import-not-at-top
  from sage_jax import train  # pylint: disable=g-import-not-at-top
  model = models.create_model(config.model.name, num_classes=info.num_classes,
                              width=config.model.width or None)
  # The optimizer state's structure does not depend on the schedule's values.
  tx = train.create_optimizer(config, train.learning_rate_schedule(config, 1))
  return model, tx


def load_variables(config, info, workdir: str | None, step: int | None = None):
  """(model, {"params", "batch_stats"}, step): restored, or fresh when no workdir.

  Args:
    config: the run's config.
    info: the dataset's `DatasetInfo` (classes, image shape).
    workdir: the run; None initialises the model with `config.seed`.
    step: the checkpoint to restore; None for the latest.

  Returns:
    step is the restored training step, or None for an untrained model.

  Raises:
    FileNotFoundError: if `workdir` has no checkpoint.
  """
  from sage_jax import train  # pylint: disable=g-import-not-at-top
  model, tx = build_model(config, info)

  def fresh():
    return train.init_state(config, model, tx, info.image_shape)

  if workdir is None:
    return model, _variables(jax.device_get(jax.jit(fresh)())), None
  if step is None:
    step = latest_checkpoint_step(workdir)
  params, batch_stats, step = train.restore_variables(
      config, workdir, model, tx, info.image_shape, step=step)
  return model, {"params": params, "batch_stats": batch_stats}, step


def _variables(state) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def grid_title(config, info, workdir: str | None, step: int | None) -> str:
  """The picture's title: which model made the saliency, on which images."""
  images = info.name
  if info.name == "image_folder" and config.dataset.data_dir:
    images = os.path.basename(os.path.normpath(config.dataset.data_dir))
  if workdir is None:
    return (f"UNTRAINED {config.model.name} (random init, seed {config.seed}): "
            f"its saliency is not a trained model's; {images} test images")
  run = os.path.basename(os.path.normpath(workdir))
  return (f"Saliency of {config.model.name} trained with {config.method} "
          f"({run}, step {step}); {images} test images")


def run_grid(config, *, workdir: str | None, num_pairs: int = 4, seed: int = 0,
             lam: float = 0.5, dpi: int = 80) -> tuple[np.ndarray, str]:
  """The picture for a run (or an untrained model) on its test images.

  Args:
    config: a training config (the run's, see `load_workdir_config`);
      its dataset supplies the images (test split), its model and loss the
      saliency, its `sage` fields the search.
    workdir: a trained run's directory; None for an untrained model.
    num_pairs, seed, lam, dpi: see `pick_pairs` and `augmentation_grid`.

  Returns:
    (uint8 (H, W, 3) picture, its title).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`, or no dataset.
  """
  from sage_jax import train  # pylint: disable=g-import-not-at-top
  # The cheap check first: before seconds of dataset decoding.
  step = None if workdir is None else latest_checkpoint_step(workdir)
  from sage_jax import datasets  # pylint: disable=g-import-not-at-top
  datasets.prepare_for_run(config)   # downloads CIFAR when missing and online
  data = input_pipeline.load_dataset(config.dataset.name,
                                     config.dataset.data_dir or None)
  info = data.info
  model, variables, step = load_variables(config, info, workdir, step)
  index = pick_pairs(data.test_labels, num_pairs, seed)
  images_uint8, labels = data.test_images[index], data.test_labels[index]
  saliency = model_saliency(
      model, variables, input_pipeline.normalize(images_uint8, info.mean, info.std),
      labels, train.LOSS_FNS[config.loss], num_classes=info.num_classes,
      sigma=config.sage.sigma, kernel_size=config.sage.kernel_size)
  title = grid_title(config, info, workdir, step)
  picture = augmentation_grid(
      images_uint8, labels, np.asarray(saliency), info.class_names, mean=info.mean,
      std=info.std, lam=lam, seed=seed, search=config.sage.search,
      sample_fraction=config.sage.sample_fraction, title=title, dpi=dpi)
  return picture, title


# --- Command line ----------------------------------------------------------------------


def main(argv):
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  flags_ = _FLAGS
  workdir = flags_["workdir"].value
  config = _CONFIG.value
  if not flags_["verbosity"].present:
    # Orbax logs a dozen INFO lines per restore; keep the output to the result.
    logging.set_verbosity(logging.WARNING)
  try:
    if config is None:
      if workdir is None:
        raise app.UsageError("Give --workdir (a trained run) or --config (e.g. "
                             "configs/smoke.py, for an untrained model).")
      config = load_workdir_config(workdir)
    if flags_["data_dir"].value:
      config.dataset.name = "image_folder"
      config.dataset.data_dir = flags_["data_dir"].value
    picture, title = run_grid(
        config, workdir=workdir, num_pairs=flags_["num_pairs"].value,
        seed=flags_["seed"].value, lam=flags_["lam"].value,
        dpi=flags_["dpi"].value)
  except (FileNotFoundError, ValueError) as error:
    # Expected problems (no checkpoint, no data, bad flag value): one line,
    # not a traceback.
    raise SystemExit(f"visualize: error: {error}") from None
  write_png(picture, flags_["out"].value)
  print(f"wrote {flags_['out'].value} ({picture.shape[1]}x{picture.shape[0]}): "
        f"{title}")


_FLAGS = None
_CONFIG = None


def _define_flags():
  """Command-line flags, defined only when run as a program."""
  global _FLAGS, _CONFIG
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "Training config file as for main.py (e.g. "
      "configs/smoke.py); default: <workdir>/config.json.", lock_config=False)
  flags.DEFINE_string("workdir", None, "A training workdir; its latest "
                      "checkpoint gives the saliency. Absent: untrained model.")
  flags.DEFINE_string("data_dir", None, "An image folder (ROOT/{train,test}/"
                      "<class>/*) to take the images from instead of the "
                      "run's dataset.")
  flags.DEFINE_string("out", "augmentation_grid.png", "Output PNG.")
  flags.DEFINE_integer("num_pairs", 4, "Rows (image pairs).", lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Picks the images and the shared PRNG key.")
  flags.DEFINE_float("lam", 0.5, "λ, image i's share, for every method.",
                     lower_bound=0.0, upper_bound=1.0)
  flags.DEFINE_integer("dpi", 80, "Resolution (pixels per inch).", lower_bound=10)
  _FLAGS = flags.FLAGS


if __name__ == "__main__":
  from absl import app as _app  # pylint: disable=g-import-not-at-top
  _define_flags()
  _app.run(main)
