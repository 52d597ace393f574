"""`sage_value_and_grad` with a linen and an NNX model that carry BatchNorm."""
import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax import nnx

from sage_jax import augment

NUM_CLASSES = 5


class LinenNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    return nn.Dense(NUM_CLASSES)(nn.relu(x).mean(axis=(1, 2)))


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(4, NUM_CLASSES, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.norm(self.conv(x))).mean(axis=(1, 2)))


def batch():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=8).astype(np.int32)
  return images, labels


def assert_trees_close(a, b, atol=1e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol), a, b)


def check_combined_gradient(loss_fn, params, state, mix_grad_weight=0.7):
  images, labels = batch()
  key = jax.random.key(0)
  grad_fn = augment.sage_value_and_grad(
      loss_fn, mix_grad_weight=mix_grad_weight, num_classes=NUM_CLASSES,
      upper_lambda=0.6)
  out = jax.jit(grad_fn)(key, params, state, images, labels)

  # The same quantities, computed separately, step by step.
  targets = jax.nn.one_hot(labels, NUM_CLASSES)
  (clean_loss, clean_state), (g_clean, input_grads) = jax.value_and_grad(
      loss_fn, argnums=(0, 2), has_aux=True)(params, state, images, targets)
  saliency = augment.saliency_map(input_grads)
  mixed = augment.sage(key, images, targets, saliency, upper_lambda=0.6)
  (mix_loss, final_state), g_mix = jax.value_and_grad(loss_fn, has_aux=True)(
      params, clean_state, mixed.images, mixed.labels)

  np.testing.assert_allclose(out.clean_loss, clean_loss, rtol=1e-5)
  np.testing.assert_allclose(out.mix_loss, mix_loss, rtol=1e-5)
  np.testing.assert_allclose(out.saliency, saliency, rtol=1e-4, atol=1e-9)
  np.testing.assert_allclose(out.mixed.images, mixed.images, atol=1e-5)
  assert_trees_close(out.grads, jax.tree.map(
      lambda c, m: (1 - mix_grad_weight) * c + mix_grad_weight * m, g_clean, g_mix))
  assert_trees_close(out.state, final_state)
  # The state went through both passes, so it differs from the clean pass's.
  assert not all(jax.tree.leaves(jax.tree.map(
      lambda a, b: np.allclose(a, b), out.state, clean_state)))
  return out


def test_linen_train_step_gradient():
  model = LinenNet()
  variables = model.init(jax.random.key(1), batch()[0], train=False)

  def loss_fn(params, batch_stats, images, targets):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy(logits, targets).mean(), updates["batch_stats"]

  check_combined_gradient(loss_fn, variables["params"], variables["batch_stats"])


def test_nnx_train_step_gradient():
  model = NnxNet(nnx.Rngs(1))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params, rest, images, targets):
    # copy=True: fresh Variables, so BatchNorm may update them under jax.grad.
    module = nnx.merge(graphdef, params, rest, copy=True)
    loss = optax.softmax_cross_entropy(module(images), targets).mean()
    return loss, nnx.split(module, nnx.Param, ...)[2]

  check_combined_gradient(loss_fn, params, rest, mix_grad_weight=0.5)


def test_mix_grad_weight_endpoints_and_aux():
  model = LinenNet()
  images, labels = batch()
  variables = model.init(jax.random.key(1), images, train=False)

  def loss_fn(params, batch_stats, images, targets):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    return loss, (updates["batch_stats"], logits)

  def grads_for(weight):
    fn = augment.sage_value_and_grad(loss_fn, mix_grad_weight=weight, has_aux=True,
                                     num_classes=NUM_CLASSES)
    return fn(jax.random.key(0), variables["params"], variables["batch_stats"],
              images, labels)

  only_clean, only_mix = grads_for(0.0), grads_for(1.0)
  assert only_clean.clean_aux.shape == (8, NUM_CLASSES)
  assert only_mix.mix_aux.shape == (8, NUM_CLASSES)
  clean_grads = jax.grad(lambda p: loss_fn(p, variables["batch_stats"], images,
                                           jax.nn.one_hot(labels, NUM_CLASSES))[0])(
                                               variables["params"])
  assert_trees_close(only_clean.grads, clean_grads)


def test_bad_options():
  with pytest.raises(ValueError, match="mix_grad_weight"):
    augment.sage_value_and_grad(lambda *a: None, mix_grad_weight=1.5)
  with pytest.raises(ValueError, match="unknown SAGE option"):
    augment.sage_value_and_grad(lambda *a: None, upper_lamda=0.6)
