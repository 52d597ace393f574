"""Tests for Manifold Mixup: sage_jax.augment.manifold and the model hooks.

Everything that runs a network uses tiny widths, 8x8 images and a batch of 4;
each architecture's jitted functions are built once (``_harness``) and shared
by the tests, because on a 2-core CPU compiling dominates the cost.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sage_jax import augment
from sage_jax.augment import ManifoldMix
from sage_jax.augment import draw_manifold_mix
from sage_jax.augment import manifold_mixup_targets
from sage_jax.augment import mix_at
from sage_jax.models import MODEL_NAMES, create_model

NUM_CLASSES = 10
BATCH = 4
IMAGE_SIZE = 8
WIDTHS = {
    "preactresnet18": 4,
    "wrn16_8": 8,
    "resnext29_4_24": 4,
    "preactresnet8": 4,
}
PERM = np.array([2, 0, 3, 1], np.int32)  # no fixed point: every row mixes
LAM = 0.3


def _mix(layer, lam=LAM, perm=PERM):
  # Fixed dtypes and no weak types, so every call hits the same jit cache
  # entry whatever the Python values.
  return ManifoldMix(jnp.asarray(layer, jnp.int32), jnp.asarray(lam, jnp.float32),
                     jnp.asarray(perm, jnp.int32))


def _hand_mix(h, lam, perm):
  return lam * h + (1.0 - lam) * h[perm]


class _Harness:
  """A tiny model, its variables, a batch, and its jitted functions."""

  def __init__(self, name):
    self.model = model = create_model(name, num_classes=NUM_CLASSES,
                                      width=WIDTHS[name])
    # 'rbg' keys: XLA:CPU compiles threefry for a whole model's initialisers
    # slowly; the initialisers do not care which PRNG implementation it is.
    self.variables = jax.jit(lambda k, x: model.init(k, x, train=False))(
        jax.random.key(0, impl="rbg"),
        jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32))
    self.images = jax.random.normal(jax.random.key(1, impl="rbg"),
                                    (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3))
    self.labels = jnp.array([1, 7, 3, 7], jnp.int32)
    # The modules whose outputs are mix points 1 and 2: the last block of
    # stage 1 and of stage 2.
    self.stage_outputs = tuple(
        f"stage{s + 1}_block{model.blocks_per_stage[s]}" for s in (0, 1))

    def train_apply(variables, x, **kwargs):
      return model.apply(variables, x, train=True, mutable=["batch_stats"],
                         **kwargs)

    self.plain = jax.jit(train_apply)
    self.mixed = jax.jit(
        lambda v, x, mix: train_apply(v, x, manifold_mix=mix))

    def by_hand(variables, x, lam1, lam2, perm):
      """Plain forward whose stage-1 / stage-2 outputs are mixed by hand.

      lam = 1 leaves a point untouched (exactly), so (lam, 1) mixes only the
      stage-1 output and (1, lam) only the stage-2 output; one compilation
      serves both checks.
      """
      weights = dict(zip(self.stage_outputs, (lam1, lam2)))
      fired = []

      def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = context.module.name
        if context.method_name == "__call__" and name in weights:
          fired.append(name)
          out = _hand_mix(out, weights[name], perm)
        return out

      with nn.intercept_methods(interceptor):
        result = train_apply(variables, x)
      # The hooks must have found both modules, once each, at trace time.
      assert sorted(fired) == sorted(self.stage_outputs), fired
      return result

    self.by_hand = jax.jit(by_hand)

    def loss_and_grad(variables, x, labels, mix):
      def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x,
            train=True, manifold_mix=mix, mutable=["batch_stats"])
        targets = manifold_mixup_targets(labels, mix, num_classes=NUM_CLASSES)
        loss = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits), -1))
        return loss, updates
      return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])

    self.loss_and_grad = jax.jit(loss_and_grad)


@functools.cache
def _harness(name):
  return _Harness(name)


@functools.cache
def _jitted_draw():
  return jax.jit(lambda k: draw_manifold_mix(k, BATCH))


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-5):
  jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# --------------------------------------------------------------------------
# The model hooks.


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_layer0_equals_model_on_mixup_images(name):
  h = _harness(name)
  mixed = augment.mixup(jax.random.key(5), h.images, h.labels, lam=LAM,
                        perm=PERM, num_classes=NUM_CLASSES)
  expected = h.plain(h.variables, mixed.images)
  got = h.mixed(h.variables, h.images, _mix(0))
  _assert_trees_close(got, expected)
  # The control: mixing really changed the forward.
  plain_logits, _ = h.plain(h.variables, h.images)
  assert not np.allclose(got[0], plain_logits, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_lambda_one_is_the_plain_forward(name):
  h = _harness(name)
  expected = h.plain(h.variables, h.images)
  for layer in range(3):
    _assert_trees_equal(h.mixed(h.variables, h.images, _mix(layer, lam=1.0)),
                        expected)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_hidden_points_mix_stage_outputs(name):
  h = _harness(name)
  outputs = [h.mixed(h.variables, h.images, _mix(k)) for k in range(3)]
  # Each point gives a different forward.
  for a, b in ((0, 1), (0, 2), (1, 2)):
    assert not np.allclose(outputs[a][0], outputs[b][0], rtol=1e-3, atol=1e-4)
  # Point 1 is the stage-1 output mixed by hand, point 2 the stage-2 output;
  # logits and every updated batch statistic (so the BNs after the point
  # normalise the mixed batch) agree.
  one = jnp.float32(1.0)
  lam = jnp.float32(LAM)
  _assert_trees_close(outputs[1], h.by_hand(h.variables, h.images, lam, one, PERM))
  _assert_trees_close(outputs[2], h.by_hand(h.variables, h.images, one, lam, PERM))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batch_norms_before_the_point_are_untouched(name):
  """BN statistics upstream of point k are the plain ones, downstream differ."""
  h = _harness(name)
  _, plain = h.plain(h.variables, h.images)
  plain = plain["batch_stats"]
  for layer in range(3):
    _, updates = h.mixed(h.variables, h.images, _mix(layer))
    updates = updates["batch_stats"]
    assert set(updates) == set(plain)
    for module, stats in updates.items():
      # 'stem_bn' (ResNeXt) lies before point 1, 'stage{s}_*' before point s,
      # 'final_bn' (WRN) after every point.
      stage = (0 if module.startswith("stem") else
               int(module[len("stage")]) if module.startswith("stage") else 99)
      pairs = zip(jax.tree.leaves(stats), jax.tree.leaves(plain[module]))
      if 0 < layer and stage <= layer:
        _assert_trees_equal(stats, plain[module])
      else:
        assert any(not np.allclose(a, b, rtol=1e-4, atol=1e-6)
                   for a, b in pairs), (layer, module)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_compilation_for_every_layer(name):
  h = _harness(name)
  for layer in (0, 1, 2, 1):
    h.mixed(h.variables, h.images, _mix(layer, lam=0.1 * (layer + 1)))
  assert h.mixed._cache_size() == 1
  # draw_manifold_mix under jit feeds the same compiled program.
  mix = _jitted_draw()(jax.random.key(3))
  h.mixed(h.variables, h.images, mix)
  assert h.mixed._cache_size() == 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_finite(name):
  h = _harness(name)
  for layer in range(3):
    (loss, updates), grads = h.loss_and_grad(h.variables, h.images, h.labels,
                                             _mix(layer))
    assert np.isfinite(loss)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert any(np.any(g != 0) for g in leaves)
    assert (jax.tree.structure(grads)
            == jax.tree.structure(h.variables["params"]))
  assert h.loss_and_grad._cache_size() == 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_none_keeps_variables_and_forward(name):
  model = create_model(name, num_classes=NUM_CLASSES, width=WIDTHS[name])
  x = jax.ShapeDtypeStruct((BATCH, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
  plain = jax.eval_shape(lambda k, x: model.init(k, x, train=False),
                         jax.random.key(0), x)
  hooked = jax.eval_shape(
      lambda k, x: model.init(k, x, train=True, manifold_mix=_mix(2)),
      jax.random.key(0), x)
  assert jax.tree.structure(plain) == jax.tree.structure(hooked)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), plain) == jax.tree.map(
      lambda a: (a.shape, a.dtype), hooked)
  # manifold_mix=None traces to the very same program as omitting it.
  variables = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), plain)
  jaxpr = lambda **kw: str(jax.make_jaxpr(
      lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                               **kw))(variables, x))
  assert jaxpr() == jaxpr(manifold_mix=None)


def test_manifold_mix_is_keyword_only():
  h = _harness("preactresnet8")
  with pytest.raises(TypeError):
    h.model.apply(h.variables, h.images, True, _mix(0),
                  mutable=["batch_stats"])


def test_model_rejects_mismatched_perm():
  h = _harness("preactresnet8")
  with pytest.raises(ValueError, match="perm"):
    h.model.apply(h.variables, h.images, train=True,
                  manifold_mix=_mix(0, perm=np.arange(3)),
                  mutable=["batch_stats"])


# --------------------------------------------------------------------------
# mix_at.


def test_mix_at_formula_and_identity():
  hidden = jax.random.normal(jax.random.key(0), (4, 3, 2, 5))
  mix = _mix(1)
  np.testing.assert_allclose(mix_at(hidden, mix, 1),
                             _hand_mix(hidden, LAM, PERM), rtol=1e-6)
  for point in (0, 2):
    np.testing.assert_array_equal(mix_at(hidden, mix, point), hidden)
  assert mix_at(hidden, None, 0) is hidden


def test_mix_at_traced_layer_and_dtype():
  hidden = jax.random.normal(jax.random.key(0), (4, 6)).astype(jnp.bfloat16)
  f = jax.jit(lambda h, mix: (mix_at(h, mix, 0), mix_at(h, mix, 1)))
  at0, at1 = f(hidden, _mix(0))
  assert at0.dtype == at1.dtype == jnp.bfloat16
  # Mixed in float32, rounded once to bf16.
  expected = _hand_mix(hidden.astype(jnp.float32), jnp.float32(LAM), PERM)
  np.testing.assert_array_equal(at0, expected.astype(jnp.bfloat16))
  np.testing.assert_array_equal(at1, hidden)  # unmixed point: bit-identical
  at0, at1 = f(hidden, _mix(1))
  np.testing.assert_array_equal(at0, hidden)
  np.testing.assert_array_equal(at1, expected.astype(jnp.bfloat16))
  assert f._cache_size() == 1


def test_mix_at_gradient():
  hidden = jax.random.normal(jax.random.key(0), (4, 3))
  weights = jax.random.normal(jax.random.key(1), (4, 3))
  grad = jax.grad(lambda h: jnp.sum(weights * mix_at(h, _mix(0), 0)))(hidden)
  # d/dh_j of sum_i w_i (lam h_i + (1 - lam) h_perm(i)).
  expected = np.array(LAM * weights)
  for i, j in enumerate(PERM):
    expected[j] += (1 - LAM) * np.asarray(weights[i])
  np.testing.assert_allclose(grad, expected, rtol=1e-6)
  grad = jax.grad(lambda h: jnp.sum(weights * mix_at(h, _mix(2), 0)))(hidden)
  np.testing.assert_array_equal(grad, weights)


def test_mix_at_shape_errors():
  hidden = jnp.zeros((4, 3))
  with pytest.raises(ValueError, match="perm"):
    mix_at(hidden, _mix(0, perm=np.arange(5)), 0)
  with pytest.raises(ValueError, match="scalar"):
    mix_at(hidden, ManifoldMix(jnp.zeros(2, jnp.int32), jnp.float32(0.5),
                               jnp.arange(4)), 0)
  with pytest.raises(ValueError, match="batch axis"):
    mix_at(jnp.float32(1.0), _mix(0), 0)


# --------------------------------------------------------------------------
# draw_manifold_mix.


def test_draw_types_and_key_split():
  key = jax.random.key(11)
  mix = draw_manifold_mix(key, 6)
  assert mix.layer.shape == () and mix.layer.dtype == jnp.int32
  assert mix.lam.shape == () and mix.lam.dtype == jnp.float32
  assert mix.perm.shape == (6,) and mix.perm.dtype == jnp.int32
  layer_key, lam_key, perm_key = jax.random.split(key, 3)
  assert int(mix.layer) == int(jax.random.randint(layer_key, (), 0, 3))
  np.testing.assert_allclose(mix.lam, jax.random.beta(lam_key, 2.0, 2.0),
                             rtol=1e-6)
  np.testing.assert_array_equal(mix.perm, jax.random.permutation(perm_key, 6))


def test_draw_distribution():
  keys = jax.random.split(jax.random.key(0), 6000)
  mixes = jax.jit(jax.vmap(lambda k: draw_manifold_mix(k, 5)))(keys)
  layers = np.asarray(mixes.layer)
  assert set(np.unique(layers)) == {0, 1, 2}  # never 3
  # Binomial std of each share is sqrt(2/9/6000) ~ 0.006.
  np.testing.assert_allclose(np.bincount(layers, minlength=3) / len(layers),
                             [1 / 3] * 3, atol=0.025)
  lams = np.asarray(mixes.lam)
  assert lams.min() >= 0 and lams.max() <= 1
  # Beta(2, 2): mean 1/2, variance 1/20 (Beta(1, 1) would give 1/12).
  assert abs(lams.mean() - 0.5) < 0.015
  assert abs(lams.var() - 0.05) < 0.006
  perms = np.asarray(mixes.perm)
  np.testing.assert_array_equal(np.sort(perms, axis=1),
                                np.broadcast_to(np.arange(5), perms.shape))
  # The layer and λ draws are independent of each other (separate keys).
  assert abs(np.corrcoef(layers, lams)[0, 1]) < 0.05


def test_draw_num_points_and_alpha():
  keys = jax.random.split(jax.random.key(1), 500)
  mixes = jax.jit(jax.vmap(lambda k: draw_manifold_mix(k, 3, num_points=1,
                                                       alpha=0.2)))(keys)
  np.testing.assert_array_equal(mixes.layer, 0)
  # Beta(0.2, 0.2) piles up near 0 and 1.
  assert np.mean(np.minimum(mixes.lam, 1 - mixes.lam) < 0.1) > 0.5
  mixes = jax.jit(jax.vmap(lambda k: draw_manifold_mix(k, 3, num_points=2)))(
      keys)
  assert set(np.unique(mixes.layer)) == {0, 1}


def test_draw_overrides():
  mix = draw_manifold_mix(jax.random.key(0), 4, layer=2, lam=0.25, perm=PERM)
  assert int(mix.layer) == 2 and mix.layer.dtype == jnp.int32
  assert float(mix.lam) == 0.25 and mix.lam.dtype == jnp.float32
  np.testing.assert_array_equal(mix.perm, PERM)
  # Traced overrides are accepted (one program for all of them).
  f = jax.jit(lambda k, layer, lam: draw_manifold_mix(k, 4, layer=layer,
                                                      lam=lam))
  for layer in range(3):
    out = f(jax.random.key(0), jnp.int32(layer), jnp.float32(0.5))
    assert int(out.layer) == layer
  assert f._cache_size() == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=2.0), "batch_size"),
    (dict(batch_size=True), "batch_size"),
    (dict(num_points=0), "num_points"),
    (dict(num_points=4), "num_points"),
    (dict(alpha=0.0), "alpha"),
    (dict(layer=3), "layer"),
    (dict(layer=-1), "layer"),
    (dict(layer=2, num_points=2), "layer"),
    (dict(layer=1.0), "layer"),
    (dict(layer=np.array([1])), "layer"),
    (dict(lam=1.5), "lam"),
    (dict(lam=np.array([0.5, 0.5])), "lam"),
    (dict(perm=np.arange(3)), "perm"),
    (dict(perm=np.array([0, 1, 2, 4])), "perm"),
    (dict(perm=np.array([0.0, 1.0, 2.0, 3.0])), "perm"),
])
def test_draw_errors(kwargs, match):
  kwargs = {"batch_size": 4, **kwargs}
  batch_size = kwargs.pop("batch_size")
  with pytest.raises(ValueError, match=match):
    draw_manifold_mix(jax.random.key(0), batch_size, **kwargs)


# --------------------------------------------------------------------------
# manifold_mixup_targets.


def test_targets_int_labels():
  labels = np.array([1, 7, 3, 7])
  mix = _mix(2)
  targets = manifold_mixup_targets(labels, mix, num_classes=NUM_CLASSES)
  assert targets.dtype == jnp.float32 and targets.shape == (4, NUM_CLASSES)
  eye = np.eye(NUM_CLASSES, dtype=np.float32)
  expected = LAM * eye[labels] + (1 - LAM) * eye[labels[PERM]]
  np.testing.assert_allclose(targets, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
  # Independent of the mix point.
  np.testing.assert_array_equal(
      manifold_mixup_targets(labels, _mix(0), num_classes=NUM_CLASSES), targets)


def test_targets_soft_labels_and_jit():
  soft = jax.nn.softmax(jax.random.normal(jax.random.key(2), (4, 5)))
  mix = _mix(1, lam=0.8)
  targets = jax.jit(manifold_mixup_targets)(soft, mix)
  np.testing.assert_allclose(targets, 0.8 * soft + 0.2 * soft[PERM], rtol=1e-6)
  np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)


def test_targets_errors():
  mix = _mix(0)
  with pytest.raises(ValueError, match="num_classes"):
    manifold_mixup_targets(np.array([0, 1, 2, 3]), mix)
  with pytest.raises(ValueError, match="batch size"):
    manifold_mixup_targets(np.array([0, 1, 2]), mix, num_classes=4)
  with pytest.raises(ValueError, match="num_classes"):
    manifold_mixup_targets(np.array([0, 1, 2, 9]), mix, num_classes=4)
