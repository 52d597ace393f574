"""A mistyped `--config.<field>` stops the program with one line."""
import pathlib
import subprocess
import sys

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
