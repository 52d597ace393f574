"""Getting the data: tfds datasets downloaded when possible, image-folder subsets.

The tfds datasets the program reads (CIFAR-10, CIFAR-100 and CIFAR-10-C) are
used the standard tfds way: they live in a tfds data dir (the one given, else
``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``). :func:`ensure_tfds`
decides what to do before anything is read:

1. prepared there: used as is, without any network access;
2. not prepared, but the original archive lies in ``<data dir>/downloads/manual/``:
   prepared from that file, without any network access;
3. not prepared, downloads allowed and the download host answers a TCP
   connection within a few seconds (:func:`probe`): downloaded and prepared by tfds
   (``download_and_prepare``, with tfds's own progress bars);
4. otherwise: :class:`DatasetUnavailableError` at once, saying what is
   missing, where it looked, how to prepare it on another machine and copy it
   over, and which alternative needs no tfds at all.

The reachability probe exists because tfds itself retries an unreachable
host for minutes; the probe answers in seconds.

Command line (``python -m sage_jax.datasets --help``)::

    # Prepare a tfds dataset (e.g. on a machine with internet, to copy over).
    python -m sage_jax.datasets prepare cifar10 --data_dir DIR
    # A small image folder: the first N images of each class.
    python -m sage_jax.datasets subset --source cifar10 --out DIR \\
        --train_per_class 500 --test_per_class 100
    python -m sage_jax.datasets subset --source PATH/TO/IMAGE_FOLDER --out DIR \\
        --train_per_class 500 --test_per_class 100
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import pathlib
import shutil
import socket
import sys
import threading
import urllib.parse
import urllib.request
from typing import Sequence

import numpy as np

_log = logging.getLogger(__name__)

# Seconds the reachability probe waits for a TCP connection (DNS included).
PROBE_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """Where tfds downloads a dataset from (as its url_checksums list it).

  Attributes:
    url: the archive tfds downloads.
    filename: the archive's file name (what ``downloads/manual/`` must hold).
    size_bytes: the archive's size.
    alternative: how to do without tfds for this dataset.
  """
  url: str
  filename: str
  size_bytes: int
  alternative: str


_IMAGE_FOLDER_ALTERNATIVE = (
    "Or train from any folder of images instead, no tfds needed: "
    "--config.dataset.name=image_folder --config.dataset.data_dir=ROOT with "
    "ROOT/train/<class>/* and ROOT/test/<class>/* (`python -m "
    "sage_jax.datasets subset --source PATH --out ROOT` makes a small one from "
    "an existing image folder).")

# The archives of tensorflow_datasets 4.9's builders (its url_checksums/
# files; tests/test_download.py checks them against the installed tfds).
TFDS_SOURCES = {
    "cifar10": TfdsSource(
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "cifar-10-binary.tar.gz", 170052171, _IMAGE_FOLDER_ALTERNATIVE),
    "cifar100": TfdsSource(
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "cifar-100-binary.tar.gz", 168513733, _IMAGE_FOLDER_ALTERNATIVE),
    "cifar10_corrupted": TfdsSource(
        "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar",
        "CIFAR-10-C.tar", 2918471680,
        "Or extract CIFAR-10-C.tar yourself and pass --corrupted_dir=<its folder "
        "of labels.npy and <corruption>.npy files>."),
}
CIFAR10_C = "cifar10_corrupted"


class DatasetUnavailableError(FileNotFoundError):
  """A tfds dataset is neither prepared nor preparable here; the message says why
  and how to fix it."""


@dataclasses.dataclass(frozen=True)
class PrepareResult:
  """What :func:`ensure_tfds` did.

  Attributes:
    name: the tfds name, e.g. "cifar10" or "cifar10_corrupted/fog_3".
    data_dir: the prepared dataset's folder (``<root>/<name>/<version>``).
    action: "found" (already prepared), "manual" (prepared from the archive in
      ``downloads/manual/``) or "downloaded".
  """
  name: str
  data_dir: str
  action: str


def _base_name(name) -> str:
  """'cifar10_corrupted' for 'cifar10_corrupted/fog_3'; checks `name`."""
  if not isinstance(name, str):
    raise TypeError(f"name must be a tfds dataset name (str), got {name!r}.")
  base = name.split("/")[0]
  if base not in TFDS_SOURCES:
    raise ValueError(f"name must be one of {sorted(TFDS_SOURCES)} (optionally "
                     f"'<name>/<config>'), got {name!r}.")
  return base


def _endpoint(url: str) -> tuple[str, int]:
  """(host, port) a request for `url` connects to: its proxy's when one applies."""
  parts = urllib.parse.urlsplit(url)
  if parts.scheme not in ("http", "https") or not parts.hostname:
    raise ValueError(f"url must be an http(s) URL with a host, got {url!r}.")
  host = parts.hostname
  port = parts.port or (443 if parts.scheme == "https" else 80)
  # tfds downloads with `requests`, which honours the *_proxy variables: then
  # the proxy, not the host, is what must answer.
  proxy = urllib.request.getproxies().get(parts.scheme)
  if proxy and not urllib.request.proxy_bypass(host):
    proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    if proxy_parts.hostname:
      default = 443 if proxy_parts.scheme == "https" else 80
      return proxy_parts.hostname, proxy_parts.port or default
  return host, port


