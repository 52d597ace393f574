"""Input pipeline benchmark on the shared CIFAR-10 JPEGs.

Extracts ``cifar10-jpeg.tar.gz`` into a temporary folder (``common.extract``:
reused when already there; never inside the repository), times
``load_dataset('image_folder', ...)`` (decoding 60,000 JPEGs), then measures training-batch throughput for one epoch
at the given global batch sizes, and eval-batch throughput.

    python benchmarks/input_bench.py
    python benchmarks/input_bench.py --archive PATH --extract-to /tmp/sage_jax_cifar10 \
        --batch-sizes 128 100 --num-workers 0
"""
from __future__ import annotations

import argparse
import os
import sys
import time

# Runnable as a plain script from any directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sage_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top,wrong-import-position
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

def time_train_epoch(ds: ip.InMemoryDataset, global_batch_size: int) -> float:
  """Images/s of one epoch of :func:`ip.train_batches` (single process)."""
  start = time.perf_counter()
  count = 0
  for batch in ip.train_batches(ds.train_images, ds.train_labels,
                                global_batch_size=global_batch_size, seed=0,
                                epoch=0):
    count += len(batch["label"])
  return count / (time.perf_counter() - start)


def time_eval(ds: ip.InMemoryDataset, global_batch_size: int) -> float:
  start = time.perf_counter()
  count = 0
  for batch in ip.eval_batches(ds.test_images, ds.test_labels,
                               global_batch_size=global_batch_size):
    count += len(batch["label"])
  return count / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--archive", default=common.DEFAULT_ARCHIVE)
  parser.add_argument("--extract-to", default=common.DEFAULT_EXTRACT_DIR)
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 100])
  parser.add_argument("--num-workers", type=int, default=None,
                      help="decode processes (default: automatic)")
  args = parser.parse_args()

  root = common.extract(args.archive, args.extract_to)
  start = time.perf_counter()
  ds = ip.load_dataset("image_folder", root, num_workers=args.num_workers)
  decode_s = time.perf_counter() - start
  n = ds.info.num_train + ds.info.num_test
  print(f"load_dataset('image_folder'): {n} images in {decode_s:.2f} s "
        f"({n / decode_s:,.0f} images/s), cpus={ip._cpu_count()}, "  # pylint: disable=protected-access
        f"num_workers={args.num_workers}")
  print(f"  info: {ds.info}")
  for g in args.batch_sizes:
    print(f"train_batches global_batch={g}: "
          f"{time_train_epoch(ds, g):,.0f} images/s (one epoch, "
          f"{ip.steps_per_epoch(ds.info.num_train, g)} steps)")
  for g in args.batch_sizes:
    print(f"eval_batches global_batch={g}: {time_eval(ds, g):,.0f} images/s")


if __name__ == "__main__":
  main()
