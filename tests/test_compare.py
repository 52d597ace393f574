"""The comparison command: trains, evaluates, tabulates and resumes."""
import json
import os
import subprocess
import sys

import pytest

from sage_jax import compare
from sage_jax import evaluate
from sage_jax import train
from test_train import REPO, make_image_folder, tiny_config


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  return make_image_folder(tmp_path_factory.mktemp("images"))


def test_compare_command_writes_the_table_and_resumes(image_folder, tmp_path,
                                                      monkeypatch):
  workdir = tmp_path / "cmp"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", "sage_jax.compare", "--config",
             "configs/smoke.py", f"--workdir={workdir}",
             "--methods=vanilla,manifold_mixup",
             "--config.dataset.name=image_folder",
             f"--config.dataset.data_dir={image_folder}", "--config.batch_size=8",
             "--config.eval_batch_size=8", "--config.num_train_steps=3",
             "--config.model.width=4", "--config.log_every_steps=1"]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  table = json.loads((workdir / "comparison.json").read_text())
  rows = {row["method"]: row for row in table["methods"]}
  assert list(rows) == ["vanilla", "manifold_mixup"]
  for name, row in rows.items():
    assert row["total_steps"] == 3
    for field in ("best_test_accuracy", "clean", "gaussian_noise", "fgsm", "fgm"):
      assert 0 <= row[field] <= 1, (name, field)
    assert row["step_seconds"] > 0
    # The paper's numbers for CIFAR-10 (an image folder is taken as CIFAR-10).
    assert set(row["published"]) >= {"fgsm", "fgm", "gaussian_noise",
                                     "runtime_ratio_to_vanilla"}
    assert (workdir / name / "eval.json").exists()
  assert rows["vanilla"]["step_ratio_to_vanilla"] == 1.0
  assert rows["manifold_mixup"]["published"]["fgsm"] == 85.79
  markdown = (workdir / "comparison.md").read_text()
  assert "| manifold_mixup |" in markdown and "85.79" in markdown
  assert markdown in result.stdout

  # Rerun in-process with the same config: nothing is retrained or
  # re-evaluated, the table is rewritten from the saved results.
  def forbidden(*args, **kwargs):
    raise AssertionError("a finished run was redone")

  monkeypatch.setattr(train, "train_and_evaluate", forbidden)
  monkeypatch.setattr(evaluate, "evaluate_workdir", forbidden)
  config = json.loads((workdir / "vanilla" / "config.json").read_text())
  base = tiny_config()
  base.update_from_flattened_dict(
      {k: v for k, v in _flatten(config).items() if k != "method"})
  base.lr_boundaries = tuple(base.lr_boundaries)
  again = compare.compare(base, str(workdir), ["vanilla", "manifold_mixup"])
  assert [r["best_test_accuracy"] for r in again["methods"]] == [
      r["best_test_accuracy"] for r in table["methods"]]


def _flatten(tree, prefix=""):
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return flat


def test_compare_rejects_unknown_and_repeated_methods(tmp_path):
  with pytest.raises(ValueError, match="registered methods are"):
    compare.compare(tiny_config(), str(tmp_path), ["vanilla", "puzzle"])
  with pytest.raises(ValueError, match="twice"):
    compare.compare(tiny_config(), str(tmp_path), ["mixup", "mixup"])


def test_markdown_and_ratios_from_rows():
  rows = [{"method": m, "total_steps": 10, "best_test_accuracy": 0.5,
           "median_last10_test_accuracy": 0.5, "clean": 0.5, "gaussian_noise": 0.4,
           "fgsm": 0.1, "fgm": 0.2, "corruptions": None, "step_seconds": s}
          for m, s in (("vanilla", 0.2), ("sage", 0.4))]
  assert compare.add_published(rows, "cifar100") == "cifar100"
  assert rows[1]["step_ratio_to_vanilla"] == pytest.approx(2.0)
  assert rows[1]["published"]["clean"] == 79.91
  assert rows[1]["published"]["runtime_ratio_to_vanilla"] == pytest.approx(19.5 / 9.76)
  table = {"setting": {"model": "m", "width": 4, "dataset": "cifar100",
                       "total_steps": 10, "batch_size": 8, "seed": 0,
                       "num_devices": 8},
           "published_dataset": "cifar100", "methods": rows}
  text = compare.to_markdown(table)
  assert "| sage | 50.00 | 50.00 | 50.00 | 40.00 | 10.00 | 20.00 | – | 400.0 | 2.00 |" in text
  assert "| sage | 79.91 | 47.68 | 50.18 | 62.23 | 2.00 |" in text
  assert compare.step_seconds([{"split": "train", "steps_per_second": 1.0},
                               {"split": "train", "steps_per_second": 4.0},
                               {"split": "test"}]) == 0.25
