"""The real CIFAR-10 test images beside the repository, for oracle tests.

Tests that compare against the releases' CPU solvers on real saliency
(test_grid_mrf, test_grid_mrf_moves, test_co_mixup, test_saliencymix) read
the first images of each class from the JPEG archive in the shared data
folder (or `SAGE_CIFAR10_ARCHIVE`); they skip when it is missing.
"""
import os
import re
import tarfile

import numpy as np
from PIL import Image
import pytest

ARCHIVE = os.environ.get(
    "SAGE_CIFAR10_ARCHIVE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "shared", "data", "cifar10-jpeg.tar.gz"))
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
           "ship", "truck")
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
_MEMBER = re.compile(r"cifar10-jpeg/test/([a-z]+)/(\d+)\.jpg$")


def load_test_images(dest, per_class):
  """uint8 (10·per_class, 32, 32, 3) RGB test images and int (10·per_class,) labels.

  The images numbered below `per_class` in each class folder, ordered by
  class then number; extracted under `dest` (a pytest tmp dir) with names of
  our own, so the archive cannot choose paths. Skips the calling test when
  the archive is missing.
  """
  if not os.path.exists(ARCHIVE):
    pytest.skip(f"CIFAR-10 archive not found at {ARCHIVE} (set SAGE_CIFAR10_ARCHIVE).")
  found = []
  with tarfile.open(ARCHIVE) as tar:
    for member in tar:
      match = _MEMBER.match(member.name) if member.isfile() else None
      if match and int(match.group(2)) < per_class:
        path = dest / member.name.replace("/", "_")
        path.write_bytes(tar.extractfile(member).read())
        found.append((CLASSES.index(match.group(1)), int(match.group(2)), path))
  assert len(found) == 10 * per_class, (len(found), per_class)
  found.sort()
  images = np.stack([np.asarray(Image.open(path).convert("RGB")) for _, _, path in found])
  return images, np.array([label for label, _, _ in found])
