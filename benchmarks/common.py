"""Helpers shared by the benchmark scripts.

Data: the scripts that need real images take them from flags
(`add_data_flags`): CIFAR-10 from tfds (the default; downloaded into the tfds
data dir when missing and online), `--image_folder ROOT` (any
ROOT/{train,test}/<class>/* folder), or `--archive PATH` (a .tar.gz of such a
folder, extracted once into a temporary directory, never into the
repository).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tarfile
import tempfile
import time
from typing import Any, NamedTuple

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_EXTRACT_DIR = os.path.join(tempfile.gettempdir(), "sage_jax_image_folders")
if REPO not in sys.path:  # for the sage_jax imports of the helpers below
  sys.path.insert(0, REPO)


def _image_folder_root(folder: str) -> str | None:
  """`folder` or its only subfolder, whichever holds train/ and test/."""
  candidates = [folder]
  if os.path.isdir(folder):
    subfolders = [e.path for e in os.scandir(folder) if e.is_dir()]
    if len(subfolders) == 1:
      candidates.append(subfolders[0])
  for candidate in candidates:
    if all(os.path.isdir(os.path.join(candidate, s)) for s in ("train", "test")):
      return candidate
  return None


def extract(archive: str, dest: str = DEFAULT_EXTRACT_DIR) -> str:
  """The image-folder root inside a .tar(.gz) archive, extracted once.

  Args:
    archive: a tar archive holding train/<class>/* and test/<class>/*, at its
      top or inside one top-level folder.
    dest: parent folder; the archive goes to `dest/<archive name>/` and is
      reused when already there. The default is in the system's temporary
      directory, never the repository.

  Returns:
    The folder holding train/ and test/.

  Raises:
    FileNotFoundError: `archive` does not exist.
    ValueError: the archive holds no image folder.
  """
  if not os.path.isfile(archive):
    raise FileNotFoundError(f"archive {archive} does not exist; pass the path "
                            "of a .tar.gz of an image folder.")
  name = os.path.basename(archive)
  for suffix in (".tar.gz", ".tgz", ".tar"):
    if name.endswith(suffix):
      name = name[:-len(suffix)]
      break
  folder = os.path.join(dest, name)
  root = _image_folder_root(folder)
  if root is not None:
    return root
  os.makedirs(folder, exist_ok=True)
  start = time.perf_counter()
  with tarfile.open(archive) as tar:
    tar.extractall(folder, filter="data")
  root = _image_folder_root(folder)
  if root is None:
    raise ValueError(f"{archive} holds no train/ and test/ folders (at its top "
                     "or in its one top-level folder).")
  print(f"extracted {archive} -> {root} in {time.perf_counter() - start:.1f} s")
  return root


def add_data_flags(parser: argparse.ArgumentParser) -> None:
  """Adds --image_folder, --archive, --data_dir and --extract_to to `parser`."""
  group = parser.add_argument_group(
      "data", "Real images: CIFAR-10 from tfds by default (downloaded into "
      "--data_dir when missing and online), or an image folder.")
  group.add_argument("--image_folder", default=None, metavar="ROOT",
                     help="an image folder ROOT/{train,test}/<class>/<images>")
  group.add_argument("--archive", default=None, metavar="PATH",
                     help="a .tar.gz of an image folder (extracted once into "
                          "--extract_to)")
  group.add_argument("--data_dir", default=None,
                     help="tfds data dir for CIFAR-10 (default: $TFDS_DATA_DIR "
                          "or ~/tensorflow_datasets)")
  group.add_argument("--extract_to", default=DEFAULT_EXTRACT_DIR,
                     help="where --archive is extracted")


def data_source(args: argparse.Namespace) -> tuple[str, str | None]:
  """(dataset name, data_dir) for `input_pipeline.load_dataset` from the flags
  of `add_data_flags`; extracts --archive. Raises ValueError for both
  --image_folder and --archive."""
  if args.image_folder and args.archive:
    raise ValueError("pass either --image_folder or --archive, not both.")
  if args.archive:
    return "image_folder", extract(args.archive, args.extract_to)
  if args.image_folder:
    return "image_folder", args.image_folder
  return "cifar10", args.data_dir


def load_data(args: argparse.Namespace, num_workers: int | None = None):
  """The `input_pipeline.InMemoryDataset` the data flags name (tfds CIFAR-10
  is downloaded when missing and reachable)."""
  from sage_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  name, data_dir = data_source(args)
  return input_pipeline.load_dataset(name, data_dir, num_workers=num_workers,
                                     download=name != "image_folder")


# --- Train-step helpers shared by step_bench.py and scaling.py ---------------------------

# Bits per element of each XLA primitive type that can appear in an HLO shape.
HLO_TYPE_BITS = {
    "pred": 8, "s2": 2, "u2": 2, "s4": 4, "u4": 4, "s8": 8, "u8": 8,
    "s16": 16, "u16": 16, "s32": 32, "u32": 32, "s64": 64, "u64": 64,
    "f4e2m1fn": 4, "f8e3m4": 8, "f8e4m3": 8, "f8e4m3fn": 8, "f8e4m3b11fnuz": 8,
    "f8e4m3fnuz": 8, "f8e5m2": 8, "f8e5m2fnuz": 8, "f8e8m0fnu": 8,
    "bf16": 16, "f16": 16, "f32": 32, "f64": 64, "c64": 64, "c128": 128,
}
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9, ]*)\]")
# `%name = <result shape> all-reduce(<operands>), attributes...`; also
# all-reduce-start (the async form on GPU/TPU). all-reduce-done is not matched,
# so an async all-reduce is counted once.
_ALL_REDUCE = re.compile(r"=\s*(?P<result>.*?)\s(?:all-reduce|all-reduce-start)\(")


def hlo_shape_bytes(text: str) -> int:
  """Total bytes of every array shape written in `text`, e.g.
  "(f32[3,3,64,64]{3,2,1,0}, bf16[10]{0})" -> 147456 + 20."""
  total = 0
  for dtype, dims in _SHAPE.findall(text):
    if dtype not in HLO_TYPE_BITS:
      continue
    elements = math.prod(int(d) for d in dims.split(",") if d.strip())
    total += (elements * HLO_TYPE_BITS[dtype] + 7) // 8
  return total


def _operand_list(line: str, start: int) -> str:
  """The text between the parenthesis at `line[start]` and its match."""
  depth = 0
  for i in range(start, len(line)):
    if line[i] == "(":
      depth += 1
    elif line[i] == ")":
      depth -= 1
      if depth == 0:
        return line[start + 1:i]
  return line[start + 1:]


def all_reduce_bytes(hlo_text: str) -> int:
  """Bytes all-reduced by one execution of an HLO module (from its text).

  Sums the operand sizes of every `all-reduce` and `all-reduce-start`
  instruction (each element of a tuple-shaped, combined all-reduce counts),
  i.e. the data each device contributes. Operands are read from the operand
  list when it carries shapes ("all-reduce(f32[16]{0} %x)"), otherwise from
  the result shape, which equals them for an all-reduce (jax 0.10 prints
  "(f32[16]{0}, f32[]) all-reduce(%x, %y)"). An op inside a loop body is
  counted once, not per iteration.
  """
  total = 0
  for line in hlo_text.splitlines():
    match = _ALL_REDUCE.search(line)
    if match is None:
      continue
    operands = hlo_shape_bytes(_operand_list(line, match.end() - 1))
    total += operands if operands else hlo_shape_bytes(match.group("result"))
  return total


def tree_bytes(tree) -> int:
  """Bytes of the arrays (or ShapeDtypeStructs) in a pytree."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def describe_device(device) -> str:
  """E.g. 'NVIDIA H100 80GB HBM3 (gpu)' or 'cpu (2 cores)'."""
  if device.platform == "cpu":
    return f"{device.device_kind} ({os.cpu_count()} cores)"
  return f"{device.device_kind} ({device.platform})"


def make_config(method: str, overrides: dict | None = None, *, model: str,
                width: int, batch: int):
  """base_config() for `method` ("vanilla", "sage", "sage sampled", ...: the
  first word) with the model, width, global batch and `overrides`
  ({"section.field": value}) set, validated."""
  from sage_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  config.method = method.split()[0]
  config.model.name = model
  config.model.width = width
  config.batch_size = batch
  for field, value in (overrides or {}).items():
    section, name = field.split(".")
    config[section][name] = value
  config_lib.validate_config(config)
  return config


class StepRun(NamedTuple):
  seconds: float      # median wall time of one step (after the compile step)
  hlo: str            # text of the compiled program that was timed
  param_bytes: int    # bytes of the model parameters
  initial_state: Any  # the fresh state (host, checkpoint layout), for reuse


class CompiledStep(NamedTuple):
  run_once: Any       # () -> seconds of one more step (blocking)
  hlo: str            # text of the compiled program
  param_bytes: int
  initial_state: Any
  memory: dict | None = None  # `compiled_memory(...)` of the compiled step


def compiled_memory(compiled) -> dict | None:
  """Device bytes of one execution of a compiled program, per device.

  From XLA's memory analysis of the compiled program (no execution needed):
  `argument`, `output`, `alias` (outputs that reuse argument buffers),
  `temp` (scratch) and `generated_code` bytes, and `peak`: XLA's own peak
  when it reports one (GPU/TPU), else argument + output - alias + temp, the
  most the program can hold at once. None when the backend gives no analysis.
  """
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Not every backend has it.
    return None
  if stats is None:
    return None
  memory = {name: int(getattr(stats, f"{name}_size_in_bytes", 0) or 0)
            for name in ("argument", "output", "alias", "temp", "generated_code")}
  bound = memory["argument"] + memory["output"] - memory["alias"] + memory["temp"]
  reported = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
  memory["peak"] = reported if reported > 0 else bound
  memory["peak_source"] = "xla" if reported > 0 else "argument+output-alias+temp"
  return memory


def compile_train_step(config, mesh, image_size: int = 32,
                       initial_state=None, num_classes: int = 10) -> CompiledStep:
  """Compiles `train.create_components(config, mesh).train_step` for a global
  batch of `config.batch_size` random uint8 images (sharded over the mesh's
  'data' axis) with labels in [0, num_classes), runs one warm-up step, and
  returns a timer of further steps.

  `initial_state`: a previous `initial_state` for the same model, optimizer
  and `num_classes` (skips compiling the initialisation again).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from sage_jax import train  # pylint: disable=g-import-not-at-top

  image_shape = (image_size, image_size, 3)
  parts = train.create_components(config, mesh, num_classes=num_classes,
                                  mean=(0.5,) * 3, std=(0.25,) * 3,
                                  steps_per_epoch=500)
  if initial_state is None:
    initial_state = jax.device_get(jax.jit(
        lambda: train.init_state(config, parts.model, parts.tx, image_shape))())
  rng = np.random.default_rng(0)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(train.AXIS))
  images = jax.device_put(
      rng.integers(0, 256, (config.batch_size,) + image_shape, dtype=np.uint8),
      sharding)
  labels = jax.device_put(
      rng.integers(0, num_classes, config.batch_size).astype(np.int32), sharding)
  carry = [train.to_device_state(initial_state, mesh)]
  step = parts.train_step.lower(carry[0], images, labels).compile()

  def run_once() -> float:
    start = time.perf_counter()
    carry[0], metrics = step(carry[0], images, labels)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start

  run_once()  # warm-up
  return CompiledStep(run_once, step.as_text(), tree_bytes(initial_state.params),
                      initial_state, compiled_memory(step))


def run_train_step(config, mesh, steps: int, image_size: int = 32,
                   initial_state=None, num_classes: int = 10) -> StepRun:
  """Median time of `steps` steps of `compile_train_step(config, ...)`."""
  compiled = compile_train_step(config, mesh, image_size, initial_state,
                                num_classes=num_classes)
  times = [compiled.run_once() for _ in range(steps)]
  return StepRun(float(np.median(times)), compiled.hlo, compiled.param_bytes,
                 compiled.initial_state)


def interleaved_step_times(configs: dict, mesh, steps: int,
                           image_size: int = 32) -> dict:
  """name -> median seconds per step, the configs' steps timed round-robin.

  Every config is compiled first; then each round times one step of each,
  so slow drifts of the machine (other load, clock changes) affect every
  method alike and the ratios stay comparable. Configs must share the model
  and optimizer (the initial state is built once).
  """
  compiled, initial_state = {}, None
  for name, config in configs.items():
    compiled[name] = compile_train_step(config, mesh, image_size, initial_state)
    initial_state = compiled[name].initial_state
  times = {name: [] for name in configs}
  for _ in range(steps):
    for name, step in compiled.items():
      times[name].append(step.run_once())
  return {name: float(np.median(t)) for name, t in times.items()}
