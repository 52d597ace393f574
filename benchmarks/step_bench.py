"""Train-step cost of each method, and the collectives SAGE adds.

    python benchmarks/step_bench.py [--model preactresnet18] [--width 64]
                                    [--batch 128] [--steps 5] [--image_size 32]
    python benchmarks/step_bench.py --table [--table_out runtime_table.md]
    python benchmarks/step_bench.py --methods puzzle_mix   # vanilla + a subset

Prints, measured in one process on one device: the jitted train-step time of
every registered method (`sage_jax.methods`; SAGE with its sampled and its
exhaustive search) on the same model and batch, timed interleaved (one step
of each method per round, median over rounds), each as a ratio to vanilla,
and images/s with the projected hours for 300 CIFAR-10 epochs. Then, in a subprocess with 8 (forced
host) devices, the number of cross-device collectives in the compiled SAGE
step and the vanilla step (SAGE must add none). It also times SaliencyMix's
device saliency (`augment.fine_grained_saliency`) of the whole batch and of
the one image a step needs, Puzzle Mix's mixing (mask energy, solver and
transport) of the whole batch at each block count n, and Co-Mixup's mixing
(the joint labelling of every chunk and the mix), as shares of the vanilla
step. Co-Mixup mixes chunks of 20 images (the release's setting at batch
100); at a batch that 20 does not divide, the largest divisor below 20.

With --table the batch defaults to the paper's 100 and it also prints (and
with --table_out writes) this machine's analogue of Table 3 of the paper's
supplement as Markdown: step time, ratio to vanilla and projected hours for
300 epochs of CIFAR-10 at batch 100 (500 steps per epoch), beside the paper's
T4 GPU hours. An explicit --batch other than 100 is scaled to batch 100 at
constant images/s, and the table says so.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from sage_jax import methods
from sage_jax import published
from sage_jax import train
import common


def _bench_methods() -> tuple:
  """(label, config overrides) of every registered method; SAGE twice."""
  rows = []
  for name in methods.METHOD_NAMES:
    if name == "sage":
      rows += [("sage sampled", {"sage.search": "sampled"}),
               ("sage exhaustive", {"sage.search": "exhaustive"})]
    else:
      rows.append((name, {}))
  return tuple(rows)


METHODS = _bench_methods()
PUZZLE_BLOCK_NUMS = (2, 4, 8, 16)


def size_overrides(size: int) -> dict:
  """Config overrides that make every method run on size×size images.

  Puzzle Mix's block counts must divide the image side; small test images
  keep the counts that do.
  """
  return {"puzzle_mix.block_nums": tuple(
      n for n in PUZZLE_BLOCK_NUMS if size % n == 0)}
COLLECTIVE_OPS = ("all-reduce(", "all-reduce-start(", "all-gather(",
                  "all-gather-start(", "all-to-all(", "collective-permute(",
                  "collective-permute-start(", "reduce-scatter(")
CIFAR_TRAIN_IMAGES = 50_000
EPOCHS = 300
PAPER_BATCH = 100
# Supplement Table 3: PreActResNet18 on CIFAR-10, 300 epochs, batch 100, one
# NVIDIA T4; GPU hours. (The paper has no exhaustive-search SAGE.)
PAPER_T4_HOURS = {("sage sampled" if name == "sage" else name): hours
                  for name, hours in published.T4_HOURS["cifar10"][1].items()}


def fitting_chunk_size(per_device_batch: int, chunk_size: int = 20) -> int:
  """Co-Mixup's chunk: `chunk_size` (the release's 20) when it divides the
  per-device batch, else the largest divisor of that batch below it (batch
  128 -> 16); the batch-100 runs of the paper keep 20."""
  fitting = [d for d in range(2, chunk_size + 1) if per_device_batch % d == 0]
  if not fitting:
    raise ValueError(f"co_mixup needs a per-device batch with a divisor in "
                     f"[2, {chunk_size}]; got {per_device_batch}.")
  return fitting[-1]


def make_config(method: str, overrides: dict, args, devices: int = 1):
  overrides = dict(size_overrides(args.image_size), **overrides)
  if method.split()[0] == "co_mixup":
    overrides["co_mixup.chunk_size"] = fitting_chunk_size(args.batch // devices)
  return common.make_config(method, overrides, model=args.model,
                            width=args.width, batch=args.batch)


def projected_hours(seconds: float, batch: int, epochs: int = EPOCHS) -> float:
  """Hours for `epochs` of CIFAR-10 at `seconds` per step of `batch` images."""
  return epochs * CIFAR_TRAIN_IMAGES / batch * seconds / 3600


def runtime_table(times: dict, *, batch: int, device: str, model: str,
                  steps: int) -> str:
  """Markdown analogue of the supplement's Table 3 from measured step times.

  Args:
    times: method -> median seconds of one train step of `batch` images;
      must contain "vanilla".
    batch: the batch the times were measured at. Hours are for batch 100
      (500 steps per epoch); another batch is scaled to it at constant
      images/s, which the table states.
    device, model: what the times were measured on, for the caption.
    steps: how many timed steps each median is over, for the caption.
  """
  steps_per_epoch = CIFAR_TRAIN_IMAGES // PAPER_BATCH
  lines = [
      f"Train-step cost on {device}, one device; model {model}; 32×32×3 images, "
      f"fp32; median of {steps} interleaved steps after compilation.",
      "",
  ]
  if batch != PAPER_BATCH:
    lines += [f"Step times measured at batch {batch}; the hours are scaled to "
              f"batch {PAPER_BATCH} assuming the same images/s "
              f"(step time × {PAPER_BATCH}/{batch}).", ""]
  lines += [
      f"| method | step ms (batch {batch}) | / vanilla | hours, {EPOCHS} epochs "
      f"(batch {PAPER_BATCH}, {steps_per_epoch} steps/epoch) | paper T4 hours | "
      "paper / vanilla |",
      "|---|---:|---:|---:|---:|---:|",
  ]
  for method, seconds in times.items():
    paper = PAPER_T4_HOURS.get(method)
    paper_cells = (f"{paper:.2f} | {paper / PAPER_T4_HOURS['vanilla']:.2f}"
                   if paper is not None else "– | –")
    lines.append(
        f"| {method} | {1e3 * seconds:.1f} | {seconds / times['vanilla']:.2f} | "
        f"{projected_hours(seconds, batch):.2f} | {paper_cells} |")
  lines += ["", "Paper (supplement Table 3): PreActResNet18 (width 64) on CIFAR-10, "
            f"batch {PAPER_BATCH}, {EPOCHS} epochs, one NVIDIA T4: SAGE / vanilla = "
            f"{PAPER_T4_HOURS['sage sampled'] / PAPER_T4_HOURS['vanilla']:.2f}."]
  return "\n".join(lines) + "\n"


def saliency_seconds(batch: int, size: int, repeats: int) -> dict:
  """Median seconds of the jitted fine-grained saliency: whole batch, one image."""
  import time  # pylint: disable=g-import-not-at-top
  from sage_jax import augment  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  saliency = jax.jit(augment.fine_grained_saliency)
  result = {}
  for label, count in ((f"batch of {batch}", batch), ("one image (per step)", 1)):
    images = jax.device_put(rng.integers(0, 256, (count, size, size, 3), np.uint8))
    jax.block_until_ready(saliency(images))
    times = []
    for _ in range(max(repeats, 20)):
      start = time.perf_counter()
      jax.block_until_ready(saliency(images))
      times.append(time.perf_counter() - start)
    result[label] = float(np.median(times))
  return result


def _random_mixing_batch(batch: int, size: int) -> tuple:
  """(images, int labels in [0, 10), saliency) on the device, seeded."""
  rng = np.random.default_rng(0)
  return (jax.device_put(rng.standard_normal((batch, size, size, 3), np.float32)),
          jax.device_put(rng.integers(0, 10, (batch,)).astype(np.int32)),
          jax.device_put(rng.random((batch, size, size), np.float32)))


def _median_keyed_call_seconds(mix, repeats: int) -> float:
  """Median seconds of `mix(key)` over fresh keys, after a compiling call."""
  import time  # pylint: disable=g-import-not-at-top
  times = []
  for step in range(max(repeats, 5) + 1):
    key = jax.random.key(step)
    start = time.perf_counter()
    jax.block_until_ready(mix(key))
    if step:   # the first call compiles
      times.append(time.perf_counter() - start)
  return float(np.median(times))


def puzzle_mix_seconds(batch: int, size: int, repeats: int) -> dict:
  """Median seconds of Puzzle Mix's mixing (energy, solver, transport) per n.

  The jitted `augment.puzzle_mix` of a whole batch at each fixed block count
  n, on random images and saliency: everything the method adds to its two
  passes except the saliency pass itself.
  """
  from sage_jax import augment  # pylint: disable=g-import-not-at-top
  images, labels, saliency = _random_mixing_batch(batch, size)
  result = {}
  for n in size_overrides(size)["puzzle_mix.block_nums"]:
    mix = jax.jit(lambda key, n=n: augment.puzzle_mix(
        key, images, labels, saliency, num_classes=10, block_num=n).images)
    result[n] = _median_keyed_call_seconds(mix, repeats)
  return result


def co_mixup_seconds(batch: int, size: int, repeats: int) -> tuple:
  """(chunk size, median seconds) of Co-Mixup's mixing of one batch.

  The jitted `augment.co_mixup` (compatibility, the joint block labelling
  of every chunk, mixing) on random images and saliency: everything the
  method adds to its two passes.
  """
  from sage_jax import augment  # pylint: disable=g-import-not-at-top
  images, labels, saliency = _random_mixing_batch(batch, size)
  chunk_size = fitting_chunk_size(batch)
  mix = jax.jit(lambda key: augment.co_mixup(
      key, images, labels, saliency, num_classes=10, chunk_size=chunk_size).images)
  return chunk_size, _median_keyed_call_seconds(mix, repeats)


def count_collectives(args) -> dict:
  """Collective ops in the compiled 8-device step of each method."""
  mesh = jax.make_mesh((8,), ("data",))
  counts = {}
  for method, overrides in (("vanilla", {}), ("sage sampled", {}),
                            ("puzzle_mix", {}), ("co_mixup", {})):
    text = train.lower_train_step(make_config(method, overrides, args, devices=8),
                                  mesh,
                                  num_classes=10,
                                  image_shape=(args.image_size, args.image_size, 3)
                                  ).compile().as_text()
    counts[method] = sum(text.count(op) for op in COLLECTIVE_OPS)
  return counts


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="preactresnet18")
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--batch", type=int, default=None,
                      help="global batch (default 128; 100 with --table)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--image_size", type=int, default=32,
                      help="square image side (CIFAR: 32)")
  parser.add_argument("--table", action="store_true",
                      help="also print the Markdown runtime table (Table 3)")
  parser.add_argument("--table_out", default="",
                      help="with --table: also write the table to this file")
  parser.add_argument("--methods", default="",
                      help="comma-separated subset of the rows to time (e.g. "
                           "vanilla,puzzle_mix; vanilla is always included)")
  parser.add_argument("--collectives-only", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.batch is None:
    args.batch = PAPER_BATCH if args.table else 128

  if args.collectives_only:
    counts = count_collectives(args)
    print(" ".join(f"{k.replace(' ', '_')}={v}" for k, v in counts.items()))
    return

  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.asarray(devices[:1]), ("data",))
  size = args.image_size
  print(f"jax {jax.__version__} on {devices[0].device_kind}; {args.model} width "
        f"{args.width}, batch {args.batch}, {size}x{size}x3, one device; "
        f"{args.steps} interleaved rounds")
  selected = METHODS
  if args.methods:
    wanted = {"vanilla"} | set(args.methods.split(","))
    unknown = wanted - {label.split()[0] for label, _ in METHODS} - {
        label for label, _ in METHODS}
    if unknown:
      parser.error(f"--methods: unknown {sorted(unknown)}; choose from "
                   f"{[label for label, _ in METHODS]}")
    selected = [(label, overrides) for label, overrides in METHODS
                if label in wanted or label.split()[0] in wanted]
  times = common.interleaved_step_times(
      {method: make_config(method, overrides, args) for method, overrides in selected},
      mesh, args.steps, image_size=size)
  print(f"{'method':16s} {'step ms':>9s} {'/vanilla':>9s} {'images/s':>9s} "
        f"{'h/300 ep':>9s}")
  for method, seconds in times.items():
    print(f"{method:16s} {1e3 * seconds:9.1f} {seconds / times['vanilla']:9.3f} "
          f"{args.batch / seconds:9.1f} {projected_hours(seconds, args.batch):9.1f}")

  saliency = saliency_seconds(args.batch, size, args.steps)
  for label, seconds in saliency.items():
    print(f"saliencymix saliency, {label}: {1e3 * seconds:.3f} ms = "
          f"{100 * seconds / times['vanilla']:.3f}% of the vanilla step")

  for n, seconds in puzzle_mix_seconds(args.batch, size, args.steps).items():
    print(f"puzzle_mix mixing (energy, solver, transport), n={n}: "
          f"{1e3 * seconds:.1f} ms = {100 * seconds / times['vanilla']:.2f}% of "
          "the vanilla step")

  chunk_size, seconds = co_mixup_seconds(args.batch, size, args.steps)
  print(f"co_mixup mixing (labelling, mixing), batch {args.batch} in chunks "
        f"of {chunk_size}: {1e3 * seconds:.1f} ms = "
        f"{100 * seconds / times['vanilla']:.2f}% of the vanilla step")

  if args.table:
    table = runtime_table(
        times, batch=args.batch, device=common.describe_device(devices[0]),
        model=f"{args.model} width {args.width}", steps=args.steps)
    print()
    print(table, end="")
    if args.table_out:
      with open(args.table_out, "w") as f:
        f.write(table)
      print(f"wrote {args.table_out}")
    print()

  # The 8-device program needs a batch divisible by 8 (e.g. 100 -> 104), and
  # Co-Mixup at least 2 images per device.
  collective_batch = -(-max(args.batch, 16) // 8) * 8
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--collectives-only",
       "--model", args.model, "--width", str(args.width),
       "--batch", str(collective_batch), "--image_size", str(size)],
      env=env, capture_output=True, text=True, check=True)
  print("collectives in the compiled 8-device step:", result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
  main()