def probe(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
  """Tries a TCP connection to `url`'s host (or its proxy); None when it opens.

  Name resolution counts against the timeout too: the attempt runs in a
  daemon thread that is abandoned after `timeout_s`, so this returns within
  about `timeout_s` seconds whatever the network does.

  Args:
    url: an http(s) URL, e.g. a dataset archive.
    timeout_s: seconds to wait, > 0.

  Returns:
    None when the connection opened, else why not, e.g. "www.example.org:443
    did not answer within 5 s" or "www.example.org:443: [Errno -2] Name or
    service not known".

  Raises:
    ValueError: `url` is not an http(s) URL with a host, or `timeout_s` <= 0.
  """
  if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
      or not timeout_s > 0:
    raise ValueError(f"timeout_s must be a positive number, got {timeout_s!r}.")
  host, port = _endpoint(url)
  outcome = []

  def connect():
    try:
      with socket.create_connection((host, port), timeout=timeout_s):
        outcome.append(None)
    except OSError as error:
      outcome.append(f"{host}:{port}: {error}")

  thread = threading.Thread(target=connect, name="sage_jax-probe", daemon=True)
  thread.start()
  thread.join(timeout_s)
  if not outcome:
    return f"{host}:{port} did not answer within {timeout_s:g} s"
  return outcome[0]


def host_reachable(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
  """Whether :func:`probe` connects to `url`'s host (or proxy) in time."""
  return probe(url, timeout_s) is None


def _import_tfds():
  """tensorflow_datasets, with its Google Cloud Storage lookups turned off
  (offline they retry for minutes; we download from the original hosts)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from sage_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  input_pipeline._disable_tfds_network(tfds)  # pylint: disable=protected-access
  return tfds


def _tfds_builder(name: str, data_dir: str | None):
  """tfds's builder of `name` in `data_dir` (None: tfds's default); no I/O."""
  return _import_tfds().builder(name, data_dir=data_dir, try_gcs=False)


def _download_config():
  tfds = _import_tfds()
  return tfds.download.DownloadConfig(try_download_gcs=False)


def missing_message(name: str, data_dir_root: str, reason: str,
                    looked_in: str | None = None) -> str:
  """The message of a dataset that is not prepared and cannot be prepared here.

  Args:
    name: tfds name (with or without '/<config>').
    data_dir_root: the tfds data dir that was searched.
    reason: why it is not downloaded, e.g. "downloads are switched off".
    looked_in: the exact folder that was missing, if known.

  Returns:
    Several lines: what is missing, where, why, and the ways to fix it.
  """
  base = _base_name(name)
  source = TFDS_SOURCES[base]
  where = looked_in or os.path.join(data_dir_root, base)
  megabytes = source.size_bytes / 1e6
  return (
      f"tfds dataset {name!r} is not prepared in the tfds data dir "
      f"{data_dir_root} (looked for {where}), and it is not downloaded here: "
      f"{reason}.\n"
      "Fix it in one of these ways:\n"
      f"  1. On a machine with internet run `tfds build {base} --data_dir DIR` "
      f"(or `python -m sage_jax.datasets prepare {base} --data_dir DIR`, or "
      f"`python -c \"import tensorflow_datasets as tfds; "
      f"tfds.builder('{base}', data_dir='DIR').download_and_prepare()\"`), "
      f"copy DIR/{base} to {os.path.join(data_dir_root, base)} and run again "
      "(or point --config.dataset.data_dir / $TFDS_DATA_DIR at the copy).\n"
      f"  2. Copy the archive {source.filename} ({megabytes:,.0f} MB, "
      f"{source.url}) to {os.path.join(data_dir_root, 'downloads', 'manual')}/ "
      "and run again: it is prepared from that file without a network.\n"
      f"  3. {source.alternative}")


def ensure_tfds(name: str, data_dir: str | None = None, *,
                download: bool = True,
                timeout_s: float = PROBE_TIMEOUT_S) -> PrepareResult:
  """Makes sure tfds dataset `name` is prepared in `data_dir`.

  See the module docstring for the four cases. Only case 3 touches the
  network; the probe of case 3 runs only when the dataset is missing.

  Args:
    name: "cifar10", "cifar100", "cifar10_corrupted" or
      "cifar10_corrupted/<corruption>_<severity>".
    data_dir: tfds data dir; None or "" = tfds's default ($TFDS_DATA_DIR or
      ~/tensorflow_datasets).
    download: False forbids downloading (clusters without internet): a missing
      dataset is then an error without any probe.
    timeout_s: seconds the reachability probe may take.

  Returns:
    A :class:`PrepareResult`.

  Raises:
    TypeError / ValueError: an unknown `name`, a non-bool `download`.
    DatasetUnavailableError: missing, and not preparable here (a
      FileNotFoundError whose message explains the fixes).
  """
  base = _base_name(name)
  if not isinstance(download, bool):
    raise TypeError(f"download must be True or False, got {download!r}.")
  builder = _tfds_builder(name, data_dir or None)
  if builder.is_prepared():
    return PrepareResult(name, str(builder.data_dir), "found")
  source = TFDS_SOURCES[base]
  root = str(builder.data_dir_root)
  manual = os.path.join(root, "downloads", "manual", source.filename)
  if os.path.isfile(manual):
    _log.info("Preparing tfds %s in %s from %s (no download).", name, root, manual)
    builder.download_and_prepare(download_config=_download_config())
    return PrepareResult(name, str(builder.data_dir), "manual")
  if not download:
    reason = ("downloads are switched off (--config.dataset.download=False); "
              "set it to True on a machine with internet")
    raise DatasetUnavailableError(missing_message(name, root, reason,
                                                  str(builder.data_dir)))
  failure = probe(source.url, timeout_s)
  if failure is not None:
    reason = f"the download host is not reachable ({failure}; no internet?)"
    raise DatasetUnavailableError(missing_message(name, root, reason,
                                                  str(builder.data_dir)))
  _log.info("Downloading tfds %s (%s, %.0f MB) and preparing it in %s.", name,
            source.url, source.size_bytes / 1e6, root)
  builder.download_and_prepare(download_config=_download_config())
  return PrepareResult(name, str(builder.data_dir), "downloaded")


def cifar10_c_names() -> list[str]:
  """The 95 tfds names "cifar10_corrupted/<corruption>_<severity>"."""
  tfds = _import_tfds()
  return [f"{CIFAR10_C}/{c.name}"
          for c in tfds.builder_cls(CIFAR10_C).BUILDER_CONFIGS]


def ensure_cifar10_c(data_dir: str | None = None, *, download: bool = True,
                     timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
  """Prepares every CIFAR-10-C config that is missing, downloading when possible.

  The archive (2.9 GB) is downloaded once and every config is prepared from
  it. Unlike :func:`ensure_tfds` a failure is not an error: the evaluation
  then reports the corruptions as not available.

  Args:
    data_dir, download, timeout_s: as for :func:`ensure_tfds`.

  Returns:
    None when every config is prepared, else the message of the first
    config that could not be prepared (the rest were not tried).
  """
  for name in cifar10_c_names():
    try:
      ensure_tfds(name, data_dir, download=download, timeout_s=timeout_s)
    except DatasetUnavailableError as error:
      return str(error)
  return None


def prepare_for_run(config, *, evaluate_corruptions: bool = False,
                    timeout_s: float = PROBE_TIMEOUT_S) -> list[str]:
  """What `main.py` does with the data before training or evaluating.

  Args:
    config: a run config (`sage_jax.config.base_config()` layout): uses
      `dataset.name`, `dataset.data_dir` and `dataset.download` (True when the
      field is absent).
    evaluate_corruptions: also prepare CIFAR-10-C (for `--mode=eval` of a
      `dataset.name=cifar10` run without `--corrupted_dir`).
    timeout_s: seconds the reachability probe may take.

  Returns:
    Warnings to show (CIFAR-10-C not available); empty when all is there.

  Raises:
    DatasetUnavailableError: the run's dataset is missing and cannot be
      prepared here.
  """
  name = config.dataset.name
  data_dir = config.dataset.data_dir or None
  download = config.dataset.get("download", True)
  warnings = []
  if name in ("cifar10", "cifar100"):
    ensure_tfds(name, data_dir, download=download, timeout_s=timeout_s)
    if evaluate_corruptions and name == "cifar10":
      message = ensure_cifar10_c(data_dir, download=download, timeout_s=timeout_s)
      if message is not None:
        warnings.append("CIFAR-10-C will be reported as not available: " + message)
  return warnings


# --------------------------------------------------------------------------
# Image-folder subsets.
# --------------------------------------------------------------------------


def _check_count(value, argname: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{argname} must be a positive integer, got {value!r}.")


def _check_empty_out(out_dir: str) -> None:
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise ValueError(f"out_dir {out_dir} exists and is not an empty folder; "
                     "pass a new folder.")


def first_per_class(labels: np.ndarray, num_classes: int, count: int) -> np.ndarray:
  """Sorted indices of the first `count` examples of each class, in order.

  Args:
    labels: int (N,) in [0, num_classes).
    num_classes: number of classes.
    count: examples per class (fewer where a class has fewer).

  Returns:
    int64 (M,) ascending indices into `labels`.
  """
  labels = np.asarray(labels)
  picked = [np.flatnonzero(labels == c)[:count] for c in range(num_classes)]
  return np.sort(np.concatenate(picked)).astype(np.int64)


def subset_image_folder(source: str, out_dir: str, *, train_per_class: int,
                        test_per_class: int) -> dict:
  """Copies the first files (by name) of each class of an image folder.

  Args:
    source: an image folder root, `source/{train,test}/<class>/<images>`.
    out_dir: a new or empty folder; gets the same layout.
    train_per_class, test_per_class: files per class to copy (positive).

  Returns:
    {"train": files copied, "test": files copied}.

  Raises:
    ValueError: bad counts, a non-empty `out_dir`, a malformed folder.
    FileNotFoundError: `source` lacks train/ or test/.
  """
  from sage_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  _check_count(train_per_class, "train_per_class")
  _check_count(test_per_class, "test_per_class")
  _check_empty_out(out_dir)
  class_names = ip._class_names(source)  # pylint: disable=protected-access
  counts = {}
  for split, count in (("train", train_per_class), ("test", test_per_class)):
    counts[split] = 0
    for class_name in class_names:
      target = os.path.join(out_dir, split, class_name)
      os.makedirs(target, exist_ok=True)
      files = ip._list_images(os.path.join(source, split, class_name))  # pylint: disable=protected-access
      for path in files[:count]:
        shutil.copy2(path, target)
        counts[split] += 1
  return counts


def export_image_folder(name: str, out_dir: str, *, train_per_class: int,
                        test_per_class: int, data_dir: str | None = None,
                        download: bool = True) -> dict:
  """Writes the first images of each class of a tfds dataset as PNG files.

  Args:
    name: "cifar10" or "cifar100".
    out_dir: a new or empty folder; gets `out_dir/{train,test}/<class
      name>/<index in the split>.png`, the layout of
      `dataset.name=image_folder`.
    train_per_class, test_per_class: images per class (positive).
    data_dir, download: as for :func:`ensure_tfds` (run first).

  Returns:
    {"train": images written, "test": images written}.

  Raises:
    ValueError: bad name or counts, a non-empty `out_dir`.
    DatasetUnavailableError: as :func:`ensure_tfds`.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sage_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  if name not in ("cifar10", "cifar100"):
    raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}.")
  _check_count(train_per_class, "train_per_class")
  _check_count(test_per_class, "test_per_class")
  _check_empty_out(out_dir)
  ensure_tfds(name, data_dir, download=download)
  data = ip.load_dataset(name, data_dir or None)
  names = data.info.class_names
  counts = {}
  for split, images, labels, count in (
      ("train", data.train_images, data.train_labels, train_per_class),
      ("test", data.test_images, data.test_labels, test_per_class)):
    for class_name in names:
      os.makedirs(os.path.join(out_dir, split, class_name), exist_ok=True)
    indices = first_per_class(labels, len(names), count)
    for i in indices:
      Image.fromarray(images[i]).save(
          os.path.join(out_dir, split, names[labels[i]], f"{i:05d}.png"))
    counts[split] = len(indices)
  return counts


