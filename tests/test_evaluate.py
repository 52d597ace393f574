"""Robustness evaluation: attack math, the data-parallel step, `--mode=eval`."""
import json
import os
import shutil
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from sage_jax import evaluate
from sage_jax import input_pipeline
from sage_jax import train
from test_train import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


class TinyNet(nn.Module):
  """A conv + dense classifier with the models' calling convention."""
  num_classes: int = 4

  @nn.compact
  def __call__(self, x, train=False):
    del train
    x = jnp.tanh(nn.Conv(3, (3, 3))(x))
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def tiny_net(key=0, shape=(6, 4, 4, 3)):
  model = TinyNet()
  params = model.init(jax.random.key(key), jnp.zeros(shape))["params"]
  logits_fn = lambda x: model.apply({"params": params},
                                    (x - jnp.asarray(MEAN)) / jnp.asarray(STD))
  return model, params, logits_fn


def interior_pixels(shape, low=0.3, high=0.7, seed=1):
  """Pixels away from 0 and 1, so that clipping never bites."""
  return jax.random.uniform(jax.random.key(seed), shape, minval=low, maxval=high)


def plain_grad(logits_fn, loss_fn, pixels, labels):
  """∇ of the batch loss by plain jax.grad (the direct computation)."""
  targets = jax.nn.one_hot(labels, 4)
  return jax.grad(lambda x: loss_fn(logits_fn(x), targets))(pixels)


# --- Attack math -------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["bce_softmax", "softmax_xent"])
def test_fgsm_is_epsilon_times_sign_of_plain_gradient(loss):
  _, _, logits_fn = tiny_net()
  loss_fn = train.LOSS_FNS[loss]
  pixels, labels = interior_pixels((6, 4, 4, 3)), jnp.arange(6) % 4
  grad_fn = evaluate.input_gradient_fn(logits_fn, loss_fn, 4)
  direct = plain_grad(logits_fn, loss_fn, pixels, labels)
  assert np.all(direct != 0)
  # Summed per-example losses: the batch-mean gradient times the batch size.
  np.testing.assert_allclose(grad_fn(pixels, labels), 6 * direct, rtol=1e-4,
                             atol=1e-6)

  delta = evaluate.fgsm(grad_fn, pixels, labels, 8 / 255) - pixels
  np.testing.assert_allclose(jnp.max(jnp.abs(delta)), 8 / 255, rtol=1e-5)
  np.testing.assert_allclose(delta, 8 / 255 * jnp.sign(direct), atol=1e-6)


def test_fgsm_clips_to_unit_range_and_keeps_zero_gradient_pixels():
  pixels = jnp.array([0.0, 0.5, 1.0, 0.3]).reshape(1, 2, 2, 1)
  grads = jnp.array([-1.0, 0.0, 2.0, 3.0]).reshape(1, 2, 2, 1)
  adv = evaluate.fgsm(lambda x, y: grads, pixels, jnp.zeros(1, int), 0.1)
  np.testing.assert_allclose(adv.ravel(), [0.0, 0.5, 1.0, 0.4], atol=1e-7)


def test_fgm_has_norm_epsilon_along_the_normalised_gradient():
  _, _, logits_fn = tiny_net()
  loss_fn = train.LOSS_FNS["bce_softmax"]
  # |δ_i| <= ε = 0.3 per value, so pixels in [0.35, 0.65] are never clipped.
  pixels, labels = interior_pixels((6, 4, 4, 3), 0.35, 0.65), jnp.arange(6) % 4
  grad_fn = evaluate.input_gradient_fn(logits_fn, loss_fn, 4)
  delta = evaluate.fgm(grad_fn, pixels, labels, 0.3) - pixels
  norms = jnp.sqrt(jnp.sum(delta**2, axis=(1, 2, 3)))
  np.testing.assert_allclose(norms, 0.3, rtol=1e-5)
  direct = plain_grad(logits_fn, loss_fn, pixels, labels)
  unit = direct / jnp.sqrt(jnp.sum(direct**2, axis=(1, 2, 3), keepdims=True))
  np.testing.assert_allclose(delta / 0.3, unit, atol=2e-5)


