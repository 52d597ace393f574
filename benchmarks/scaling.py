"""Weak scaling of the data-parallel SAGE train step over 1, 2, 4, … devices.

    python benchmarks/scaling.py [--model preactresnet18] [--width 16]
                                 [--per_device_batch 32] [--steps 5]
                                 [--image_size 32] [--max_devices 0]

Runs the SAGE train step (config method "sage", sampled search) of
`sage_jax.train.create_components` at a fixed per-device batch on a 1-D 'data'
mesh over the first n of `jax.devices()` for n = 1, 2, 4, … and all of them
(global batch = n × per-device batch), and prints per n: the median step time,
images/s, the weak-scaling efficiency t_1 / t_n (1.0 = perfect), and the bytes
all-reduced per step, read from the compiled program's HLO text (the operand
sizes of its all-reduce / all-reduce-start ops: what each device contributes;
a ring all-reduce sends about 2 (n-1)/n times that per device), beside the
bytes of the model parameters. The gradient all-reduce should be about the
parameter bytes; the small rest is the averaged metrics (SAGE adds no
communication). XLA may keep the (trivial) all-reduce on one device.

The same command runs unchanged on the GPUs of one host or the chips of a
single-host TPU VM (it uses jax.devices()). On a CPU-only machine, force host
devices:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/scaling.py

Forced host devices are threads sharing the same CPU cores, so on CPU the
times and efficiencies say little about scaling (n devices do n times the work
on the same cores); the all-reduce bytes are meaningful everywhere.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from sage_jax import train
import common


def device_counts(available: int) -> list[int]:
  """1, 2, 4, … up to `available`, and `available` itself."""
  counts, n = [], 1
  while n < available:
    counts.append(n)
    n *= 2
  return counts + [available]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="preactresnet18")
  parser.add_argument("--width", type=int, default=16)
  parser.add_argument("--per_device_batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=5,
                      help="timed steps per device count (after one compile step)")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--max_devices", type=int, default=0,
                      help="use at most this many devices (0 = all)")
  args = parser.parse_args()

  devices = jax.devices()
  if args.max_devices:
    devices = devices[:args.max_devices]
  size = args.image_size
  print(f"jax {jax.__version__}, {len(devices)} × {common.describe_device(devices[0])}; "
        f"SAGE (sampled) train step, {args.model} width {args.width}, "
        f"{size}x{size}x3, {args.per_device_batch} images per device, "
        f"median of {args.steps} steps")
  header = (f"{'devices':>7s} {'batch':>7s} {'step ms':>9s} {'images/s':>10s} "
            f"{'t1/tn':>7s} {'all-reduce B':>13s} {'/params':>8s}")
  t1, initial_state = None, None
  for n in device_counts(len(devices)):
    mesh = jax.sharding.Mesh(np.asarray(devices[:n]), (train.AXIS,))
    config = common.make_config("sage", {"sage.search": "sampled"},
                                model=args.model, width=args.width,
                                batch=n * args.per_device_batch)
    run = common.run_train_step(config, mesh, args.steps, image_size=size,
                                initial_state=initial_state)
    initial_state = run.initial_state
    if t1 is None:
      t1 = run.seconds
      print(f"parameter bytes: {run.param_bytes}")
      print(header)
    reduced = common.all_reduce_bytes(run.hlo)
    print(
        f"{n:7d} {config.batch_size:7d} {1e3 * run.seconds:9.1f} "
        f"{config.batch_size / run.seconds:10.1f} {t1 / run.seconds:7.3f} "
        f"{reduced:13d} {reduced / run.param_bytes:8.3f}", flush=True)


if __name__ == "__main__":
  main()
