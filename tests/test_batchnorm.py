"""BatchNorm follows PyTorch's ``BatchNorm2d`` (issue 12).

The oracle is a float64 NumPy transcription of PyTorch's training-mode rule:
normalise with the biased batch variance, fold the *unbiased* one (÷ (n − 1))
into the running variance, ``running <- (1 − m_t) * running + m_t * batch``
with PyTorch momentum m_t = 1 − (flax momentum). Checked on the layer alone,
on every BatchNorm of the three paper architectures (their inputs captured
with ``nn.intercept_methods``), and across 8 devices in ``shard_map`` where
n is the global count.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sage_jax.models import create_model
from sage_jax.models.batchnorm import BatchNorm, unbiased_correction
from sage_jax.models.init import BN_EPSILON, batch_norm

# Values of each channel's statistic: small n makes the n / (n − 1) factor
# large, so biased and unbiased rules are far apart.
SHAPE = (3, 2, 2, 5)


def torch_batchnorm_reference(x, scale, bias, running_mean, running_var, *,
                              train, torch_momentum=0.1, eps=BN_EPSILON):
  """PyTorch BatchNorm2d forward in float64 (channels last).

  Returns (y, new_running_mean, new_running_var); eval mode returns the
  running statistics unchanged.
  """
  x = np.asarray(x, np.float64)
  axes = tuple(range(x.ndim - 1))
  if not train:
    mean, var = (np.asarray(running_mean, np.float64),
                 np.asarray(running_var, np.float64))
    new_mean, new_var = running_mean, running_var
  else:
    n = x.size // x.shape[-1]
    mean = x.mean(axes)
    sum_sq = ((x - mean) ** 2).sum(axes)
    var = sum_sq / n                      # normalises with the biased one
    unbiased = sum_sq / (n - 1)           # running average takes the unbiased
    new_mean = (1 - torch_momentum) * running_mean + torch_momentum * mean
    new_var = (1 - torch_momentum) * running_var + torch_momentum * unbiased
  y = (x - mean) / np.sqrt(var + eps) * scale + bias
  return y, new_mean, new_var


def _random_state(features, seed):
  """Non-trivial float32 scale, bias, running mean, running var (C,)."""
  rng = np.random.default_rng(seed)
  return (rng.uniform(0.5, 1.5, features).astype(np.float32),
          rng.normal(0, 1, features).astype(np.float32),
          rng.normal(0, 1, features).astype(np.float32),
          rng.uniform(0.5, 2.0, features).astype(np.float32))


def _variables(scale, bias, running_mean, running_var):
  return {"params": {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)},
          "batch_stats": {"mean": jnp.asarray(running_mean),
                          "var": jnp.asarray(running_var)}}


def _inputs(shape, seed, offset=3.0):
  # A channel offset so the mean matters and the one-pass variance is tested
  # away from zero mean.
  rng = np.random.default_rng(seed)
  return (rng.normal(0, 2, shape) + offset).astype(np.float32)


def _train(layer, variables, x):
  return layer.apply(variables, x, mutable=["batch_stats"])


# --------------------------------------------------------------------------
# The layer alone.


@pytest.mark.parametrize("shape", [SHAPE, (6, 4), (2, 3, 3, 1)])
@pytest.mark.parametrize("flax_momentum", [0.9, 0.1])
def test_train_step_matches_pytorch_rule(shape, flax_momentum):
  state = _random_state(shape[-1], seed=0)
  variables = _variables(*state)
  layer = BatchNorm(use_running_average=False, momentum=flax_momentum,
                    epsilon=BN_EPSILON)
  step = jax.jit(functools.partial(_train, layer))
  running = state[2:]
  # Three chained steps on different batches: the momentum convention
  # (flax m == PyTorch 1 − m) compounds.
  for seed in range(3):
    x = _inputs(shape, seed=seed + 10)
    y, updates = step(variables, x)
    y_ref, *running = torch_batchnorm_reference(
        x, *state[:2], *running, train=True, torch_momentum=1 - flax_momentum)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], running[0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], running[1],
                               rtol=1e-5, atol=1e-6)
    assert y.dtype == jnp.float32
    variables = {"params": variables["params"], **updates}


def test_normalisation_uses_biased_running_average_unbiased():
  """n = 2 per channel: biased var = d²/4 and unbiased = d²/2, d = a − b."""
  x = _inputs((2, 4), seed=1)
  layer = BatchNorm(use_running_average=False)
  y, updates = _train(layer, layer.init(jax.random.key(0), x), x)
  half_gap = np.abs(x[0].astype(np.float64) - x[1]) / 2
  # Normalised with the biased variance: ±d/2 / sqrt(d²/4 + eps).
  np.testing.assert_allclose(np.abs(y), np.broadcast_to(
      half_gap / np.sqrt(half_gap ** 2 + BN_EPSILON), y.shape), rtol=1e-5)
  # Initial running var is 1; it takes 0.1 of the unbiased d²/2.
  np.testing.assert_allclose(updates["batch_stats"]["var"],
                             0.9 + 0.1 * 2 * half_gap ** 2, rtol=1e-5)


def test_eval_uses_running_statistics_and_changes_nothing():
  state = _random_state(SHAPE[-1], seed=2)
  variables = _variables(*state)
  x = _inputs(SHAPE, seed=3)
  layer = BatchNorm(use_running_average=True)
  step = jax.jit(functools.partial(_train, layer))
  y, updates = step(variables, x)
  y_ref, _, _ = torch_batchnorm_reference(x, *state, train=False)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, updates["batch_stats"],
               variables["batch_stats"])
  # Example 0 does not depend on the rest of the batch.
  other = x.copy()
  other[1:] = _inputs(other[1:].shape, seed=4)
  np.testing.assert_array_equal(step(variables, other)[0][0], y[0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_same_as_flax_batchnorm_except_running_variance(dtype):
  """Forward, running mean, variable tree: flax's. Running var: × n/(n−1).

  This is what keeps checkpoints and the bf16 behaviour (float32 statistics
  and state, output in the computation dtype) unchanged.
  """
  x = jnp.asarray(_inputs(SHAPE, seed=5)).astype(dtype)
  ours = BatchNorm(use_running_average=False, momentum=0.9,
                   epsilon=BN_EPSILON, dtype=dtype)
  flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9,
                         epsilon=BN_EPSILON, dtype=dtype,
                         param_dtype=jnp.float32)
  key = jax.random.key(0)
  ours_init, flax_init = ours.init(key, x), flax_bn.init(key, x)
  assert (jax.tree.map(lambda a: (a.shape, a.dtype), ours_init)
          == jax.tree.map(lambda a: (a.shape, a.dtype), flax_init))
  jax.tree.map(np.testing.assert_array_equal, ours_init, flax_init)

  variables = _variables(*_random_state(SHAPE[-1], seed=6))
  y, updates = jax.jit(functools.partial(_train, ours))(variables, x)
  y_flax, updates_flax = jax.jit(functools.partial(_train, flax_bn))(
      variables, x)
  assert y.dtype == dtype
  for leaf in jax.tree.leaves(updates):
    assert leaf.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(y, np.float32),
                                np.asarray(y_flax, np.float32))
  np.testing.assert_array_equal(updates["batch_stats"]["mean"],
                                updates_flax["batch_stats"]["mean"])
  # Undo the running average on both to recover the folded batch variance.
  n = np.prod(SHAPE[:-1])
  old_var = variables["batch_stats"]["var"]
  folded = (updates["batch_stats"]["var"] - 0.9 * old_var) / 0.1
  folded_flax = (updates_flax["batch_stats"]["var"] - 0.9 * old_var) / 0.1
  np.testing.assert_allclose(folded, folded_flax * n / (n - 1), rtol=1e-4)


def test_bfloat16_statistics_are_float32_of_the_rounded_input():
  x = jnp.asarray(_inputs(SHAPE, seed=7)).astype(jnp.bfloat16)
  state = _random_state(SHAPE[-1], seed=8)
  layer = BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
  _, updates = _train(layer, _variables(*state), x)
  _, mean_ref, var_ref = torch_batchnorm_reference(
      np.asarray(x, np.float32), *state, train=True)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], mean_ref,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"], var_ref,
                             rtol=1e-5, atol=1e-6)


def test_jit_equals_eager_and_is_deterministic():
  variables = _variables(*_random_state(SHAPE[-1], seed=9))
  x = _inputs(SHAPE, seed=10)
  layer = BatchNorm(use_running_average=False)
  eager = _train(layer, variables, x)
  step = jax.jit(functools.partial(_train, layer))
  jitted_1, jitted_2 = step(variables, x), step(variables, x)
  jax.tree.map(np.testing.assert_array_equal, jitted_1, jitted_2)
  # Fusion reorders float32 sums: equal up to rounding, not bit for bit.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-5),
               eager, jitted_1)


def test_one_value_per_channel_is_refused_in_train_mode_only():
  x = _inputs((1, 1, 1, 3), seed=11)
  layer = BatchNorm(use_running_average=False)
  variables = layer.init(jax.random.key(0), x)   # init updates nothing: fine
  with pytest.raises(ValueError, match="more than 1 value per channel"):
    _train(layer, variables, x)
  eval_layer = BatchNorm(use_running_average=True)
  assert eval_layer.apply(variables, x).shape == x.shape


@pytest.mark.parametrize("count", [0, 1])
def test_unbiased_correction_rejects_too_few_values(count):
  with pytest.raises(ValueError, match="n = "):
    unbiased_correction(count)


def test_unbiased_correction_values():
  for n in (2, 3, 128 * 32 * 32):
    assert unbiased_correction(n) * (n - 1) == pytest.approx(n, rel=1e-15)


def test_bad_inputs():
  layer = BatchNorm(use_running_average=False)
  with pytest.raises(TypeError, match="floating"):
    layer.init(jax.random.key(0), jnp.ones((4, 3), jnp.int32))
  with pytest.raises(ValueError, match="ndim"):
    layer.init(jax.random.key(0), jnp.ones((4,), jnp.float32))
  with pytest.raises(ValueError, match="momentum"):
    BatchNorm(use_running_average=False, momentum=1.5).init(
        jax.random.key(0), jnp.ones((4, 3)))
  with pytest.raises(ValueError, match="epsilon"):
    BatchNorm(use_running_average=False, epsilon=0.0).init(
        jax.random.key(0), jnp.ones((4, 3)))


def test_batch_norm_constructor_builds_this_layer():
  layer = batch_norm(train=True, axis_name="data", dtype=jnp.bfloat16)
  assert isinstance(layer, BatchNorm)
  assert (layer.use_running_average, layer.momentum, layer.epsilon,
          layer.axis_name, layer.dtype) == (False, 0.9, 1e-5, "data",
                                            jnp.bfloat16)
  assert batch_norm(train=False, axis_name=None).use_running_average


# --------------------------------------------------------------------------
# Every BatchNorm of the paper architectures.

ARCHITECTURES = {"preactresnet18": 4, "wrn16_8": 16, "resnext29_4_24": 16}
# Layers whose flax momentum is not 0.9 (PyTorch 0.1): the WRN reference's
# final BN is BatchNorm2d(momentum=0.9), i.e. flax 0.1.
OTHER_MOMENTUM = {("wrn16_8", "final_bn"): 0.1}


def _perturbed_batch_stats(batch_stats, seed):
  """Random running statistics, so the old value's weight is visible."""
  rng = np.random.default_rng(seed)
  def perturb(path, leaf):
    if path[-1].key == "mean":
      return jnp.asarray(rng.normal(0, 1, leaf.shape), jnp.float32)
    return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), jnp.float32)
  return jax.tree_util.tree_map_with_path(perturb, batch_stats)


