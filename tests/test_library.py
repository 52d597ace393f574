"""`sage_jax.augment` used from an outside project: errors at the boundary,
the NNX helper, and the documented defaults."""
import functools
import inspect
import pathlib

import jax
import jax.numpy as jnp
from jax.experimental import checkify
import numpy as np
import optax
import pytest
from flax import nnx

from sage_jax import augment

NUM_CLASSES = 5
README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def batch(batch_size=8, size=8):
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch_size, size, size, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int32)
  saliency = np.abs(rng.normal(size=(batch_size, size, size))).astype(np.float32)
  return images, labels, saliency


def assert_trees_close(a, b, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol), a, b)


# --- traced static options ----------------------------------------------------


def test_traced_num_classes_says_to_mark_it_static():
  images, labels, saliency = batch()
  key = jax.random.key(0)
  with pytest.raises(TypeError, match=r"`num_classes` is traced.*static_argnames"):
    jax.jit(augment.sage)(key, images, labels, saliency, num_classes=NUM_CLASSES)
  with pytest.raises(TypeError, match=r"`num_classes` is traced.*augment\.mixup"):
    jax.jit(augment.mixup)(key, images, labels, num_classes=NUM_CLASSES)
  with pytest.raises(TypeError, match=r"`sample_fraction` is traced"):
    jax.jit(augment.sage, static_argnames="num_classes")(
        key, images, labels, saliency, num_classes=NUM_CLASSES,
        sample_fraction=0.5)
  with pytest.raises(TypeError, match=r"`kernel_size` is traced"):
    jax.jit(augment.saliency_map)(images, kernel_size=3)
  # The advertised fix works.
  out = jax.jit(augment.sage, static_argnames=augment.SAGE_STATIC_ARGNAMES)(
      key, images, labels, saliency, num_classes=NUM_CLASSES)
  assert out.labels.shape == (8, NUM_CLASSES)
  out = jax.jit(augment.cutmix, static_argnames=augment.MIX_STATIC_ARGNAMES)(
      key, images, labels, num_classes=NUM_CLASSES)
  assert out.labels.shape == (8, NUM_CLASSES)


# --- NCHW ---------------------------------------------------------------------


def test_nchw_images_are_rejected_with_the_transpose():
  images, labels, saliency = batch()
  nchw = images.transpose(0, 3, 1, 2)                      # (8, 3, 8, 8)
  key = jax.random.key(0)
  match = r"looks like NCHW.*transpose\(0, 2, 3, 1\)"
  with pytest.raises(ValueError, match=match):
    augment.sage(key, nchw, labels, saliency, num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match=match):
    augment.mixup(key, nchw, labels, num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match=match):
    augment.cutmix(key, nchw, labels, num_classes=NUM_CLASSES)
  with pytest.raises(ValueError, match=match):
    augment.saliency_map(nchw)
  with pytest.raises(ValueError, match=match):   # also under jit: shapes are static
    jax.jit(functools.partial(augment.mixup, num_classes=NUM_CLASSES))(
        key, nchw, labels)
  # NHWC with more channels than RGBA (multispectral) but fewer than rows is
  # accepted, as is the documented edge: grayscale and RGBA.
  for channels in (1, 4, 13):
    wide = np.zeros((2, 32, 32, channels), np.float32)
    assert augment.mixup(key, wide, np.arange(2), num_classes=2).images.shape == (
        2, 32, 32, channels)


# --- labels under jit -----------------------------------------------------------


def test_out_of_range_labels_unchecked_under_jit_is_the_documented_default():
  images, labels, saliency = batch()
  bad = labels.copy()
  bad[3] = NUM_CLASSES + 2
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="must lie in"):     # concrete: checked
    augment.mixup(key, images, bad, num_classes=NUM_CLASSES, lam=1.0)
  out = jax.jit(functools.partial(augment.mixup, num_classes=NUM_CLASSES))(
      key, images, bad, lam=1.0)
  np.testing.assert_array_equal(out.labels[3], np.zeros(NUM_CLASSES))


