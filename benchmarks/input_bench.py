"""Input pipeline benchmark on the shared CIFAR-10 JPEGs.

Extracts ``cifar10-jpeg.tar.gz`` into a temporary folder (reused when already
there; never inside the repository), times ``load_dataset('image_folder', ...)``
(decoding 60,000 JPEGs), then measures training-batch throughput for one epoch
at the given global batch sizes, and eval-batch throughput.

    python benchmarks/input_bench.py
    python benchmarks/input_bench.py --archive PATH --extract-to /tmp/cifar10-jpeg \
        --batch-sizes 128 100 --num-workers 0
"""
from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time

# Runnable as a plain script from any directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sage_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top,wrong-import-position

_DEFAULT_ARCHIVE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared", "data", "cifar10-jpeg.tar.gz")


def extract(archive: str, dest: str) -> str:
  """Returns the image-folder root inside ``dest``, extracting it if absent."""
  root = os.path.join(dest, "cifar10-jpeg")
  if os.path.isdir(os.path.join(root, "test")):
    print(f"reusing {root}")
    return root
  os.makedirs(dest, exist_ok=True)
  start = time.perf_counter()
  with tarfile.open(archive) as tar:
    # The "data" filter (refuse absolute paths, links out of dest) exists
    # from Python 3.11.4 / 3.10.12 on.
    if hasattr(tarfile, "data_filter"):
      tar.extractall(dest, filter="data")
    else:
      tar.extractall(dest)
  print(f"extracted {archive} -> {root} in {time.perf_counter() - start:.1f} s")
  return root


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
  parser.add_argument("--archive", default=_DEFAULT_ARCHIVE)
  parser.add_argument("--extract-to",
                      default=os.path.join(tempfile.gettempdir(),
                                           "cifar10-jpeg"))
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 100])
  parser.add_argument("--num-workers", type=int, default=None,
                      help="decode processes (default: automatic)")
  args = parser.parse_args()

  root = extract(args.archive, args.extract_to)
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
