"""End-to-end training: every method, 1 and 8 devices, resume, data parallelism."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from sage_jax import checkpointing
from sage_jax import config as config_lib
from sage_jax import methods
from sage_jax import metrics
from sage_jax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  config = config_lib.base_config()
  config.model.name = "preactresnet8"
  config.model.width = 4
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_train_steps = 2
  config.log_every_steps = 1
  config.sage.sample_fraction = 0.002
  # Block counts that divide the tests' 8×8 images; the exact solver route
  # only, which compiles fast (test_puzzle_mix.py covers n = 8, 16).
  config.puzzle_mix.block_nums = (2, 4)
  # Chunks of 2 fit every device's shard of the tests' batches (16 on 8
  # devices); test_co_mixup.py covers chunks of 20.
  config.co_mixup.chunk_size = 2
  for field, value in overrides.items():
    node = config
    *parents, leaf = field.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def make_image_folder(root, classes=("cat", "dog", "frog"), per_class=12, size=8):
  rng = np.random.default_rng(0)
  for split, count in (("train", per_class), ("test", per_class // 2)):
    for index, name in enumerate(classes):
      os.makedirs(os.path.join(root, split, name))
      for k in range(count):
        pixels = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
        pixels[..., index] = 255  # a learnable class cue
        Image.fromarray(pixels).save(os.path.join(root, split, name, f"{k}.png"))
  return str(root)


def restored_state(workdir):
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  step = checkpointer.latest_step()
  target = jax.tree.map(np.asarray, checkpointer._manager.restore(step))  # raw tree
  checkpointer.close()
  return step, target


def main_train_then_eval(tmp_path, method_flags, batch_size):
  """Runs `main.py` (smoke config, 16×16 image folder, 8 forced devices) for
  2 steps with `method_flags`, then `--mode=eval` on the same workdir.

  Returns the train rows of metrics.jsonl; asserts both runs succeed and
  eval.json is written.
  """
  folder = make_image_folder(tmp_path / "images", per_class=16, size=16)
  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  common = [f"--workdir={workdir}", "--config", "configs/smoke.py",
            "--config.dataset.name=image_folder", f"--config.dataset.data_dir={folder}",
            "--config.model.width=4", "--config.eval_batch_size=8"]
  result = subprocess.run(
      [sys.executable, "main.py", *common, *method_flags,
       f"--config.batch_size={batch_size}", "--config.num_train_steps=2",
       "--config.log_every_steps=1"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train_rows] == [1, 2]
  result = subprocess.run([sys.executable, "main.py", *common, "--mode=eval"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (workdir / "eval.json").exists()
  return train_rows


def one_method_step(config, model_name, images, labels, mean, std):
  """One jitted `train.make_method_step` step of `config.method` on a width-4
  `model_name` (10 classes); asserts the gradients have the parameters'
  structure and everything is finite. Returns the step's output."""
  from sage_jax import models  # pylint: disable=g-import-not-at-top
  model = models.create_model(model_name, num_classes=10, width=4)
  step = train.make_method_step(config, model, train.LOSS_FNS["bce_softmax"], 10,
                                tuple(mean), tuple(std))
  batch = methods.Batch(jax.numpy.asarray(images), jax.numpy.zeros(images.shape, np.uint8),
                        jax.numpy.asarray(labels))
  variables = model.init(jax.random.key(0), batch.images, train=False)
  out = jax.jit(step)(jax.random.key(1), variables["params"], variables["batch_stats"],
                      batch)
  assert jax.tree.structure(out.grads) == jax.tree.structure(variables["params"])
  for value in jax.tree.leaves((out.grads, out.metrics)):
    assert np.all(np.isfinite(value))
  return out


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
  return make_image_folder(tmp_path_factory.mktemp("images"))


@pytest.mark.parametrize("num_devices", [1, 8])
@pytest.mark.parametrize("method", methods.METHOD_NAMES)
def test_every_method_trains_on_mock_cifar10(method, num_devices, tmp_path):
  config = tiny_config(method=method, num_devices=num_devices,
                       **{"dataset.data_dir": str(tmp_path / "tfds")})
  with tfds.testing.mock_data(num_examples=48):
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  records = metrics.read_metrics(str(tmp_path / "run"))
  train_records = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train_records] == [1, 2]
  for record in train_records:
    for field in ("loss", "accuracy", "learning_rate", "steps_per_second", "epoch"):
      assert np.isfinite(record[field])
  assert summary["num_test_evals"] == 1 and 0 <= summary["best_test_accuracy"] <= 1
  assert os.path.exists(tmp_path / "run" / "summary.json")


@pytest.mark.parametrize("model,width", [("preactresnet18", 4), ("wrn16_8", 8),
                                         ("resnext29_4_24", 4)])
