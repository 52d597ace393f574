"""Training curves of one or more runs: loss, accuracy and learning rate per epoch.

    python -m sage_jax.curves WORKDIR [WORKDIR ...] --out curves.png [--labels a b]

Reads each workdir's metrics.jsonl (`metrics.read_metrics`) and draws three
panels against the epoch: loss and accuracy (train solid, test dashed with
markers) and the learning rate. Several workdirs are overlaid, one colour
each, for a method comparison. `train_and_evaluate` also writes
<workdir>/curves.png at the end of every run.

What the train numbers are: the mean over each logging window of the train
step's `loss` (for SAGE the (1-η)·clean + η·mixed loss) and `accuracy` (the
clean batch for SAGE and vanilla; the mixed batch against each image's own
label for Mixup and CutMix). Test numbers are whole-test-set evaluations.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from sage_jax import metrics as metrics_lib

# (record field, panel title); the learning rate comes from train records.
PANELS = (("loss", "Loss"), ("accuracy", "Accuracy"),
          ("learning_rate", "Learning rate"))
_PANEL_SIZE = (4.0, 3.0)     # inches per panel
_LEGEND_BAND = 0.5           # inches under the panels for the legend
_TITLE_BAND = 0.35


def series(records: Sequence[dict], split: str, field: str
           ) -> tuple[np.ndarray, np.ndarray]:
  """(x, y) of `field` in the records of `split`, ordered by step.

  x is the record's `epoch` (fractional for train records), or its `step`
  when the record has no epoch. Records without a finite `field` are skipped.

  Returns:
    two float64 (N,) arrays, possibly empty.
  """
  rows = sorted((r for r in records if r.get("split") == split
                 and isinstance(r.get(field), (int, float))
                 and np.isfinite(r[field])), key=lambda r: r["step"])
  x = np.asarray([r.get("epoch", r["step"]) for r in rows], np.float64)
  y = np.asarray([r[field] for r in rows], np.float64)
  return x, y


def load_runs(workdirs: Sequence[str], labels: Sequence[str] | None = None
              ) -> list[tuple[str, list[dict]]]:
  """[(label, records)] for each workdir; labels default to the folder names.

  Raises:
    ValueError: if the number of labels differs from the number of workdirs,
      or a run has no records.
    FileNotFoundError: if a workdir has no metrics.jsonl.
  """
  if not workdirs:
    raise ValueError("Give at least one workdir.")
  if labels is not None and len(labels) != len(workdirs):
    raise ValueError(f"{len(labels)} labels for {len(workdirs)} workdirs; give "
                     "one label per workdir (or none).")
  runs = []
  for k, workdir in enumerate(workdirs):
    try:
      records = metrics_lib.read_metrics(workdir)
    except FileNotFoundError:
      raise FileNotFoundError(
          f"{workdir}: no {metrics_lib.METRICS_FILENAME}; is it a training "
          "workdir (python main.py --workdir ...)?") from None
    if not records:
      raise ValueError(f"{workdir}: {metrics_lib.METRICS_FILENAME} holds no records.")
    label = labels[k] if labels is not None else os.path.basename(
        os.path.normpath(workdir))
    runs.append((label, records))
  return runs


def _legend_label(label: str, records: Sequence[dict]) -> str:
  """"label (best test 57.4%)" when the run has test evaluations."""
  try:
    best = metrics_lib.summarize(list(records))["best_test_accuracy"]
  except ValueError:
    return label
  return f"{label} (best test {best:.1%})"


def plot_curves(runs: Sequence[tuple[str, Sequence[dict]]], *, title: str = "",
                dpi: int = 80) -> np.ndarray:
  """Draws the panels for runs [(label, metric records)].

  Args:
    runs: one (label, records) per run; records as `metrics.read_metrics`.
    title: figure title ("Training curves" if empty).
    dpi: pixels per inch.

  Returns:
    uint8 (H, W, 3) picture, (H, W) = `curves_figure_size()` · dpi, truncated.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  width, height = curves_figure_size()
  # Figure + Agg canvas, not pyplot: no global state, safe at the end of a run.
  fig = Figure(figsize=(width, height), dpi=dpi, facecolor="white")
  canvas = FigureCanvasAgg(fig)
  colors = [f"C{k % 10}" for k in range(len(runs))]
  axes = fig.subplots(1, len(PANELS), gridspec_kw=dict(
      left=0.06, right=0.99, top=1.0 - (_TITLE_BAND + 0.3) / height,
      bottom=(_LEGEND_BAND + 0.45) / height, wspace=0.28))
  uses_steps = False
  for ax, (field, panel_title) in zip(axes, PANELS):
    for color, (label, records) in zip(colors, runs):
      uses_steps |= any("epoch" not in r for r in records)
      splits = ("train",) if field == "learning_rate" else ("train", "test")
      for split in splits:
        x, y = series(records, split, field)
        if field == "learning_rate" and not len(x):
          x, y = series(records, "test", field)   # a run without train logs
        if not len(x):
          continue
        test = split == "test"
        # A logged learning rate holds for the window that ends at its x.
        ax.plot(x, y, color=color, linestyle="--" if test else "-",
                marker="o" if test else None, markersize=4, linewidth=1.4,
                drawstyle="steps-pre" if field == "learning_rate" else "default")
    ax.set_title(panel_title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.tick_params(labelsize=8)
    if field == "accuracy":
      ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    if field == "learning_rate":
      values = [y for _, r in runs for y in series(r, "train", field)[1]]
      if values and min(values) > 0 and max(values) / min(values) >= 5:
        ax.set_yscale("log")   # step decays are invisible on a linear axis
        ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
  for ax in axes:
    ax.set_xlabel("step" if uses_steps else "epoch", fontsize=9)
  handles = [Line2D([], [], color=c, linewidth=2, label=_legend_label(label, r))
             for c, (label, r) in zip(colors, runs)]
  handles += [Line2D([], [], color="0.3", linestyle="-", label="train"),
              Line2D([], [], color="0.3", linestyle="--", marker="o",
                     markersize=4, label="test")]
  fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4),
             fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.01))
  fig.suptitle(title or "Training curves", fontsize=11,
               y=1.0 - 0.5 * _TITLE_BAND / height, va="center")
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def curves_figure_size() -> tuple[float, float]:
  """(width, height) in inches of the curves figure."""
  return (_PANEL_SIZE[0] * len(PANELS),
          _PANEL_SIZE[1] + _LEGEND_BAND + _TITLE_BAND)