def _capture_batchnorm_inputs(model, variables, x):
  """Train-mode forward returning (updates, {path: BN input, momentum})."""
  def forward(variables, x):
    captured = {}
    def interceptor(next_fun, args, kwargs, context):
      if isinstance(context.module, BatchNorm) and \
          context.method_name == "__call__":
        captured[context.module.path] = (args[0], context.module.momentum)
      return next_fun(*args, **kwargs)
    with nn.intercept_methods(interceptor):
      _, updates = model.apply(variables, x, train=True,
                               mutable=["batch_stats"])
    inputs = {path: value for path, (value, _) in captured.items()}
    momenta = {path: m for path, (_, m) in captured.items()}
    return updates, inputs, momenta

  momenta = {}
  def traced(variables, x):
    updates, inputs, found = forward(variables, x)
    momenta.update(found)   # static floats, read at trace time
    return updates, inputs
  updates, inputs = jax.jit(traced)(variables, x)
  return updates, inputs, momenta


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_architecture_batchnorm_running_stats(name):
  model = create_model(name, num_classes=10, width=ARCHITECTURES[name])
  x = jnp.asarray(_inputs((4, 8, 8, 3), seed=12, offset=0.0))
  variables = jax.jit(lambda key, x: model.init(key, x, train=False))(
      jax.random.key(0, impl="rbg"), x)
  variables = {"params": variables["params"],
               "batch_stats": _perturbed_batch_stats(
                   variables["batch_stats"], seed=13)}
  updates, inputs, momenta = _capture_batchnorm_inputs(model, variables, x)

  flat_old = dict(jax.tree_util.tree_flatten_with_path(
      variables["batch_stats"])[0])
  flat_new = dict(jax.tree_util.tree_flatten_with_path(
      updates["batch_stats"])[0])
  layer_paths = {tuple(k.key for k in path[:-1]) for path in flat_old}
  # Every BatchNorm of the model was captured, and nothing else.
  assert set(inputs) == layer_paths and len(layer_paths) > 5
  biased_rule_would_pass = []
  for path, layer_input in inputs.items():
    expected_momentum = OTHER_MOMENTUM.get((name, path[0]), 0.9)
    assert momenta[path] == expected_momentum, path
    key = lambda stat: tuple(jax.tree_util.DictKey(p) for p in path + (stat,))
    old_mean, old_var = flat_old[key("mean")], flat_old[key("var")]
    _, mean_ref, var_ref = torch_batchnorm_reference(
        layer_input, 1.0, 0.0, old_mean, old_var, train=True,
        torch_momentum=1 - momenta[path])
    np.testing.assert_allclose(flat_new[key("mean")], mean_ref, rtol=1e-5,
                               atol=1e-5, err_msg=str(path))
    np.testing.assert_allclose(flat_new[key("var")], var_ref, rtol=2e-5,
                               atol=1e-6, err_msg=str(path))
    # Control: flax's biased rule is distinguishable at this tolerance.
    n = np.prod(layer_input.shape[:-1])
    biased_ref = var_ref - (1 - momenta[path]) * (
        np.var(np.asarray(layer_input, np.float64), axis=(0, 1, 2))
        / (n - 1))
    biased_rule_would_pass.append(np.allclose(flat_new[key("var")],
                                              biased_ref, rtol=2e-5,
                                              atol=1e-6))
  assert not any(biased_rule_would_pass)


