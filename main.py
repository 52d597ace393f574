"""Train and evaluate SAGE (or a baseline) on CIFAR.

    python main.py --config configs/cifar10.py [--workdir DIR] [--config.field=value ...]

The run resumes automatically from the latest checkpoint in --workdir.
"""
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (see configs/).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Directory for checkpoints and metrics; default ./workdir/<config name>.")
flags.mark_flags_as_required(["config"])


def default_workdir(config_path: str) -> str:
  """./workdir/<config file stem>[_<argument>] for `configs/x.py[:arg]`."""
  path, _, argument = config_path.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("workdir", f"{name}_{argument}" if argument else name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  # Imported here so that --help works without initialising JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from sage_jax import train  # pylint: disable=g-import-not-at-top
  if config.multi_host:
    jax.distributed.initialize()
  workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)
  logging.info("JAX process %d/%d, devices: %s; workdir %s", jax.process_index(),
               jax.process_count(), jax.devices(), workdir)
  train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
  app.run(main)
