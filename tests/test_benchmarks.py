"""The benchmark scripts' helpers: HLO all-reduce bytes, the runtime table,
and scaling.py end to end (tiny settings, 8 forced host devices)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_bench  # pylint: disable=g-import-not-at-top,wrong-import-position

# Hand-written compiled-HLO lines in XLA's printing format (operands printed
# with and without their shapes: jax 0.10's CPU text omits them).
HLO = """\
HloModule jit_step, is_scheduled=true, entry_computation_layout={(f32[3,3,64,64]{3,2,1,0})->f32[]}

%region_0.1 (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %add.0 = f32[] add(f32[] %x, f32[] %y)
}

ENTRY %main (param.1: f32[3,3,64,64], a: f32[16], b: bf16[10], p: f32[1024]) -> f32[] {
  %param.1 = f32[3,3,64,64]{3,2,1,0} parameter(0)
  %all-reduce = f32[3,3,64,64]{3,2,1,0} all-reduce(f32[3,3,64,64]{3,2,1,0} %param.1), channel_id=1, replica_groups=[1,8]<=[8], use_global_device_ids=true, to_apply=%region_0.1, metadata={op_name="jit(step)/pmean[axes=('data',)]"}
  %all-reduce.1 = (f32[16]{0}, bf16[10]{0}, f32[]) all-reduce(%a, %b, %c), channel_id=2, replica_groups={{0,1,2,3,4,5,6,7}}, to_apply=%region_0.1
  %all-reduce-start = f32[1024]{0} all-reduce-start(f32[1024]{0} %p), channel_id=3, replica_groups={{0,1}}, to_apply=%region_0.1
  %all-reduce-done = f32[1024]{0} all-reduce-done(f32[1024]{0} %all-reduce-start)
  %all-gather = f32[64]{0} all-gather(f32[8]{0} %g), channel_id=4, dimensions={0}
  %reduce-scatter = f32[8]{0} reduce-scatter(f32[64]{0} %h), channel_id=5, dimensions={0}, to_apply=%region_0.1
  %all-reduce.2 = (bf16[4,4]{1,0}, s32[3]{0}) all-reduce(bf16[4,4]{1,0} %d, s32[3]{0} %e), channel_id=6, to_apply=%region_0.1
  ROOT %gte = f32[] get-tuple-element(%all-reduce.1), index=2
}
"""


def test_hlo_shape_bytes():
  assert common.hlo_shape_bytes("f32[3,3,64,64]{3,2,1,0}") == 4 * 3 * 3 * 64 * 64
  assert common.hlo_shape_bytes("(bf16[10]{0}, f32[], s32[2,3]{1,0})") == 20 + 4 + 24
  assert common.hlo_shape_bytes("pred[7]{0} u8[5]{0} s4[3]{0}") == 7 + 5 + 2
  assert common.hlo_shape_bytes("%param.1, to_apply=%region_0.1") == 0


def test_all_reduce_bytes_counts_every_operand_once():
  expected = (4 * 3 * 3 * 64 * 64          # plain all-reduce
              + 4 * 16 + 2 * 10 + 4        # tuple all-reduce: f32, bf16, scalar
              + 4 * 1024                   # async start (the done is not counted)
              + 2 * 16 + 4 * 3)            # tuple with operand shapes printed
  assert common.all_reduce_bytes(HLO) == expected


def test_all_reduce_bytes_without_operand_shapes_uses_result_shape():
  line = ("  %ar = (f32[2,2]{1,0}, bf16[4]{0}) all-reduce(%a, %b), channel_id=1, "
          "to_apply=%add\n")
  assert common.all_reduce_bytes(line) == 16 + 8
  assert common.all_reduce_bytes("%x = f32[8]{0} all-gather(f32[1]{0} %y)") == 0


def test_all_reduce_bytes_of_a_compiled_pmean():
  jax = pytest.importorskip("jax")
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  mesh = jax.make_mesh((8,), ("data",))
  f = jax.jit(jax.shard_map(
      lambda x, y: (jax.lax.pmean(x, "data"), jax.lax.psum(y, "data")), mesh=mesh,
      in_specs=(P(), P()), out_specs=(P(), P()), check_vma=False))
  # (XLA:CPU all-reduces bf16 as f32, so only f32 here.)
  text = f.lower(jnp.zeros((3, 5), jnp.float32),
                 jnp.zeros((7,), jnp.float32)).compile().as_text()
  assert common.all_reduce_bytes(text) == (3 * 5 + 7) * 4


def test_runtime_table_ratios_and_hours():
  times = {"vanilla": 0.1, "mixup": 0.1, "cutmix": 0.12, "sage sampled": 0.2,
           "sage exhaustive": 0.25}
  table = step_bench.runtime_table(times, batch=100, device="TestDevice",
                                   model="preactresnet18 width 64", steps=3)
  assert "TestDevice" in table and "preactresnet18 width 64" in table
  assert "scaled" not in table
  rows = {cells[0]: cells[1:] for cells in (
      [c.strip() for c in line.strip("|").split("|")]
      for line in table.splitlines() if line.startswith("| ") and "---" not in line)}
  # 300 epochs × 500 steps × 0.1 s = 15,000 s.
  assert rows["vanilla"][:3] == ["100.0", "1.00", "4.17"]
  assert rows["sage sampled"][:3] == ["200.0", "2.00", "8.33"]
  assert rows["sage exhaustive"][:3] == ["250.0", "2.50", "10.42"]
  assert rows["cutmix"][1] == "1.20"
  assert rows["vanilla"][3:] == ["3.35", "1.00"]
  assert rows["sage sampled"][3:] == ["6.83", "2.04"]
  assert rows["sage exhaustive"][3:] == ["–", "–"]
  assert "2.04" in table.splitlines()[-1]


def test_runtime_table_scales_other_batches_to_100():
  table = step_bench.runtime_table({"vanilla": 0.2}, batch=200, device="d",
                                   model="m", steps=1)
  assert "scaled to batch 100" in table
  row = next(line for line in table.splitlines() if line.startswith("| vanilla"))
  # 0.2 s per 200 images = 0.1 s per 100: 300 × 500 × 0.1 s = 4.17 h.
  assert [c.strip() for c in row.strip("|").split("|")][1:4] == ["200.0", "1.00", "4.17"]


def test_scaling_script_end_to_end():
  # Backend optimisation level 0 halves the compile time of this functional
  # test; the HLO (and its all-reduces) is the same.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 "
                       "--xla_backend_optimization_level=0")
  result = subprocess.run(
      [sys.executable, str(BENCHMARKS / "scaling.py"), "--model", "preactresnet8",
       "--width", "4", "--per_device_batch", "2", "--image_size", "8",
       "--steps", "1"],
      env=env, capture_output=True, text=True, timeout=300, check=True)
  out = result.stdout
  param_bytes = int(re.search(r"parameter bytes: (\d+)", out).group(1))
  rows = [line.split() for line in out.splitlines() if re.match(r"\s*\d+\s+\d+\s", line)]
  assert [int(r[0]) for r in rows] == [1, 2, 4, 8], out
  assert [int(r[1]) for r in rows] == [2, 4, 8, 16], out
  reduced = {int(r[0]): int(r[5]) for r in rows}
  assert reduced[8] >= param_bytes > 0, out
  # Gradients (= params) plus a handful of metric scalars.
  assert reduced[8] < param_bytes + 1024, out


def test_step_bench_end_to_end_times_every_method():
  from sage_jax import methods  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_backend_optimization_level=0")
  result = subprocess.run(
      [sys.executable, str(BENCHMARKS / "step_bench.py"), "--model", "preactresnet8",
       "--width", "4", "--batch", "8", "--image_size", "8", "--steps", "1",
       "--table"],
      env=env, capture_output=True, text=True, timeout=600, check=True)
  out = result.stdout
  ratios = {line.split()[0]: float(line.split()[2]) for line in out.splitlines()
            if re.match(r"^(\w+( \w+)?)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+$", line)}
  for name in methods.METHOD_NAMES:
    assert name in ratios, (name, out)
  assert ratios["vanilla"] == 1.0
  assert "saliencymix saliency, batch of 8" in out
  assert "| manifold_mixup |" in out and "| saliencymix |" in out
  counts = re.search(r"collectives in the compiled 8-device step: vanilla=(\d+) "
                     r"sage_sampled=(\d+) puzzle_mix=(\d+) co_mixup=(\d+)", out)
  assert counts, out
  # Pairs (Co-Mixup: chunks) are formed within each device's shard: SAGE,
  # Puzzle Mix and Co-Mixup add no collective to the gradient all-reduce of
  # the vanilla step.
  assert len(set(counts.groups())) == 1, out
  assert "co_mixup mixing (labelling, mixing), batch 8 in chunks of 8:" in out, out
  # Puzzle Mix's mixing (energy, solver, transport) at each block count
  # that fits the 8×8 images.
  for n in (2, 4, 8):
    assert f"puzzle_mix mixing (energy, solver, transport), n={n}:" in out, out


# --- Data flags: the scripts take their images from flags, never a fixed path --

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import tarfile  # pylint: disable=g-import-not-at-top,wrong-import-position

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def write_image_folder(root, classes=("cat", "dog"), per_split=(3, 2), size=4):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for split, count in zip(("train", "test"), per_split):
    for label, name in enumerate(classes):
      (root / split / name).mkdir(parents=True)
      for i in range(count):
        pixels = np.full((size, size, 3), 40 * label + i, np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def data_args(*argv):
  parser = argparse.ArgumentParser()
  common.add_data_flags(parser)
  return parser.parse_args(list(argv))


@pytest.mark.parametrize("nested", [True, False])
def test_extract_finds_the_image_folder_and_reuses_it(tmp_path, nested):
  folder = tmp_path / "src" / ("images" if nested else "")
  write_image_folder(folder)
  archive = tmp_path / "my-folder.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    if nested:
      tar.add(folder, arcname="images")
    else:
      for split in ("train", "test"):
        tar.add(folder / split, arcname=split)
  root = common.extract(str(archive), str(tmp_path / "extract"))
  expected = tmp_path / "extract" / "my-folder" / ("images" if nested else "")
  assert pathlib.Path(root) == expected
  assert sorted(os.listdir(pathlib.Path(root) / "train")) == ["cat", "dog"]
  (pathlib.Path(root) / "marker").write_text("kept")
  assert common.extract(str(archive), str(tmp_path / "extract")) == root
  assert (pathlib.Path(root) / "marker").exists()  # not extracted again


def test_extract_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    common.extract(str(tmp_path / "missing.tar.gz"), str(tmp_path / "x"))
  empty = tmp_path / "empty.tar.gz"
  with tarfile.open(empty, "w:gz") as tar:
    (tmp_path / "note.txt").write_text("x")
    tar.add(tmp_path / "note.txt", arcname="note.txt")
  with pytest.raises(ValueError, match="no train/ and test/"):
    common.extract(str(empty), str(tmp_path / "x"))


def test_data_source_from_flags(tmp_path):
  assert common.data_source(data_args()) == ("cifar10", None)
  assert common.data_source(data_args("--data_dir", "/tfds")) == ("cifar10", "/tfds")
  assert common.data_source(data_args("--image_folder", "/r")) == ("image_folder", "/r")
  with pytest.raises(ValueError, match="either --image_folder or --archive"):
    common.data_source(data_args("--image_folder", "/r", "--archive", "/a.tgz"))
  assert not hasattr(common, "DEFAULT_ARCHIVE")


def test_input_bench_runs_on_an_image_folder(tmp_path, capsys):
  import input_bench  # pylint: disable=g-import-not-at-top
  write_image_folder(tmp_path / "folder")
  input_bench.main(["--image_folder", str(tmp_path / "folder"), "--batch-sizes", "2"])
  out = capsys.readouterr().out
  assert "load_dataset('image_folder'): 10 images" in out
  assert "train_batches global_batch=2:" in out and "(one epoch, 3 steps)" in out


def test_augment_bench_takes_the_data_flags():
  source = (BENCHMARKS / "augment_bench.py").read_text()
  assert "common.add_data_flags(parser)" in source
  assert "common.load_data(data_args)" in source


def test_compiled_memory_of_a_jitted_function():
  jax = pytest.importorskip("jax")
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  compiled = jax.jit(lambda x, y: (x @ y).sum(axis=0)).lower(
      jnp.zeros((64, 32), jnp.float32), jnp.zeros((32, 16), jnp.float32)).compile()
  memory = common.compiled_memory(compiled)
  assert memory["argument"] == 4 * (64 * 32 + 32 * 16)
  assert memory["output"] == 4 * 16
  assert memory["peak"] >= memory["output"] > 0
  assert memory["peak_source"] in ("xla", "argument+output-alias+temp")

  class NoAnalysis:
    def memory_analysis(self):
      raise NotImplementedError

  assert common.compiled_memory(NoAnalysis()) is None