def test_fgm_guards_zero_and_tiny_gradients_and_clipping_shrinks_the_norm():
  pixels = jnp.full((3, 2, 2, 1), 0.5).at[2].set(1.0)
  grads = jnp.stack([jnp.zeros((2, 2, 1)),          # zero: left unchanged
                     jnp.full((2, 2, 1), 1e-30),    # tiny: squares underflow
                     jnp.ones((2, 2, 1))])          # at the border: clipped
  adv = evaluate.fgm(lambda x, y: grads, pixels, jnp.zeros(3, int), 0.4)
  assert np.all(np.isfinite(adv))
  np.testing.assert_array_equal(adv[0], pixels[0])
  np.testing.assert_allclose(adv[1], 0.5 + 0.4 / 2, rtol=1e-6)  # ‖δ‖ = 0.4
  np.testing.assert_array_equal(adv[2], pixels[2])  # norm 0 < ε after clipping


def test_gaussian_noise_variance_determinism_and_range():
  pixels = jnp.full((100, 32, 32, 3), 0.5)
  key = jax.random.key(0)
  noisy = evaluate.gaussian_noise(key, pixels, 0.01)
  np.testing.assert_allclose(jnp.var(noisy - pixels), 0.01, rtol=0.02)
  np.testing.assert_allclose(jnp.mean(noisy - pixels), 0.0, atol=1e-3)
  np.testing.assert_array_equal(noisy, evaluate.gaussian_noise(key, pixels, 0.01))
  assert not np.array_equal(noisy, evaluate.gaussian_noise(jax.random.key(1),
                                                           pixels, 0.01))
  edge = evaluate.gaussian_noise(key, jnp.zeros((4, 8, 8, 3)), 0.01)
  assert edge.min() == 0.0 and edge.max() <= 1.0 and edge.max() > 0.0
  with pytest.raises(ValueError, match="variance"):
    evaluate.gaussian_noise(key, pixels, -1.0)


# --- The data-parallel step on a trained toy model -------------------------------------


class Linear(nn.Module):
  num_classes: int = 2

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