def write_curves(workdirs: Sequence[str], out: str, *,
                 labels: Sequence[str] | None = None, title: str = "",
                 dpi: int = 80) -> np.ndarray:
  """Reads the runs, draws them and writes the PNG `out`; returns the picture.

  Raises:
    FileNotFoundError, ValueError: see `load_runs`.
  """
  picture = plot_curves(load_runs(workdirs, labels), title=title, dpi=dpi)
  write_png(picture, out)
  return picture


def write_png(picture: np.ndarray, path: str) -> None:
  """Writes a uint8 (H, W, 3) array as a PNG, creating the folder.

  (Shared with `visualize`; it lives here because this module imports
  neither JAX nor TensorFlow, so the curves command starts fast.)
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(picture, np.uint8)).save(path, optimize=True)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m sage_jax.curves",
      description="Plot loss, accuracy and learning rate of training runs.")
  parser.add_argument("workdirs", nargs="+", metavar="WORKDIR",
                      help="training workdirs (each with metrics.jsonl)")
  parser.add_argument("--out", default="curves.png", help="output PNG")
  parser.add_argument("--labels", nargs="+", default=None,
                      help="legend names, one per workdir (default: folder names)")
  parser.add_argument("--title", default="", help="figure title")
  parser.add_argument("--dpi", type=int, default=80)
  args = parser.parse_args(argv)
  try:
    picture = write_curves(args.workdirs, args.out, labels=args.labels,
                           title=args.title, dpi=args.dpi)
  except (FileNotFoundError, ValueError) as error:
    parser.exit(1, f"{parser.prog}: error: {error}\n")
  print(f"wrote {args.out} ({picture.shape[1]}x{picture.shape[0]})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