# --------------------------------------------------------------------------
# Cross-device BatchNorm: n is the global count.


def _mesh():
  assert jax.device_count() >= 8, "conftest.py forces 8 devices"
  return jax.make_mesh((8,), ("data",))


def test_cross_device_layer_uses_global_count():
  """One value per channel per device (alone it would be refused): n = 8."""
  mesh = _mesh()
  x = _inputs((8, 1, 1, 5), seed=14)
  state = _random_state(5, seed=15)
  variables = _variables(*state)
  synced = BatchNorm(use_running_average=False, axis_name="data")
  sharded = jax.jit(jax.shard_map(
      functools.partial(_train, synced), mesh=mesh,
      in_specs=(P(), P("data")), out_specs=(P("data"), P())))
  y, updates = sharded(jax.device_put(variables, NamedSharding(mesh, P())),
                       jax.device_put(x, NamedSharding(mesh, P("data"))))
  y_ref, mean_ref, var_ref = torch_batchnorm_reference(x, *state, train=True)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(updates["batch_stats"]["mean"], mean_ref,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(updates["batch_stats"]["var"], var_ref,
                             rtol=1e-5, atol=1e-6)


def test_cross_device_model_equals_one_device_whole_batch():
  mesh = _mesh()
  synced = create_model("preactresnet8", num_classes=10, width=8,
                        bn_axis_name="data")
  single = create_model("preactresnet8", num_classes=10, width=8)
  x = jnp.asarray(_inputs((16, 8, 8, 3), seed=16, offset=0.0))
  variables = jax.jit(lambda key, x: single.init(key, x, train=False))(
      jax.random.key(1, impl="rbg"), x[:1])
  variables = {"params": variables["params"],
               "batch_stats": _perturbed_batch_stats(
                   variables["batch_stats"], seed=17)}

  def step(model, variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])

  sharded = jax.jit(jax.shard_map(
      functools.partial(step, synced), mesh=mesh,
      in_specs=(P(), P("data")), out_specs=(P("data"), P())))
  sharded_logits, sharded_updates = sharded(
      jax.device_put(variables, NamedSharding(mesh, P())),
      jax.device_put(x, NamedSharding(mesh, P("data"))))
  logits, updates = jax.jit(functools.partial(step, single))(variables, x)
  # Local counts (2 × H × W) differ from the global ones by 8×; with them the
  # deepest running variances would be off by ~1e-2 relative.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5,
                                                       atol=1e-6),
               sharded_updates, updates)
  np.testing.assert_allclose(sharded_logits, logits, rtol=1e-4, atol=1e-4)
