"""The paper's comparison in one command: train and evaluate several methods.

    python -m sage_jax.compare --config configs/cifar10.py --workdir runs/c10 \
        [--methods vanilla,mixup,cutmix,manifold_mixup,saliencymix,sage] \
        [--corrupted_dir DIR] [--config.field=value ...]

Every method trains with the same config (data, model, seed, epochs, batch;
only `config.method` differs) in `<workdir>/<method>`, then is evaluated as
`main.py --mode=eval` does (clean, Gaussian noise, FGSM, FGM, common
corruptions when present). The results go to `<workdir>/comparison.md` and
`<workdir>/comparison.json`, with the supplement's published numbers beside
the measured ones and each method's train-step time as a ratio to vanilla's.

It resumes: a method whose run finished with the same config is not
retrained, an evaluation of its final checkpoint is not redone, and an
interrupted run continues from its latest checkpoint. Rerunning after the
last method finished only rewrites the tables.

Step time: the median over the run's logged train windows of
1/steps_per_second, leaving out the first window (which includes
compilation) when there are several. Evaluation and checkpoint time is not
counted. Ratios are meaningful only when all methods ran on the same
hardware.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The shared training configuration (see configs/).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Root folder: one sub-folder per method plus the tables.")
_METHODS = flags.DEFINE_list(
    "methods", None,
    "Methods to compare (config.method names), in table order; default: every "
    "registered method.")
_CORRUPTED_DIR = flags.DEFINE_string(
    "corrupted_dir", None,
    "Optional folder of the released CIFAR-10-C/CIFAR-100-C .npy files, as for "
    "main.py --mode=eval.")
flags.mark_flags_as_required(["config", "workdir"])

# Columns of the measured robustness, as named in eval.json.
ATTACKS = ("gaussian_noise", "fgsm", "fgm")


def _config_json(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _load_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _run_finished(config, workdir: str) -> bool:
  """True when `workdir` holds a finished run of exactly `config`."""
  summary = _load_json(os.path.join(workdir, "summary.json"))
  saved = _load_json(os.path.join(workdir, "config.json"))
  return summary is not None and saved == _config_json(config)


def step_seconds(records: Sequence[dict]):
  """Median seconds per train step from metrics records (see module doc)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rates = [r["steps_per_second"] for r in records
           if r.get("split") == "train" and r.get("steps_per_second")]
  if len(rates) > 1:
    rates = rates[1:]
  return float(np.median(1.0 / np.asarray(rates))) if rates else None


def run_method(base_config, method: str, workdir: str,
               corrupted_dir: str | None) -> dict:
  """Trains (or resumes) and evaluates one method; returns its row."""
  from sage_jax import evaluate  # pylint: disable=g-import-not-at-top
  from sage_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from sage_jax import train  # pylint: disable=g-import-not-at-top

  config = base_config.copy_and_resolve_references()
  config.unlock()
  config.method = method
  config.lock()
  os.makedirs(workdir, exist_ok=True)
  if _run_finished(config, workdir):
    logging.info("%s: finished run in %s, not retrained.", method, workdir)
    summary = _load_json(os.path.join(workdir, "summary.json"))
  else:
    logging.info("%s: training in %s.", method, workdir)
    summary = train.train_and_evaluate(config, workdir)
  results = _load_json(os.path.join(workdir, "eval.json"))
  if results is None or results.get("step") != summary["total_steps"]:
    logging.info("%s: evaluating step %d.", method, summary["total_steps"])
    results = evaluate.evaluate_workdir(config, workdir,
                                        corrupted_dir=corrupted_dir)
  corruptions = results["corruptions"]
  return {
      "method": method,
      "workdir": os.path.abspath(workdir),
      "total_steps": summary["total_steps"],
      "best_test_accuracy": summary["best_test_accuracy"],
      "median_last10_test_accuracy": summary["median_last10_test_accuracy"],
      "clean": results["clean"]["accuracy"],
      **{attack: results[attack]["accuracy"] for attack in ATTACKS},
      "corruptions": (corruptions["mean_accuracy"] if corruptions["available"]
                      else None),
      "step_seconds": step_seconds(metrics_lib.read_metrics(workdir)),
  }


def add_published(rows: list[dict], dataset: str) -> str | None:
  """Adds each row's ratio to vanilla and the paper's numbers; returns the
  dataset whose published numbers are shown (None if none apply)."""
  from sage_jax import published  # pylint: disable=g-import-not-at-top
  # An image folder is taken to hold CIFAR-10 (the README's CPU setting).
  paper_dataset = {"cifar10": "cifar10", "cifar100": "cifar100",
                   "image_folder": "cifar10"}.get(dataset)
  vanilla = next((r["step_seconds"] for r in rows if r["method"] == "vanilla"),
                 None)
  for row in rows:
    row["step_ratio_to_vanilla"] = (
        row["step_seconds"] / vanilla if vanilla and row["step_seconds"] else None)
    paper = {}
    if paper_dataset:
      paper = dict(published.ROBUSTNESS[paper_dataset].get(row["method"], {}))
      clean = published.CLEAN_ACCURACY[paper_dataset].get(row["method"])
      if clean is not None:
        paper["clean"] = clean
      ratio = published.runtime_ratio(paper_dataset, row["method"])
      if ratio is not None:
        paper["runtime_ratio_to_vanilla"] = ratio
    row["published"] = paper
  return paper_dataset


