"""Helpers shared by the benchmark scripts."""
from __future__ import annotations

import os
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_ARCHIVE = os.path.join(os.path.dirname(REPO), "shared", "data",
                               "cifar10-jpeg.tar.gz")
DEFAULT_EXTRACT_DIR = os.path.join(tempfile.gettempdir(), "sage_jax_cifar10")


def extract(archive: str = DEFAULT_ARCHIVE, dest: str = DEFAULT_EXTRACT_DIR) -> str:
  """Returns the image-folder root inside `dest`, extracting `archive` if absent.

  Never extracts into the repository: the default is a folder of the system's
  temporary directory, reused across runs.
  """
  root = os.path.join(dest, "cifar10-jpeg")
  if os.path.isdir(os.path.join(root, "test")):
    return root
  if not os.path.exists(archive):
    raise FileNotFoundError(
        f"CIFAR-10 archive not found at {archive}; pass its path explicitly.")
  os.makedirs(dest, exist_ok=True)
  start = time.perf_counter()
  with tarfile.open(archive) as tar:
    tar.extractall(dest, filter="data")
  print(f"extracted {archive} -> {root} in {time.perf_counter() - start:.1f} s")
  return root