@pytest.mark.parametrize("method", ["manifold_mixup", "saliencymix"])
def test_new_baselines_train_on_every_architecture(method, model, width, tmp_path):
  config = tiny_config(method=method, num_train_steps=1,
                       **{"model.name": model, "model.width": width,
                          "dataset.data_dir": str(tmp_path / "tfds")})
  with tfds.testing.mock_data(num_examples=16):
    summary = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["model"] == model and summary["method"] == method
  record = metrics.read_metrics(str(tmp_path / "run"))[0]
  assert np.isfinite(record["loss"]) and "mix_label_weight" in record


def test_main_end_to_end_on_image_folder(image_folder, tmp_path):
  workdir = tmp_path / "run"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  command = [sys.executable, "main.py", "--config", "configs/smoke.py",
             f"--workdir={workdir}", "--config.dataset.name=image_folder",
             f"--config.dataset.data_dir={image_folder}", "--config.batch_size=8",
             "--config.eval_batch_size=8", "--config.num_epochs=2",
             "--config.model.width=4", "--config.lr_boundaries=(1,)",
             "--config.sage.search=exhaustive", "--config.log_every_steps=1"]
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "best test accuracy" in result.stdout
  records = metrics.read_metrics(str(workdir))
  tests = [r for r in records if r["split"] == "test"]
  assert [r["step"] for r in tests] == [4, 8]  # 36 images // 8 = 4 steps/epoch
  lrs = [r["learning_rate"] for r in records if r["split"] == "train"]
  np.testing.assert_allclose(lrs[:4], 0.1, rtol=1e-6)
  np.testing.assert_allclose(lrs[4:], 0.01, rtol=1e-6)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["model"] == "preactresnet8" and summary["total_steps"] == 8
  assert (workdir / "config.json").exists()
  assert any(name.startswith("events") for _, _, files in os.walk(workdir / "tensorboard")
             for name in files)


def test_killed_run_resumes_to_identical_parameters(image_folder, tmp_path, monkeypatch):
  config = tiny_config(method="sage", num_train_steps=6, checkpoint_every_steps=2,
                       eval_every_steps=3, batch_size=8, eval_batch_size=8,
                       **{"dataset.name": "image_folder",
                          "dataset.data_dir": image_folder})
  train.train_and_evaluate(config, str(tmp_path / "whole"))

  original = train.train_iterator

  def dies_at_step_5(*args, **kwargs):
    for index, batch in enumerate(original(*args, **kwargs)):
      if index == 4:  # steps 1-4 done, checkpoints at 2 and 4, killed in 5
        raise KeyboardInterrupt
      yield batch

  monkeypatch.setattr(train, "train_iterator", dies_at_step_5)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path / "killed"))
  monkeypatch.setattr(train, "train_iterator", original)
  train.train_and_evaluate(config, str(tmp_path / "killed"))

  (step_a, whole), (step_b, resumed) = (restored_state(str(tmp_path / "whole")),
                                        restored_state(str(tmp_path / "killed")))
  assert step_a == step_b == 6
  jax.tree.map(np.testing.assert_array_equal, whole, resumed)
  steps = [(r["step"], r["split"]) for r in metrics.read_metrics(str(tmp_path / "killed"))]
  assert len(steps) == len(set(steps))  # no duplicated records after resume
  assert steps == [(r["step"], r["split"])
                   for r in metrics.read_metrics(str(tmp_path / "whole"))]