def _cell(value, scale: float = 100.0, digits: int = 2) -> str:
  return "–" if value is None else f"{scale * value:.{digits}f}"


def to_markdown(table: dict) -> str:
  """comparison.md: measured and published numbers, one row per method."""
  setting = table["setting"]
  paper = table["published_dataset"]
  lines = [
      "# Method comparison",
      "",
      f"{setting['model']} (width {setting['width'] or 'default'}) on "
      f"{setting['dataset']}, {setting['total_steps']} steps of batch "
      f"{setting['batch_size']}, seed {setting['seed']}, {setting['num_devices']} "
      "device(s); every method with this same config.",
      "",
      "Measured (accuracy %; step time as a ratio to vanilla's on this machine):",
      "",
      "| method | best | median last 10 | clean | Gauss | FGSM | FGM | CIFAR-C | "
      "step ms | / vanilla |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for row in table["methods"]:
    lines.append(
        f"| {row['method']} | {_cell(row['best_test_accuracy'])} | "
        f"{_cell(row['median_last10_test_accuracy'])} | {_cell(row['clean'])} | "
        f"{_cell(row['gaussian_noise'])} | {_cell(row['fgsm'])} | "
        f"{_cell(row['fgm'])} | {_cell(row['corruptions'])} | "
        f"{_cell(row['step_seconds'], 1e3, 1)} | "
        f"{_cell(row['step_ratio_to_vanilla'], 1.0)} |")
  if paper:
    lines += [
        "",
        f"Published ({paper}, PreActResNet18, 300 epochs; supplement Tables 1-4; "
        "runtime from Table 3, one T4):",
        "",
        "| method | clean | Gauss | FGSM | FGM | T4 time / vanilla |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in table["methods"]:
      pub = row["published"]
      cells = [pub.get(k) for k in ("clean", "gaussian_noise", "fgsm", "fgm")]
      lines.append(f"| {row['method']} | " + " | ".join(
          _cell(c, 1.0) for c in cells) + " | "
                   + _cell(pub.get("runtime_ratio_to_vanilla"), 1.0) + " |")
    lines += ["", "The supplement publishes clean accuracy for SAGE only."]
  return "\n".join(lines) + "\n"


def compare(base_config, workdir: str, method_names: Sequence[str] | None = None,
            corrupted_dir: str | None = None) -> dict:
  """Trains and evaluates each method; writes comparison.{md,json}.

  Args:
    base_config: the shared config (its `method` is replaced per method).
    workdir: root folder; method `m` runs in `<workdir>/<m>`.
    method_names: registered method names, in table order (default: all).
    corrupted_dir: as `evaluate.evaluate_workdir`.

  Returns:
    The table (the content of comparison.json).

  Raises:
    ValueError: an unknown or repeated method name, or an invalid config.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from sage_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from sage_jax import methods  # pylint: disable=g-import-not-at-top

  names = list(method_names or methods.METHOD_NAMES)
  for name in names:
    methods.get_method(name)  # raises on an unknown name, listing them
  if len(set(names)) != len(names):
    raise ValueError(f"--methods names a method twice: {names}.")
  config_lib.validate_config(base_config)
  rows = [run_method(base_config, name, os.path.join(workdir, name), corrupted_dir)
          for name in names]
  paper_dataset = add_published(rows, base_config.dataset.name)
  table = {
      "setting": {
          "model": base_config.model.name, "width": base_config.model.width,
          "dataset": base_config.dataset.name,
          "total_steps": rows[0]["total_steps"],
          "batch_size": base_config.batch_size, "seed": base_config.seed,
          "num_devices": base_config.num_devices or jax.device_count(),
      },
      "published_dataset": paper_dataset,
      "methods": rows,
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "comparison.json"), "w") as f:
      json.dump(table, f, indent=2)
    with open(os.path.join(workdir, "comparison.md"), "w") as f:
      f.write(to_markdown(table))
  return table


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  from sage_jax import cli  # pylint: disable=g-import-not-at-top
  from sage_jax import datasets  # pylint: disable=g-import-not-at-top
  if _CONFIG.value.multi_host:
    # As main.py: the environment's coordinator and the heartbeat timeout.
    cli.initialize_distributed(_CONFIG.value, jax)
  # Download (or stop quickly with what to do) before any method trains.
  datasets.prepare_for_run(_CONFIG.value)
  table = compare(_CONFIG.value, _WORKDIR.value, _METHODS.value,
                  _CORRUPTED_DIR.value)
  if jax.process_index() == 0:
    print(to_markdown(table))
    print(f"Wrote {os.path.join(_WORKDIR.value, 'comparison.md')} and "
          "comparison.json.")


if __name__ == "__main__":
  from sage_jax import cli  # pylint: disable=g-import-not-at-top
  app.run(main, flags_parser=cli.parse_flags)