def test_check_labels_reports_out_of_range_labels_through_checkify():
  images, labels, saliency = batch()
  bad = labels.copy()
  bad[3] = -1
  key = jax.random.key(0)
  checked = checkify.checkify(jax.jit(functools.partial(
      augment.sage, num_classes=NUM_CLASSES, check_labels=True)))
  err, _ = checked(key, images, bad, saliency)
  with pytest.raises(checkify.JaxRuntimeError, match=r"\[0, num_classes=5\).*-1"):
    err.throw()
  err, out = checked(key, images, labels, saliency)
  assert err.get() is None
  np.testing.assert_allclose(out.labels.sum(axis=1), 1.0, rtol=1e-6)

  # The gradient helper too, inside a checkified train step.
  def loss_fn(params, state, images, targets):
    logits = images.mean(axis=(1, 2)) @ params
    return optax.softmax_cross_entropy(logits, targets).mean(), state

  grad_fn = augment.sage_value_and_grad(loss_fn, num_classes=NUM_CLASSES,
                                        check_labels=True)
  params = jnp.ones((3, NUM_CLASSES))
  err, _ = checkify.checkify(jax.jit(grad_fn))(key, params, None, images, bad)
  with pytest.raises(checkify.JaxRuntimeError, match="num_classes=5"):
    err.throw()


# --- loss function output vs has_aux -------------------------------------------


def test_loss_output_that_does_not_match_has_aux_is_a_clear_error():
  images, labels, _ = batch()
  key, params, state = jax.random.key(0), jnp.ones((3, NUM_CLASSES)), {"s": jnp.zeros(2)}

  def logits(params, images):
    return images.mean(axis=(1, 2)) @ params

  def only_loss(params, state, images, targets):
    return optax.softmax_cross_entropy(logits(params, images), targets).mean()

  def with_state(params, state, images, targets):
    return only_loss(params, state, images, targets), state

  def with_aux(params, state, images, targets):
    return only_loss(params, state, images, targets), (state, logits(params, images))

  def per_example(params, state, images, targets):
    return optax.softmax_cross_entropy(logits(params, images), targets), state

  def run(fn, has_aux):
    grad_fn = augment.sage_value_and_grad(fn, has_aux=has_aux,
                                          num_classes=NUM_CLASSES)
    return grad_fn(key, params, state, images, labels)

  for has_aux in (False, True):
    with pytest.raises(TypeError, match=r"`only_loss` must return .*array of shape \(\)"):
      run(only_loss, has_aux)
  with pytest.raises(TypeError, match=r"second element is a dict.*has_aux=False"):
    run(with_state, True)
  with pytest.raises(TypeError, match=r"layout differs.*pass has_aux=True"):
    run(with_aux, False)
  with pytest.raises(TypeError, match=r"scalar loss.*shape \(8,\)"):
    run(per_example, False)
  # The matching forms work, also under jit.
  assert run(with_state, False).state["s"].shape == (2,)
  out = jax.jit(augment.sage_value_and_grad(with_aux, has_aux=True,
                                            num_classes=NUM_CLASSES))(
      key, params, state, images, labels)
  assert out.clean_aux.shape == (8, NUM_CLASSES)


# --- NNX ------------------------------------------------------------------------


class NnxNet(nnx.Module):

  def __init__(self, rngs):
    self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
    self.head = nnx.Linear(4, NUM_CLASSES, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.norm(self.conv(x))).mean(axis=(1, 2)))


def nnx_loss(model, images, targets):
  return optax.softmax_cross_entropy(model(images), targets).mean()


def batch_stats(model):
  """A snapshot (NNX states hold the live Variables) of the statistics."""
  return jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))


def test_nnx_helper_moves_batch_stats_as_plain_nnx_steps():
  images, labels, _ = batch()
  targets = jax.nn.one_hot(labels, NUM_CLASSES)
  model = NnxNet(nnx.Rngs(1))
  model.train()
  reference = nnx.clone(model)
  before = batch_stats(model)
  eta, key = 0.6, jax.random.key(3)

  grad_fn = augment.nnx_sage_value_and_grad(
      nnx_loss, mix_grad_weight=eta, num_classes=NUM_CLASSES, upper_lambda=0.6)
  out = grad_fn(key, model, images, labels)

  # Plain NNX: a train step's forward/backward on the clean batch, then one on
  # the SAGE batch; each updates the BatchNorm statistics in place.
  g_clean = nnx.grad(nnx_loss)(reference, images, targets)
  after_clean = batch_stats(reference)
  g_mix = nnx.grad(nnx_loss)(reference, out.mixed.images, out.mixed.labels)
  assert_trees_close(batch_stats(model), batch_stats(reference))
  assert_trees_close(out.state, nnx.state(model, nnx.Not(nnx.Param)))
  assert_trees_close(out.grads, jax.tree.map(
      lambda c, m: (1 - eta) * c + eta * m, g_clean, g_mix))
  # The statistics moved, and through both passes (not only the clean one).
  for old, clean, new in zip(jax.tree.leaves(before), jax.tree.leaves(after_clean),
                             jax.tree.leaves(batch_stats(model))):
    assert not np.allclose(old, new) and not np.allclose(clean, new)