def test_one_device_equals_eight_devices_with_cross_device_batch_norm(
    image_folder, tmp_path):
  # Vanilla training is deterministic, and with cross-device BN the 8-shard
  # step computes the same function as the 1-device step.
  results = []
  for devices in (1, 8):
    config = tiny_config(method="vanilla", num_devices=devices, batch_size=16,
                         num_train_steps=3, cross_device_batch_norm=True,
                         **{"dataset.name": "image_folder",
                            "dataset.data_dir": image_folder})
    train.train_and_evaluate(config, str(tmp_path / f"d{devices}"))
    results.append(restored_state(str(tmp_path / f"d{devices}"))[1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               *results)


def test_cpu_compile_options_change_speed_not_results(image_folder, tmp_path):
  # config.xla_cpu_eigen_convolutions only moves the convolutions from
  # YNNPACK to Eigen on CPU meshes: the trained state agrees to float32
  # rounding, and a non-CPU mesh or False gets no options at all.
  mesh = jax.make_mesh((1,), ("data",))
  assert train.compiler_options(tiny_config(), mesh) == train.EIGEN_CONVOLUTION_OPTIONS
  assert train.compiler_options(
      tiny_config(xla_cpu_eigen_convolutions=False), mesh) is None
  results = []
  for eigen in (True, False):
    config = tiny_config(method="sage", num_devices=1,
                         xla_cpu_eigen_convolutions=eigen,
                         **{"dataset.name": "image_folder",
                            "dataset.data_dir": image_folder})
    train.train_and_evaluate(config, str(tmp_path / f"eigen{eigen}"))
    results.append(restored_state(str(tmp_path / f"eigen{eigen}"))[1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               *results)


def count_collectives(hlo_text):
  return sum(hlo_text.count(op) for op in
             ("all-reduce(", "all-reduce-start(", "all-gather(", "all-to-all(",
              "collective-permute(", "reduce-scatter("))


def test_sage_step_adds_no_collectives():
  mesh = jax.make_mesh((8,), ("data",))
  counts = {}
  for method in ("vanilla", "sage"):
    config = tiny_config(method=method)
    counts[method] = count_collectives(
        train.lower_train_step(config, mesh, num_classes=10,
                               image_shape=(8, 8, 3)).compile().as_text())
  assert counts["vanilla"] > 0
  assert counts["sage"] == counts["vanilla"], counts


def test_bce_softmax_loss_matches_reference_and_is_finite():
  logits = np.array([[2.0, -1.0, 0.5], [80.0, -80.0, 0.0]], np.float32)
  targets = np.array([[0.3, 0.7, 0.0], [1.0, 0.0, 0.0]], np.float32)
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  with np.errstate(divide="ignore"):
    want = -np.mean(targets * np.maximum(np.log(p), -100)
                    + (1 - targets) * np.maximum(np.log(1 - p), -100))
  np.testing.assert_allclose(train.bce_softmax_loss(logits, targets), want, rtol=1e-5)
  grads = jax.grad(train.bce_softmax_loss)(np.array([[200.0, 0.0, -200.0]]),
                                           np.array([[0.0, 1.0, 0.0]]))
  assert np.all(np.isfinite(grads))


def test_config_errors_name_the_field(tmp_path):
  cases = [({"method": "manifold"}, "config.method"),
           ({"sage.upper_lambda": 1.5}, "config.sage.upper_lambda"),
           ({"lr_boundaries": (200, 100)}, "config.lr_boundaries"),
           ({"sage.kernel_size": 4}, "config.sage.kernel_size"),
           ({"dataset.name": "image_folder", "dataset.data_dir": ""},
            "config.dataset.data_dir"),
           ({"batch_size": 0}, "config.batch_size"),
           ({"num_devices": 99}, "config.num_devices"),
           ({"batch_size": 12}, "config.batch_size=12 must be divisible")]
  for overrides, message in cases:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
      with tfds.testing.mock_data(num_examples=16):
        train.train_and_evaluate(
            tiny_config(**{"dataset.data_dir": str(tmp_path), **overrides}),
            str(tmp_path / "run"))


def test_missing_cifar_fails_fast_with_instructions(tmp_path):
  # A subprocess with a timeout: a hang (a download attempt) fails the test.
  code = ("from sage_jax import config, train\n"
          "c = config.base_config()\n"
          f"c.dataset.data_dir = {str(tmp_path / 'empty')!r}\n"
          f"train.train_and_evaluate(c, {str(tmp_path / 'run')!r})\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode != 0
  # train_and_evaluate never downloads: the error says how to prepare the data
  # on another machine and names the image-folder alternative.
  assert "FileNotFoundError" in result.stderr
  assert "tfds build cifar10" in result.stderr
  assert "dataset.name=image_folder" in result.stderr


@pytest.mark.parametrize("path,expected", [
    ("configs/cifar10.py", ("cifar10", "preactresnet18", 0.6, 0.7)),
    ("configs/cifar100.py:preactresnet18", ("cifar100", "preactresnet18", 0.5, 0.7)),
    ("configs/cifar100.py:wrn16_8", ("cifar100", "wrn16_8", 0.7, 0.5)),
    ("configs/cifar100.py:resnext29_4_24", ("cifar100", "resnext29_4_24", 0.7, 0.5)),
    ("configs/smoke.py", ("cifar10", "preactresnet8", 0.6, 0.7))])
def test_config_files(path, expected):
  from ml_collections import config_flags
  config = config_flags.config_flags._ConfigFileParser(name="config").parse(
      os.path.join(REPO, path))
  config_lib.validate_config(config)
  got = (config.dataset.name, config.model.name, config.sage.upper_lambda,
         config.sage.mix_grad_weight)
  assert got == expected
  if "cifar10.py" in path:
    assert (config.batch_size, config.num_epochs, config.learning_rate,
            tuple(config.lr_boundaries), config.loss, config.nesterov) == (
                100, 300, 0.2, (100, 200), "bce_softmax", True)
  # Co-Mixup's published lr: 0.12 on CIFAR-10, the shared one elsewhere.
  config.method = "co_mixup"
  assert train.base_learning_rate(config) == (
      0.12 if "cifar10.py" in path else config.learning_rate)
