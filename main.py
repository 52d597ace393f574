"""Train and evaluate SAGE (or a baseline) on CIFAR.

    python main.py --config configs/cifar10.py [--workdir DIR] [--config.field=value ...]

The run resumes automatically from the latest checkpoint in --workdir.

    python main.py --config configs/cifar10.py --workdir DIR --mode=eval \
        [--corrupted_dir CIFAR-100-C]

evaluates the latest checkpoint in --workdir (clean, Gaussian noise, FGSM, FGM,
common corruptions when present offline) and writes DIR/eval.json and
DIR/eval.md; see sage_jax/evaluate.py.
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from sage_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (see configs/).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Directory for checkpoints and metrics; default ./workdir/<config name>.")
_MODE = flags.DEFINE_enum(
    "mode", "train", ["train", "eval"],
    "train: train (resuming from --workdir); eval: evaluate the latest "
    "checkpoint in --workdir and write eval.json and eval.md there.")
_CORRUPTED_DIR = flags.DEFINE_string(
    "corrupted_dir", None,
    "--mode=eval only: folder of the released CIFAR-10-C/CIFAR-100-C files "
    "(labels.npy and <corruption>.npy, 5 severities each). Without it CIFAR-10 "
    "runs use tfds's cifar10_corrupted if it is prepared in the tfds data dir.")
flags.mark_flags_as_required(["config"])


def default_workdir(config_path: str) -> str:
  """./workdir/<config file stem>[_<argument>] for `configs/x.py[:arg]`."""
  path, _, argument = config_path.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdir", f"{name}_{argument}" if argument else name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CORRUPTED_DIR.value and _MODE.value != "eval":
    raise app.UsageError("--corrupted_dir is only used with --mode=eval.")
  config = _CONFIG.value
  # Imported here so that --help works without initialising JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from sage_jax import train  # pylint: disable=g-import-not-at-top
  if config.multi_host:
    jax.distributed.initialize()
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  logging.info("JAX process %d/%d, devices: %s; workdir %s", jax.process_index(),
               jax.process_count(), jax.devices(), workdir)
  if _MODE.value == "eval":
    from sage_jax import evaluate  # pylint: disable=g-import-not-at-top
    results = evaluate.evaluate_workdir(config, workdir,
                                        corrupted_dir=_CORRUPTED_DIR.value)
    if jax.process_index() == 0:
      print(evaluate.to_markdown(results))
      print(f"Wrote {os.path.join(workdir, 'eval.json')} and eval.md "
            f"({results['seconds']:.0f} s).")
  else:
    train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
