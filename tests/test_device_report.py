"""benchmarks/device_report.py: its arithmetic, its tables, and a tiny CPU run.

The tiny run is the same code path as the full report on an accelerator
(every method's compiled step, memory analysis, bf16, weak scaling over
several devices), on models small enough for CI.
"""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import device_report  # pylint: disable=g-import-not-at-top,wrong-import-position
from sage_jax import methods  # pylint: disable=g-import-not-at-top,wrong-import-position
from sage_jax import published  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_every_registered_method_is_reported_vanilla_first():
  names = device_report.method_names()
  assert names[0] == "vanilla"
  assert sorted(names) == sorted(methods.METHOD_NAMES)
  assert device_report.method_names("sage,vanilla") == ("vanilla", "sage")
  with pytest.raises(ValueError, match="unknown"):
    device_report.method_names("vanilla,magic")
  with pytest.raises(ValueError, match="must include vanilla"):
    device_report.method_names("sage")


def test_full_settings_are_the_papers_table_3():
  c10, c100 = device_report.FULL_SETTINGS
  assert (c10.model, c10.num_classes, c10.batch, c10.image_size) == (
      "preactresnet18", 10, 100, 32)
  assert (c100.model, c100.num_classes, c100.batch) == ("resnext29_4_24", 100, 100)
  assert device_report.published_hours(c10) == published.T4_HOURS["cifar10"][1]
  assert device_report.published_hours(c100) == published.T4_HOURS["cifar100"][1]
  # A model the supplement did not time gets no T4 column.
  assert device_report.published_hours(device_report.TINY_SETTINGS[0]) == {}


def test_projected_hours():
  # 0.1 s per step of 100 images: 1,000 images/s; 300 × 50,000 images.
  assert device_report.projected_hours(0.1, 100) == pytest.approx(300 * 50 / 3600)
  # The same images/s at another batch gives the same hours.
  assert device_report.projected_hours(0.2, 200) == pytest.approx(
      device_report.projected_hours(0.1, 100))


def test_configs_fit_the_image_size():
  setting = device_report.TINY_SETTINGS[0]
  for name in device_report.method_names():
    config = device_report.make_config(name, setting, "bf16", 8)
    assert config.method == name and config.half_precision is True
    assert (config.model.name, config.model.width, config.batch_size) == (
        "preactresnet8", 4, 8)
    if "block_nums" in config.get(name, {}):
      assert all(setting.image_size % n == 0 for n in config[name].block_nums)
  assert device_report.make_config("vanilla", setting, "fp32", 8).half_precision is False


def synthetic_report():
  def row(ms, peak):
    return {"step_ms": ms, "images_per_s": 100 / (ms / 1000), "peak_bytes": peak,
            "projected_hours": device_report.projected_hours(ms / 1000, 100),
            "ratio_to_vanilla": ms / 10.0, "memory": None}
  setting = dict(vars(device_report.FULL_SETTINGS[0]))
  setting["methods"] = {"vanilla": {"fp32": row(10.0, 2**20), "bf16": row(5.0, 2**19)},
                        "sage": {"fp32": row(20.0, 3 * 2**20), "bf16": row(8.0, 2**20)}}
  setting["methods"]["sage"]["bf16"]["ratio_to_vanilla"] = 8.0 / 5.0
  setting["methods"]["vanilla"]["bf16"]["ratio_to_vanilla"] = 1.0
  setting["published_t4_hours"] = published.T4_HOURS["cifar10"][1]
  return {
      "device": {"backend": "gpu", "kind": "Test GPU", "count": 2,
                 "jax_version": "0.0", "description": "Test GPU (gpu)"},
      "date": "2000-01-01", "command": "python benchmarks/device_report.py",
      "steps": 3, "methods": ["vanilla", "sage"], "settings": [setting],
      "memory_source": "xla", "scaling_setting": setting["label"],
      "scaling": [{"method": "sage", "devices": n, "global_batch": 100 * n,
                   "step_ms": 20.0 * (1 + 0.1 * (n - 1)),
                   "images_per_s": 100 * n / (0.02 * (1 + 0.1 * (n - 1))),
                   "efficiency": 1 / (1 + 0.1 * (n - 1))} for n in (1, 2)],
  }


