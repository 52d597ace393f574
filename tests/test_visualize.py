"""The augmentation picture (sage_jax.visualize) and the curves (sage_jax.curves)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from sage_jax import augment
from sage_jax import curves
from sage_jax import input_pipeline
from sage_jax import train
from sage_jax import visualize
from test_train import make_image_folder
from test_train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("cat", "dog", "frog")
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def expected_shape(size_inches, dpi):
  # Agg truncates the float size in pixels; a product like 12.4 × 60 may land
  # on either side of the integer, so compare with `same_shape`.
  width, height = size_inches
  return (int(height * dpi), int(width * dpi), 3)


def same_shape(shape, expected):
  return len(shape) == len(expected) and all(
      abs(a - b) <= 1 for a, b in zip(shape, expected))


def assert_not_blank(picture, min_colors=50):
  assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
  assert picture.std() > 20
  assert len(np.unique(picture.reshape(-1, 3), axis=0)) >= min_colors


def tiny_pairs(num_pairs=2, size=8, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (2 * num_pairs, size, size, 3)).astype(np.uint8)
  labels = np.arange(2 * num_pairs) % len(CLASSES)
  saliency = rng.uniform(size=(2 * num_pairs, size, size)).astype(np.float32)
  return images, labels.astype(np.int32), saliency


# --- The augmentation grid ----------------------------------------------------------------


def test_augmentation_grid_png_has_expected_size_and_content(tmp_path):
  images, labels, saliency = tiny_pairs()
  picture = visualize.augmentation_grid(images, labels, saliency, CLASSES,
                                        mean=MEAN, std=STD, lam=0.4, dpi=60,
                                        title="tiny")
  assert same_shape(picture.shape, expected_shape(visualize.grid_figure_size(2), 60))
  assert_not_blank(picture)
  path = tmp_path / "out" / "grid.png"
  visualize.write_png(picture, str(path))
  with Image.open(path) as written:
    assert written.size == (picture.shape[1], picture.shape[0])
    np.testing.assert_array_equal(np.asarray(written.convert("RGB")), picture)


def test_mix_columns_share_pair_lambda_and_offsets():
  images, labels, saliency = tiny_pairs(num_pairs=2, size=10, seed=1)
  normalised = input_pipeline.normalize(images, MEAN, STD)
  columns = visualize.mix_columns(jax.random.key(3), normalised, labels, saliency,
                                  num_classes=3, lam=0.3, search="exhaustive",
                                  images_uint8=images)
  perm = visualize.pair_permutation(2)
  np.testing.assert_array_equal(perm, [2, 3, 0, 1])
  sage_images, gamma = columns["SAGE"]
  mask = columns["mask"]
  # The mask column is SAGE's mask: x' = M·x_i + (1-M)·T_τ*(x_π(i)), γ = mean M.
  for k in range(2):
    shifted = augment.shift(normalised[perm[k]], columns["offset"][k])
    want = mask[k][..., None] * normalised[k] + (1 - mask[k][..., None]) * shifted
    np.testing.assert_allclose(sage_images[k], want, atol=1e-5)
    np.testing.assert_allclose(gamma[k], mask[k].mean(), atol=1e-6)
  np.testing.assert_allclose(columns["w/o SM"][1], 0.3, atol=1e-7)
  np.testing.assert_allclose(columns["Mixup"][1], 0.3, atol=1e-7)
  np.testing.assert_allclose(columns["Mixup"][0],
                             0.3 * normalised[:2] + 0.7 * normalised[2:], atol=1e-5)
  cut = np.asarray(columns["CutMix"][0])
  from_partner = np.all(cut == np.asarray(normalised[2:]), axis=-1)
  np.testing.assert_allclose(columns["CutMix"][1], 1 - from_partner.mean(axis=(1, 2)),
                             atol=1e-6)
  # SaliencyMix: each row gets the box around its own partner's saliency peak.
  maps = augment.fine_grained_saliency(images)
  for k in range(2):
    top, bottom, left, right = (int(v) for v in augment.saliency_box(maps[perm[k]], 0.3))
    inside = np.zeros((10, 10), bool)
    inside[top:bottom, left:right] = True
    want = np.where(inside[..., None], normalised[perm[k]], normalised[k])
    np.testing.assert_array_equal(columns["SaliencyMix"][0][k], want)
    assert columns["SaliencyMix"][1][k] == pytest.approx(1 - inside.mean())
  # Co-Mixup's outputs mix any of the 4 images: captions come from their
  # label vectors (rows sum to 1), not from the pair.
  vectors = columns["Co-Mixup labels"]
  assert vectors.shape == (2, 3)
  np.testing.assert_allclose(vectors.sum(axis=1), 1.0, atol=1e-6)


def test_co_mixup_caption_names_the_heaviest_classes():
  names = ["cat", "dog", "ship"]
  captions = visualize._top_classes_caption(  # pylint: disable=protected-access
      names, np.array([[0.25, 0.0, 0.75], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]))
  assert captions == ["ship 0.75\ncat 0.25", "dog 1.00", "cat 0.50\ndog 0.50"]


def test_pick_pairs_draws_distinct_images_of_different_classes():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 0, 1])
  index = visualize.pick_pairs(labels, 4, seed=5)
  assert len(index) == 8 and len(set(index.tolist())) == 8
  assert np.all(labels[index[:4]] != labels[index[4:]])
  with pytest.raises(ValueError, match="need 22 images"):
    visualize.pick_pairs(labels, 11)


def test_title_says_when_the_model_is_untrained():
  config = tiny_config()
  info = input_pipeline.DatasetInfo("cifar10", 10, 1, 1, (8, 8, 3), MEAN, STD,
                                    CLASSES)
  assert "UNTRAINED" in visualize.grid_title(config, info, None, None)
  assert "(run, step 7)" in visualize.grid_title(config, info, "/a/run/", 7)


# --- Curves ---------------------------------------------------------------------------------


def write_metrics(workdir, scale=1.0):
  os.makedirs(workdir)
  records = []
  for step in range(10, 101, 10):
    records.append({"step": step, "epoch": step / 50, "split": "train",
                    "loss": scale * 1.0 / step ** 0.3, "accuracy": scale * step / 120,
                    "learning_rate": 0.1 if step <= 50 else 0.01})
    if step % 50 == 0:
      records.append({"step": step, "epoch": step / 50, "split": "test",
                      "loss": scale * 1.2 / step ** 0.3, "accuracy": step / 150,
                      "learning_rate": 0.1})
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return str(workdir)


def test_curves_from_hand_written_metrics(tmp_path):
  workdir = write_metrics(tmp_path / "run")
  x, y = curves.series(curves.load_runs([workdir])[0][1], "test", "accuracy")
  np.testing.assert_allclose(x, [1.0, 2.0])
  np.testing.assert_allclose(y, [50 / 150, 100 / 150])
  picture = curves.write_curves([workdir], str(tmp_path / "curves.png"), dpi=50)
  assert same_shape(picture.shape, expected_shape(curves.curves_figure_size(), 50))
  assert_not_blank(picture, min_colors=20)
  with Image.open(tmp_path / "curves.png") as written:
    assert written.size == (picture.shape[1], picture.shape[0])


def count_bluish_and_orangish(picture):
  """Pixels of matplotlib's C0 blue and C1 orange, antialiased edges included."""
  r, g, b = np.moveaxis(picture.astype(int), -1, 0)
  return int(np.sum(b > r + 80)), int(np.sum((r > b + 120) & (g > 60)))