def main(argv: Sequence[str] | None = None) -> int:
  """`python -m sage_jax.datasets prepare|subset ...`; returns the exit status."""
  parser = argparse.ArgumentParser(
      prog="python -m sage_jax.datasets",
      description="Prepare tfds datasets or write small image-folder subsets.")
  commands = parser.add_subparsers(dest="command", required=True)
  prepare = commands.add_parser(
      "prepare", help="download (when needed) and prepare a tfds dataset")
  prepare.add_argument("name", choices=sorted(TFDS_SOURCES))
  prepare.add_argument("--data_dir", default=None,
                       help="tfds data dir (default: $TFDS_DATA_DIR or "
                            "~/tensorflow_datasets)")
  subset = commands.add_parser(
      "subset", help="write the first N images of each class as an image folder")
  subset.add_argument("--source", required=True,
                      help="'cifar10', 'cifar100' (tfds, downloaded when "
                           "possible) or the root of an image folder")
  subset.add_argument("--out", required=True, help="new or empty folder")
  subset.add_argument("--train_per_class", type=int, required=True)
  subset.add_argument("--test_per_class", type=int, required=True)
  subset.add_argument("--data_dir", default=None, help="tfds data dir")
  subset.add_argument("--no_download", action="store_true",
                      help="never download (tfds sources)")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  try:
    if args.command == "prepare":
      if args.name == CIFAR10_C:
        message = ensure_cifar10_c(args.data_dir)
        if message is not None:
          raise DatasetUnavailableError(message)
        print(f"{CIFAR10_C}: all {len(cifar10_c_names())} configs prepared.")
      else:
        result = ensure_tfds(args.name, args.data_dir)
        print(f"{result.name}: {result.action} in {result.data_dir}")
      return 0
    if args.source in ("cifar10", "cifar100"):
      counts = export_image_folder(
          args.source, args.out, train_per_class=args.train_per_class,
          test_per_class=args.test_per_class, data_dir=args.data_dir,
          download=not args.no_download)
    else:
      counts = subset_image_folder(args.source, args.out,
                                   train_per_class=args.train_per_class,
                                   test_per_class=args.test_per_class)
    print(f"wrote {counts['train']} train and {counts['test']} test images to "
          f"{pathlib.Path(args.out).resolve()}")
    return 0
  except (ValueError, FileNotFoundError) as error:
    sys.stderr.write(f"error: {error}\n")
    return 1


if __name__ == "__main__":
  sys.exit(main())