def table_rows(markdown: str, first_cell: str) -> list:
  return [[c.strip() for c in line.strip("|").split("|")]
          for line in markdown.splitlines() if line.startswith(f"| {first_cell} ")]


def test_markdown_tables():
  markdown = device_report.to_markdown(synthetic_report())
  assert markdown.startswith("# Device report: Test GPU (gpu)")
  (sage,) = table_rows(markdown, "sage")[:1]
  # fp32 ms, images/s, ratio, MiB, hours, T4 hours, T4 ratio, bf16 ms, bf16
  # ratio, bf16 MiB, speed-up.
  assert sage[1:] == ["20.0", "5,000", "2.00", "3.0", "0.83", "6.83", "2.04",
                      "8.0", "1.60", "1.0", "2.50"]
  (vanilla,) = table_rows(markdown, "vanilla")
  assert vanilla[1:8] == ["10.0", "10,000", "1.00", "1.0", "0.42", "3.35", "1.00"]
  scaling = table_rows(markdown, "sage")[1:]
  assert [r[1:3] for r in scaling] == [["1", "100"], ["2", "200"]]
  assert scaling[1][-1] == "0.91"


def test_markdown_without_scaling_or_bf16():
  report = synthetic_report()
  report["scaling"] = []
  for row in report["settings"][0]["methods"].values():
    del row["bf16"]
  markdown = device_report.to_markdown(report)
  assert "One device visible: no scaling measured." in markdown
  assert table_rows(markdown, "sage")[0][-4:] == ["–", "–", "–", "–"]


def test_tiny_report_end_to_end(tmp_path):
  # Vanilla and SAGE (every registered method would take minutes to compile
  # on 2 cores; test_every_registered_method_is_reported_vanilla_first checks
  # the list, and tests/test_benchmarks.py compiles each method's step), fp32
  # and bf16, on the tiny 100-class setting; two forced host devices, so the
  # scaling section runs too. Backend optimisation level 0 halves the compile
  # time; the programs are the same.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                       "--xla_backend_optimization_level=0")
  out = tmp_path / "report"
  result = subprocess.run(
      [sys.executable, str(BENCHMARKS / "device_report.py"), "--tiny", "--steps", "1",
       "--settings", "cifar100", "--methods", "sage,vanilla", "--out", str(out)],
      env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((tmp_path / "report.json").read_text())
  markdown = (tmp_path / "report.md").read_text()
  names = ["vanilla", "sage"]
  assert report["device"]["backend"] == "cpu" and report["device"]["count"] == 2
  assert report["methods"] == names
  (setting,) = report["settings"]
  assert (setting["model"], setting["num_classes"], setting["batch"]) == (
      "preactresnet8", 100, 8)
  assert list(setting["methods"]) == names
  for name, by_precision in setting["methods"].items():
    assert set(by_precision) == {"fp32", "bf16"}, name
    for row in by_precision.values():
      assert row["step_ms"] > 0 and row["peak_bytes"] > 0, name
      assert row["memory"]["argument"] > 0, name
      assert row["images_per_s"] == pytest.approx(8 / (row["step_ms"] / 1000))
      assert row["projected_hours"] == pytest.approx(
          device_report.projected_hours(row["step_ms"] / 1000, 8))
  assert setting["methods"]["vanilla"]["fp32"]["ratio_to_vanilla"] == 1.0
  assert [(r["method"], r["devices"], r["global_batch"]) for r in report["scaling"]] == [
      ("vanilla", 1, 8), ("vanilla", 2, 16), ("sage", 1, 8), ("sage", 2, 16)]
  assert report["scaling"][0]["efficiency"] == 1.0
  assert markdown == device_report.to_markdown(report)
  for name in names:
    assert re.search(rf"^\| {name} \| [\d.]+ \|", markdown, flags=re.MULTILINE), name
  assert "## Weak scaling" in markdown and "| sage | 2 | 16 |" in markdown
