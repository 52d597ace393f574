"""Train-step cost of each method, and the collectives SAGE adds.

    python benchmarks/step_bench.py [--model preactresnet18] [--width 64]
                                    [--batch 128] [--steps 5]

Prints, measured in one process on one device: the jitted train-step time of
vanilla, mixup, cutmix, SAGE (sampled search) and SAGE (exhaustive search) on
the same model and batch, each as a ratio to vanilla, and images/s with the
projected hours for 300 CIFAR-10 epochs. Then, in a subprocess with 8 (forced
host) devices, the number of cross-device collectives in the compiled SAGE
step and the vanilla step (SAGE must add none).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from sage_jax import config as config_lib
from sage_jax import train

METHODS = (("vanilla", {}), ("mixup", {}), ("cutmix", {}),
           ("sage sampled", {"sage.search": "sampled"}),
           ("sage exhaustive", {"sage.search": "exhaustive"}))
COLLECTIVE_OPS = ("all-reduce(", "all-reduce-start(", "all-gather(",
                  "all-gather-start(", "all-to-all(", "collective-permute(",
                  "collective-permute-start(", "reduce-scatter(")
CIFAR_TRAIN_IMAGES = 50_000


def make_config(method: str, overrides: dict, args) -> config_lib.ml_collections.ConfigDict:
  config = config_lib.base_config()
  config.method = method.split()[0]
  config.model.name = args.model
  config.model.width = args.width
  config.batch_size = args.batch
  for field, value in overrides.items():
    section, name = field.split(".")
    config[section][name] = value
  config_lib.validate_config(config)
  return config


def time_step(config, mesh, steps: int) -> float:
  """Median seconds of one train step (after a compile/warm-up step)."""
  parts = train.create_components(config, mesh, num_classes=10, mean=(0.5,) * 3,
                                  std=(0.25,) * 3, steps_per_epoch=500)
  state = jax.device_get(jax.jit(
      lambda: train.init_state(config, parts.model, parts.tx, (32, 32, 3)))())
  state = train.to_device_state(state, mesh)
  rng = np.random.default_rng(0)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  images = jax.device_put(rng.integers(0, 256, (config.batch_size, 32, 32, 3),
                                       dtype=np.uint8), sharding)
  labels = jax.device_put(rng.integers(0, 10, config.batch_size).astype(np.int32),
                          sharding)
  state, metrics = parts.train_step(state, images, labels)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = parts.train_step(state, images, labels)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def count_collectives(args) -> dict:
  """Collective ops in the compiled 8-device step of each method."""
  mesh = jax.make_mesh((8,), ("data",))
  counts = {}
  for method, overrides in (("vanilla", {}), ("sage sampled", {})):
    text = train.lower_train_step(make_config(method, overrides, args), mesh,
                                  num_classes=10, image_shape=(32, 32, 3)
                                  ).compile().as_text()
    counts[method] = sum(text.count(op) for op in COLLECTIVE_OPS)
  return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="preactresnet18")
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--collectives-only", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.collectives_only:
    counts = count_collectives(args)
    print(" ".join(f"{k.replace(' ', '_')}={v}" for k, v in counts.items()))
    return

  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.asarray(devices[:1]), ("data",))
  print(f"jax {jax.__version__} on {devices[0].device_kind}; {args.model} width "
        f"{args.width}, batch {args.batch}, 32x32x3, one device")
  times = {}
  for method, overrides in METHODS:
    times[method] = time_step(make_config(method, overrides, args), mesh, args.steps)
  print(f"{'method':16s} {'step ms':>9s} {'/vanilla':>9s} {'images/s':>9s} "
        f"{'h/300 ep':>9s}")
  for method, seconds in times.items():
    hours = 300 * CIFAR_TRAIN_IMAGES / args.batch * seconds / 3600
    print(f"{method:16s} {1e3 * seconds:9.1f} {seconds / times['vanilla']:9.3f} "
          f"{args.batch / seconds:9.1f} {hours:9.1f}")

  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--collectives-only",
       "--model", args.model, "--width", str(args.width), "--batch", str(args.batch)],
      env=env, capture_output=True, text=True, check=True)
  print("collectives in the compiled 8-device step:", result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
  main()