def test_attacks_lower_the_accuracy_of_a_trained_toy_model():
  # Two classes shifted by ±0.02 per pixel value under N(0, 0.1²) noise:
  # separable when clean (along the mean difference the half gap is 2.8
  # noise std), but an ℓ∞ step of 8/255 ≈ 0.031 per value is larger than
  # the 0.02 shift on all 192 values.
  n, shape = 512, (8, 8, 3)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, n).astype(np.int32)
  pixels = 0.5 + 0.02 * (2 * labels[:, None, None, None] - 1) + rng.normal(
      0, 0.1, (n,) + shape)
  images = np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)

  model = Linear()
  mean, std = (0.5,) * 3, (0.25,) * 3
  params = model.init(jax.random.key(0), jnp.zeros((1,) + shape))["params"]
  tx = optax.adam(0.01)
  x = input_pipeline.normalize(images, mean, std)
  targets = jax.nn.one_hot(labels, 2)

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(lambda p: optax.softmax_cross_entropy(
        model.apply({"params": p}, x), targets).mean())(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  opt_state = tx.init(params)
  for _ in range(300):
    params, opt_state = step(params, opt_state)

  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  robustness = evaluate.make_robustness_step(
      model, train.softmax_xent_loss, 2, mean, std, mesh, seed=0)
  sums = robustness(params, {}, images, labels, np.ones(n, np.float32),
                    np.arange(n, dtype=np.int32))
  accuracy = {k: float(sums[k]) / n for k in evaluate.ATTACKS}
  assert float(sums["count"]) == n
  assert accuracy["clean"] > 0.9, accuracy
  assert accuracy["fgsm"] < accuracy["clean"] - 0.3, accuracy
  assert accuracy["fgm"] < accuracy["clean"] - 0.3, accuracy
  assert accuracy["gaussian_noise"] <= accuracy["clean"], accuracy


# --- Whole workdirs ----------------------------------------------------------------------


def make_cifar10_like_folder(root, per_class=(4, 2), size=8):
  """An image folder with CIFAR-10's class names (so CIFAR-10-C applies)."""
  rng = np.random.default_rng(0)
  for split, count in zip(("train", "test"), per_class):
    for index, name in enumerate(input_pipeline.CIFAR10_CLASS_NAMES):
      os.makedirs(os.path.join(root, split, name))
      for k in range(count):
        pixels = rng.integers(0, 128, (size, size, 3)).astype(np.uint8)
        pixels[index % size] = 255  # a class cue: one bright row
        Image.fromarray(pixels).save(os.path.join(root, split, name, f"{k}.png"))
  return str(root)


def eval_config(folder, **overrides):
  return tiny_config(method="vanilla", batch_size=8, eval_batch_size=8,
                     **{"dataset.name": "image_folder", "dataset.data_dir": folder,
                        **overrides})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return make_cifar10_like_folder(tmp_path_factory.mktemp("cifar10_like"))


@pytest.fixture(scope="module")
def trained_workdir(folder, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(eval_config(folder), workdir)
  return workdir


def copy_workdir(workdir, tmp_path):
  return shutil.copytree(workdir, tmp_path / "run")


def test_eval_mode_of_main_writes_json_and_markdown(trained_workdir, folder, tmp_path):
  workdir = copy_workdir(trained_workdir, tmp_path)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(tmp_path / "no_tfds"))
  command = [sys.executable, "main.py", "--config", "configs/smoke.py",
             f"--workdir={workdir}", "--mode=eval",
             "--config.dataset.name=image_folder",
             f"--config.dataset.data_dir={folder}", "--config.model.width=4",
             "--config.eval_batch_size=8"]
  start = time.perf_counter()
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert time.perf_counter() - start < 120  # a CIFAR-10-C lookup must not hang

  results = json.loads((workdir / "eval.json").read_text())
  assert results["step"] == 2 and results["num_test"] == 20
  assert results["num_devices"] == 8 and results["loss"] == "bce_softmax"
  for name in evaluate.ATTACKS:
    assert 0.0 <= results[name]["accuracy"] <= 1.0
  assert results["fgsm"]["epsilon"] == pytest.approx(8 / 255)
  assert results["fgm"] == {**results["fgm"], "norm": "l2", "epsilon": 0.5}
  assert results["gaussian_noise"]["variance"] == 0.01
  # The clean accuracy is the training run's final test accuracy.
  final_test = [json.loads(line) for line in (workdir / "metrics.jsonl").open()
                if '"test"' in line][-1]
  assert results["clean"]["accuracy"] == pytest.approx(final_test["accuracy"])

  corruptions = results["corruptions"]
  assert corruptions["available"] is False
  assert "tfds build cifar10_corrupted --data_dir DIR" in corruptions["message"]
  markdown = (workdir / "eval.md").read_text()
  for row in ("| clean |", "| Gaussian noise |", "| FGSM | ℓ∞, ε = 8/255 |",
              "| FGM | ℓ2, ε = 0.5 |", "| corruptions |", "not available"):
    assert row in markdown, markdown
  assert "| FGSM |" in result.stdout


def test_missing_checkpoint_is_a_clear_error(folder, tmp_path):
  with pytest.raises(FileNotFoundError, match="No checkpoint to evaluate"):
    evaluate.evaluate_workdir(eval_config(folder), str(tmp_path / "never_trained"))
  assert not os.path.exists(tmp_path / "never_trained")  # nothing created
  os.makedirs(tmp_path / "empty" / "checkpoints")
  with pytest.raises(FileNotFoundError, match="No checkpoint to evaluate in"):
    evaluate.evaluate_workdir(eval_config(folder), str(tmp_path / "empty"))


def test_model_differing_from_the_run_is_named(trained_workdir, folder):
  with pytest.raises(ValueError, match=r"config\.model\.width=8"):
    evaluate.evaluate_workdir(eval_config(folder, **{"model.width": 8}),
                              trained_workdir)


def cifar10_info():
  return input_pipeline.DatasetInfo("cifar10", 10, 1, 1, (32, 32, 3), MEAN, STD,
                                    input_pipeline.CIFAR10_CLASS_NAMES)


def test_cifar_c_absent_gives_messages_quickly(tmp_path):
  assert len(evaluate.cifar10_c_config_names()) == 95
  corruptions = {evaluate._split_config_name(n)[0]
                 for n in evaluate.cifar10_c_config_names()}
  assert len(corruptions) == 19
  start = time.perf_counter()
  config = tiny_config(**{"dataset.data_dir": str(tmp_path / "empty")})
  source, (names, load) = evaluate._corruption_source(config, cifar10_info(), None)
  assert str(tmp_path / "empty") in source
  # No set is found, so the (unused) eval step is never called.
  found = evaluate._evaluate_corruptions(names, load, None, (), 8, None)
  assert time.perf_counter() - start < 30
  assert found["available"] is False
  assert found["message"].startswith(
      "not available: prepare it offline with `tfds build cifar10_corrupted "
      "--data_dir DIR`")
  assert str(tmp_path / "empty") in found["message"]
  assert not os.path.exists(tmp_path / "empty")  # nothing downloaded or created
  config = tiny_config(**{"dataset.name": "cifar100"})
  _, found = evaluate._corruption_source(config, cifar10_info(), None)
  assert found.startswith("not available") and "--corrupted_dir" in found


def test_cifar10_c_from_tfds_when_present(tmp_path):
  # tfds's mock serves every cifar10_corrupted config (4 random images each).
  model = Linear(num_classes=10)
  params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  eval_step = train.make_eval_step(model, train.softmax_xent_loss, 10, MEAN, STD,
                                   mesh)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  with tfds.testing.mock_data(num_examples=4):
    names, load = evaluate._tfds_corrupted_sets(str(tmp_path))
    assert len(names) == 95
    first = load(names[0])
    # Two corruptions (10 sets) keep the test short; each set is read alike.
    found = evaluate._evaluate_corruptions(names[:10], load, eval_step,
                                           (params, {}), 8, sharding)
  assert first.images.shape == (4, 32, 32, 3) and first.images.dtype == np.uint8
  assert (first.corruption, first.severity) == ("brightness", 1)
  assert found["available"] and found["num_sets"] == 10 and "missing" not in found
  assert sorted(found["accuracy"]) == ["brightness", "contrast"]
  assert list(found["severity_mean"]) == ["1", "2", "3", "4", "5"]
  values = [a for row in found["accuracy"].values() for k, a in row.items()
            if k != "mean"]
  assert found["mean_accuracy"] == pytest.approx(np.mean(values))
  assert all(a in (0.0, 0.25, 0.5, 0.75, 1.0) for a in values)


def test_partly_prepared_corruptions_list_the_missing_sets():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  images, labels = np.zeros((8, 2, 2, 3), np.uint8), np.zeros(8, np.int32)

  def load(name):
    if name.startswith("fog"):
      raise evaluate._Unavailable("not available: fog is missing")
    corruption, severity = evaluate._split_config_name(name)
    return evaluate.CorruptedSet(corruption, severity, images, labels)

  step = lambda *args: {"correct": 2.0, "count": 8.0}  # 25 % on every set
  found = evaluate._evaluate_corruptions(["snow_1", "snow_2", "fog_1"], load,
                                         step, (), 8, sharding)
  assert found["available"] and found["missing"] == ["fog_1"]
  assert found["accuracy"] == {"snow": {"1": 0.25, "2": 0.25, "mean": 0.25}}
  assert found["num_sets"] == 2 and "fog is missing" in found["message"]


def write_fake_corrupted_dir(root, folder):
  """Released-layout .npy files: 'identity' = the test set at every severity."""
  data = input_pipeline.load_dataset("image_folder", folder)
  os.makedirs(root)
  np.save(os.path.join(root, "labels.npy"), np.tile(data.test_labels, 5))
  identity = np.tile(data.test_images, (5, 1, 1, 1))
  np.save(os.path.join(root, "identity.npy"), identity)
  np.save(os.path.join(root, "inverted.npy"), 255 - identity)
  return str(root)


def test_npy_corruptions_and_one_device_equals_eight(trained_workdir, folder, tmp_path):
  corrupted = write_fake_corrupted_dir(tmp_path / "CIFAR-C", folder)
  workdir = copy_workdir(trained_workdir, tmp_path)
  runs = {}
  for devices in (1, 8):
    runs[devices] = evaluate.evaluate_workdir(
        eval_config(folder, num_devices=devices), str(workdir),
        corrupted_dir=corrupted)
  one, eight = runs[1], runs[8]
  assert (one["num_devices"], eight["num_devices"]) == (1, 8)
  for name in evaluate.ATTACKS:
    assert one[name]["accuracy"] == eight[name]["accuracy"], name
  assert one["corruptions"]["accuracy"] == eight["corruptions"]["accuracy"]

  corruptions = eight["corruptions"]
  assert corruptions["available"] and corruptions["num_sets"] == 10
  table = corruptions["accuracy"]
  assert sorted(table) == ["identity", "inverted"]
  assert sorted(table["identity"]) == ["1", "2", "3", "4", "5", "mean"]
  for severity in "12345":
    assert table["identity"][severity] == pytest.approx(eight["clean"]["accuracy"])
  assert corruptions["mean_accuracy"] == pytest.approx(
      (table["identity"]["mean"] + table["inverted"]["mean"]) / 2)
  markdown = (workdir / "eval.md").read_text()
  assert "| identity |" in markdown and "| **mean** |" in markdown

  np.save(os.path.join(corrupted, "bad.npy"), np.zeros((100, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match="bad.npy"):
    evaluate.evaluate_workdir(eval_config(folder), str(workdir),
                              corrupted_dir=corrupted)
  with pytest.raises(FileNotFoundError, match="--corrupted_dir"):
    evaluate.evaluate_workdir(eval_config(folder), str(workdir),
                              corrupted_dir=str(tmp_path / "nowhere"))