def test_curves_overlay_two_workdirs(tmp_path):
  first = write_metrics(tmp_path / "a")
  second = write_metrics(tmp_path / "b", scale=0.7)
  picture = curves.write_curves([first, second], str(tmp_path / "both.png"),
                                labels=["sage", "mixup"], dpi=50)
  single = curves.plot_curves(curves.load_runs([first]), dpi=50)
  # Matplotlib's first two colours: C0 blue for run 1, C1 orange for run 2.
  blue, orange = count_bluish_and_orangish(picture)
  assert blue > 200 and orange > 200
  assert count_bluish_and_orangish(single)[1] == 0


def test_curves_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
    curves.load_runs([str(tmp_path / "empty")])
  workdir = write_metrics(tmp_path / "run")
  with pytest.raises(ValueError, match="2 labels for 1 workdirs"):
    curves.load_runs([workdir], ["a", "b"])
  (tmp_path / "blank").mkdir()
  (tmp_path / "blank" / "metrics.jsonl").write_text("")
  with pytest.raises(ValueError, match="no records"):
    curves.load_runs([str(tmp_path / "blank")])


def test_visualize_errors_for_incomplete_workdirs(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    visualize.load_workdir_config(str(tmp_path / "missing"))
  (tmp_path / "run").mkdir()
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    visualize.load_workdir_config(str(tmp_path / "run"))
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    visualize.latest_checkpoint_step(str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()  # nothing created


# --- Command lines on a tiny trained run ------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("vis")
  folder = make_image_folder(root / "images")
  config = tiny_config(method="vanilla", num_train_steps=2, batch_size=8,
                       eval_batch_size=8, num_devices=1,
                       **{"dataset.name": "image_folder", "dataset.data_dir": folder})
  workdir = str(root / "run")
  train.train_and_evaluate(config, workdir)
  return workdir, folder


def run_module(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def test_training_writes_curves_png(trained):
  workdir, _ = trained
  with Image.open(os.path.join(workdir, "curves.png")) as written:
    assert written.size[0] > 400


def test_cli_visualize_and_curves_on_trained_run(trained, tmp_path):
  workdir, folder = trained
  out = tmp_path / "grid.png"
  result = run_module("sage_jax.visualize", f"--workdir={workdir}", f"--out={out}",
                      "--num_pairs=2", "--dpi=40")
  assert result.returncode == 0, result.stderr[-3000:]
  with Image.open(out) as written:
    picture = np.asarray(written.convert("RGB"))
  assert same_shape(picture.shape, expected_shape(visualize.grid_figure_size(2), 40))
  assert_not_blank(picture)

  result = run_module("sage_jax.curves", workdir, workdir, "--labels", "a", "b",
                      f"--out={tmp_path / 'curves.png'}", "--dpi=40")
  assert result.returncode == 0, result.stderr[-3000:]
  with Image.open(tmp_path / "curves.png") as written:
    assert same_shape(written.size, expected_shape(curves.curves_figure_size(), 40)[1::-1])


def test_untrained_model_grid(trained):
  _, folder = trained
  config = tiny_config(**{"dataset.name": "image_folder", "dataset.data_dir": folder})
  picture, title = visualize.run_grid(config, workdir=None, num_pairs=2, dpi=30)
  assert title.startswith("UNTRAINED preactresnet8")
  assert same_shape(picture.shape, expected_shape(visualize.grid_figure_size(2), 30))
  assert_not_blank(picture)


def test_cli_errors_are_one_clear_line(tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "config.json").write_text(
      tiny_config().to_json_best_effort())
  result = run_module("sage_jax.visualize", f"--workdir={tmp_path / 'run'}",
                      f"--out={tmp_path / 'x.png'}")
  assert result.returncode != 0
  assert "visualize: error:" in result.stderr and "No checkpoint" in result.stderr
  assert "Traceback" not in result.stderr
  result = run_module("sage_jax.curves", str(tmp_path / "run"))
  assert result.returncode == 1
  assert "no metrics.jsonl" in result.stderr and "Traceback" not in result.stderr