def test_nnx_helper_under_nnx_jit_and_jax_jit_agree():
  images, labels, _ = batch()
  grad_fn = augment.nnx_sage_value_and_grad(
      nnx_loss, num_classes=NUM_CLASSES, upper_lambda=0.6)
  key = jax.random.key(4)

  model = NnxNet(nnx.Rngs(2))
  model.train()
  split = nnx.split(model, nnx.Param, ...)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, key, images, labels):
    out = grad_fn(key, model, images, labels)
    optimizer.update(model, out.grads)
    return out

  snapshot = jax.tree.map(np.array, split)
  functional = jax.jit(grad_fn)(key, split, images, labels)
  # The split form updates nothing in place.
  assert_trees_close(jax.tree.map(np.array, split), snapshot)
  stepped = train_step(model, optimizer, key, images, labels)
  assert_trees_close(stepped.grads, functional.grads)
  assert_trees_close(batch_stats(model), functional.state.filter(nnx.BatchStat))
  # nnx.jit carried the statistics and the optimizer's update to the module.
  assert not np.allclose(batch_stats(model)["norm"]["mean"],
                         snapshot[2]["norm"]["mean"])
  assert not np.allclose(model.head.kernel[...], snapshot[1]["head"]["kernel"])


def test_nnx_module_where_params_are_expected_is_an_error():
  images, labels, _ = batch()
  model = NnxNet(nnx.Rngs(0))
  model.train()

  def loss_fn(model, state, images, targets):
    return nnx_loss(model, images, targets), state

  grad_fn = augment.sage_value_and_grad(loss_fn, num_classes=NUM_CLASSES)
  with pytest.raises(TypeError, match=r"`params` holds an nnx.Module.*nnx_sage_value_and_grad"):
    grad_fn(jax.random.key(0), model, None, images, labels)
  with pytest.raises(TypeError, match=r"`state` holds an nnx.Module"):
    grad_fn(jax.random.key(0), {}, {"model": model}, images, labels)


def test_nnx_helper_argument_errors():
  images, labels, _ = batch()
  model = NnxNet(nnx.Rngs(0))
  grad_fn = augment.nnx_sage_value_and_grad(nnx_loss, num_classes=NUM_CLASSES)
  with pytest.raises(TypeError, match=r"not `nnx.split\(model\)`"):
    grad_fn(jax.random.key(0), nnx.split(model), images, labels)
  with_aux = augment.nnx_sage_value_and_grad(nnx_loss, has_aux=True,
                                             num_classes=NUM_CLASSES)
  with pytest.raises(TypeError, match=r"has_aux=True.*pass has_aux=False"):
    with_aux(jax.random.key(0), model, images, labels)

  def loss_and_logits(model, images, targets):
    logits = model(images)
    return optax.softmax_cross_entropy(logits, targets).mean(), logits

  no_aux = augment.nnx_sage_value_and_grad(loss_and_logits, num_classes=NUM_CLASSES)
  with pytest.raises(TypeError, match=r"pass has_aux=True"):
    no_aux(jax.random.key(0), model, images, labels)
  out = augment.nnx_sage_value_and_grad(loss_and_logits, has_aux=True,
                                        num_classes=NUM_CLASSES)(
      jax.random.key(0), model, images, labels)
  assert out.mix_aux.shape == (8, NUM_CLASSES)


# --- defaults -------------------------------------------------------------------


def test_upper_lambda_default_and_the_paper_setting_are_documented():
  assert inspect.signature(augment.sage).parameters["upper_lambda"].default == 1.0
  doc = " ".join(augment.sage.__doc__.split())
  assert "0.6 for CIFAR-10" in doc and "default 1.0" in doc
  assert "0.6 on CIFAR-10" in " ".join(augment.sage_value_and_grad.__doc__.split())
  text = README.read_text()
  library = text[text.index("## Library use"):text.index("### SAGE in your own")]
  assert "Its default, 1.0" in library and "**0.6** for CIFAR-10" in library
