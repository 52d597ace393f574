"""Input pipeline benchmark: loading a dataset, then batch throughput.

Times ``load_dataset`` (tfds CIFAR-10 by default, downloaded when missing and
online; or an image folder, e.g. decoding 60,000 CIFAR-10 JPEGs), then
measures training-batch throughput for one epoch at the given global batch
sizes, and eval-batch throughput.

    python benchmarks/input_bench.py                        # tfds CIFAR-10
    python benchmarks/input_bench.py --image_folder ROOT --batch-sizes 128 100
    python benchmarks/input_bench.py --archive FOLDER.tar.gz --num-workers 0
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


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  common.add_data_flags(parser)
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 100])
  parser.add_argument("--num-workers", type=int, default=None,
                      help="image-folder decode processes (default: automatic)")
  args = parser.parse_args(argv)

  name, data_dir = common.data_source(args)
  if name != "image_folder":  # Download first, so that only loading is timed.
    from sage_jax import datasets  # pylint: disable=g-import-not-at-top
    datasets.ensure_tfds(name, data_dir)
  start = time.perf_counter()
  ds = ip.load_dataset(name, data_dir, num_workers=args.num_workers)
  decode_s = time.perf_counter() - start
  n = ds.info.num_train + ds.info.num_test
  print(f"load_dataset({name!r}): {n} images in {decode_s:.2f} s "
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
