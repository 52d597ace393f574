"""The training program's command line: a mistyped `--config.<field>` stops it
with one line; main.py and the `sage-jax-train` entry point are the same
program, usable from any directory; the start-up device log and GPU warning."""
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from sage_jax import cli
from sage_jax import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args):
  return subprocess.run([sys.executable, "main.py", "--config", "configs/smoke.py",
                         *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)


def test_config_typo_is_one_line_naming_the_field_and_the_match():
  run = run_main("--config.sage.upper_lamda=0.5")
  assert run.returncode == 1
  assert run.stdout == ""
  lines = run.stderr.strip().splitlines()
  assert lines == ["FATAL Flags parsing error: --config.sage.upper_lamda: no such "
                   "config field; did you mean --config.sage.upper_lambda?"], run.stderr


def test_unknown_field_messages():
  config = config_lib.base_config()
  assert cli.unknown_field_message(config, ["sage.upper_lambda", "seed"]) is None
  assert cli.unknown_field_message(config, ["sag.upper_lambda"]).endswith(
      "did you mean --config.sage.upper_lambda?")
  message = cli.unknown_field_message(config, ["sage.zzzzzzzz"])
  assert "the fields of config.sage are alpha," in message
  assert "is a value, not a block" in cli.unknown_field_message(
      config, ["batch_size.x"])


# --- The training program: main.py and the sage-jax-train entry point ---------

TRAIN_FLAGS = ("--config", "--workdir", "--mode", "--corrupted_dir")


def program_env(tmp_path):
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
              TFDS_DATA_DIR=str(tmp_path / "tfds"), TF_CPP_MIN_LOG_LEVEL="2")


def test_main_py_is_a_thin_caller_of_the_entry_point():
  source = (ROOT / "main.py").read_text()
  code = [line for line in source.split('"""')[2].splitlines() if line.strip()]
  assert code == ["from sage_jax import cli", 'if __name__ == "__main__":',
                  "  cli.run()"]


@pytest.mark.parametrize("program", ["entry_point", "main.py"])
def test_help_lists_the_flags_from_another_directory(program, tmp_path):
  if program == "main.py":
    command = [sys.executable, str(ROOT / "main.py"), "--help"]
  else:
    command = [sys.executable, "-c", "from sage_jax import cli; cli.run()", "--help"]
  result = subprocess.run(command, cwd=tmp_path, env=program_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
  # absl's --help exits with status 1 after printing the help.
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
  for flag in TRAIN_FLAGS:
    assert f"  {flag}:" in result.stdout, (flag, result.stdout)
  assert os.listdir(tmp_path) == []  # --help writes nothing


def test_entry_point_parses_a_config_from_another_directory(tmp_path):
  # A typo'd field: parsed (the config file loads from its absolute path),
  # then refused with one line, before JAX starts.
  command = [sys.executable, "-c", "from sage_jax import cli; cli.run()",
             f"--config={ROOT / 'configs' / 'cifar100.py'}:wrn16_8",
             "--config.sage.mix_grad_wieght=0.7"]
  result = subprocess.run(command, cwd=tmp_path, env=program_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "FATAL Flags parsing error: --config.sage.mix_grad_wieght: no such config "
      "field; did you mean --config.sage.mix_grad_weight?"], result.stderr


def test_entry_point_offline_stops_fast_from_another_directory(tmp_path):
  # tfds's download hosts point at a closed local port: the real probe fails
  # at once, as offline. Nothing is written to the working directory.
  import test_download  # pylint: disable=g-import-not-at-top
  work = tmp_path / "elsewhere"
  work.mkdir()
  result, seconds = test_download.run_offline(
      ["cli", f"--config={ROOT / 'configs' / 'smoke.py'}"], tmp_path, cwd=work)
  assert result.returncode == 1, result.stderr[-3000:]
  assert seconds < 30
  assert "tfds dataset 'cifar10' is not prepared" in result.stderr
  assert os.listdir(work) == []


def test_default_workdir():
  assert cli.default_workdir("configs/cifar10.py") == os.path.join("workdir", "cifar10")
  assert cli.default_workdir("/a/configs/cifar100.py:wrn16_8") == os.path.join(
      "workdir", "cifar100_wrn16_8")


def test_accelerator_warning_cases():
  warning = cli.accelerator_warning("cpu", True, "0.10.2")
  assert warning is not None
  assert 'pip install "jax[cuda12]==0.10.2"' in warning
  assert ".[train,cuda12]" in warning and "cuda13" in warning
  assert cli.accelerator_warning("gpu", True, "0.10.2") is None
  assert cli.accelerator_warning("cpu", False, "0.10.2") is None
  assert cli.accelerator_warning("tpu", False, "0.10.2") is None
  # A CPU run the user asked for is not warned about.
  assert cli.accelerator_warning("cpu", True, "0.10.2", jax_platforms="cpu") is None
  assert cli.accelerator_warning("cpu", True, "0.10.2", jax_platforms="cuda,cpu")


def test_log_runtime_logs_devices_and_warns_about_an_unused_gpu(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  infos, warnings = [], []
  monkeypatch.setattr(cli.logging, "info", lambda fmt, *a: infos.append(fmt % a))
  monkeypatch.setattr(cli.logging, "warning", lambda fmt, *a: warnings.append(fmt % a))
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(cli, "nvidia_gpu_present", lambda: True)
  warning = cli.log_runtime(jax)
  assert re.search(rf"JAX {re.escape(jax.__version__)}, backend cpu: "
                   rf"{len(jax.devices())} device\(s\)", infos[0]), infos
  assert warnings == [warning] and f'jax[cuda12]=={jax.__version__}' in warning
  infos.clear(), warnings.clear()
  monkeypatch.setattr(cli, "nvidia_gpu_present", lambda: False)
  assert cli.log_runtime(jax) is None and warnings == [] and len(infos) == 1


def test_nvidia_gpu_detection(monkeypatch, tmp_path):
  real_exists = os.path.exists
  monkeypatch.setattr(cli.os.path, "exists",
                      lambda p: False if p == "/dev/nvidia0" else real_exists(p))
  monkeypatch.setenv("PATH", str(tmp_path))
  assert cli.nvidia_gpu_present() is False          # no nvidia-smi
  smi = tmp_path / "nvidia-smi"
  smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)'\n")
  smi.chmod(0o755)
  assert cli.nvidia_gpu_present() is True
  smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
  assert cli.nvidia_gpu_present() is False
  monkeypatch.setattr(cli.os.path, "exists", lambda p: p == "/dev/nvidia0")
  assert cli.nvidia_gpu_present() is True
  start = time.monotonic()
  smi.write_text("#!/bin/sh\nsleep 60\n")
  monkeypatch.setattr(cli.os.path, "exists", lambda p: False)
  monkeypatch.setattr(cli.subprocess, "run", _timing_out_run)
  assert cli.nvidia_gpu_present() is False
  assert time.monotonic() - start < 5


def _timing_out_run(*args, **kwargs):
  raise subprocess.TimeoutExpired(args[0], kwargs.get("timeout"))
