"""Tests for sage_jax.models: architecture sizes, calling convention, init.

Full-size models are only ever shape-evaluated (``jax.eval_shape``); anything
that runs uses tiny widths and 8x8 / 16x16 inputs so the file stays fast on a
2-core CPU.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from sage_jax.models import MODEL_NAMES, count_params, create_model

# A small width per model: cheap on CPU, yet every block type (projection and
# identity shortcut) is exercised and the init-statistics tests have kernels
# with thousands of entries.
SMALL_WIDTHS = {
    "preactresnet18": 4,
    "wrn16_8": 16,
    "resnext29_4_24": 16,
    "preactresnet8": 16,
}


def _abstract_variables(model, image_size=32):
  """Variable shapes of `model` without allocating or computing anything."""
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda key, x: model.init(key, x, train=False),
                        jax.random.key(0), x)


@functools.cache
def _small_variables(name):
  """Real float32 variables of `name` at SMALL_WIDTHS[name], 10 classes.

  Cached because several tests need the same tiny model and, on CPU, compiling
  its initialiser costs more than anything the test does with it. Variable
  shapes do not depend on the image size, nor on the computation dtype, so
  the same variables serve every test below. Uses an 'rbg' key: XLA:CPU takes
  several seconds to compile the default threefry generator for a whole
  model's worth of initialisers, while the initialisers themselves are
  PRNG-implementation agnostic.
  """
  model = create_model(name, num_classes=10, width=SMALL_WIDTHS[name])
  x = jnp.zeros((1, 8, 8, 3), jnp.float32)
  init = jax.jit(lambda key, x: model.init(key, x, train=False))
  return init(jax.random.key(0, impl="rbg"), x)


def _small_model(name, **kwargs):
  return create_model(name, num_classes=10, width=SMALL_WIDTHS[name], **kwargs)


def _apply_train(model, variables, x):
  """Jitted train-mode forward: (float32 logits, {'batch_stats': updated})."""
  return jax.jit(lambda v, x: model.apply(v, x, train=True,
                                          mutable=["batch_stats"]))(
                                              variables, x)


def _images(batch, image_size, seed=1):
  return jax.random.normal(jax.random.key(seed, impl="rbg"),
                           (batch, image_size, image_size, 3), jnp.float32)


def _kernel_shapes(params):
  """{'/'-joined path: shape} for every parameter leaf."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {"/".join(k.key for k in path): tuple(leaf.shape)
          for path, leaf in flat}


# --------------------------------------------------------------------------
# Architecture sizes.

# (name, parameters for 10 classes, pooled feature width)
PAPER_MODELS = [
    ("preactresnet18", 11_171_146, 512),
    ("wrn16_8", 10_965_866, 512),
    ("resnext29_4_24", 4_845_002, 1024),
]


def test_model_names():
  assert MODEL_NAMES == ("preactresnet18", "wrn16_8", "resnext29_4_24",
                         "preactresnet8")


@pytest.mark.parametrize("name,expected_10,final_features", PAPER_MODELS)
def test_paper_parameter_counts(name, expected_10, final_features):
  variables = _abstract_variables(create_model(name, num_classes=10))
  assert set(variables) == {"params", "batch_stats"}
  assert count_params(variables["params"]) == expected_10
  # 90 extra classes add 90 kernel columns and 90 biases to the head only.
  variables_100 = _abstract_variables(create_model(name, num_classes=100))
  assert (count_params(variables_100["params"]) ==
          expected_10 + 90 * (final_features + 1))


def test_count_params_concrete_matches_abstract():
  model = _small_model("preactresnet8")
  concrete = _small_variables("preactresnet8")["params"]
  assert count_params(concrete) == count_params(
      _abstract_variables(model)["params"])


# --------------------------------------------------------------------------
# Width scaling.


def test_default_width_channels():
  shapes = _kernel_shapes(_abstract_variables(
      create_model("preactresnet18", num_classes=10))["params"])
  assert shapes["stem/kernel"] == (3, 3, 3, 64)
  assert shapes["stage4_block2/conv2/kernel"] == (3, 3, 512, 512)

  shapes = _kernel_shapes(_abstract_variables(
      create_model("wrn16_8", num_classes=10))["params"])
  assert shapes["stem/kernel"] == (3, 3, 3, 16)
  assert shapes["stage1_block1/shortcut/kernel"] == (1, 1, 16, 128)
  assert shapes["stage3_block2/conv2/kernel"] == (3, 3, 512, 512)

  shapes = _kernel_shapes(_abstract_variables(
      create_model("resnext29_4_24", num_classes=10))["params"])
  assert shapes["stem/kernel"] == (3, 3, 3, 64)
  # Grouped kernels are (k, k, D / cardinality, D) with D = 96/192/384.
  assert shapes["stage1_block1/conv_grouped/kernel"] == (3, 3, 24, 96)
  assert shapes["stage2_block1/conv_grouped/kernel"] == (3, 3, 48, 192)
  assert shapes["stage3_block3/conv_grouped/kernel"] == (3, 3, 96, 384)
  assert shapes["stage3_block3/conv_expand/kernel"] == (1, 1, 384, 1024)

  shapes = _kernel_shapes(_abstract_variables(
      create_model("preactresnet8", num_classes=10))["params"])
  assert shapes["stem/kernel"] == (3, 3, 3, 16)
  assert shapes["stage3_block1/conv2/kernel"] == (3, 3, 64, 64)
  assert shapes["head/kernel"] == (64, 10)


def test_width_scales_channels_proportionally():
  shapes = _kernel_shapes(_abstract_variables(
      create_model("preactresnet18", num_classes=7, width=8))["params"])
  assert shapes["stem/kernel"] == (3, 3, 3, 8)
  assert shapes["stage2_block1/shortcut/kernel"] == (1, 1, 8, 16)
  assert shapes["stage4_block2/conv2/kernel"] == (3, 3, 64, 64)
  assert shapes["head/kernel"] == (64, 7)

  # WRN: stem 16 * width / 128, stages width * (1, 2, 4).
  shapes = _kernel_shapes(_abstract_variables(
      create_model("wrn16_8", num_classes=10, width=32))["params"])
  assert shapes["stem/kernel"] == (3, 3, 3, 4)
  assert shapes["stage3_block2/conv2/kernel"] == (3, 3, 128, 128)
  # Stem rounds to at least one channel.
  shapes = _kernel_shapes(_abstract_variables(
      create_model("wrn16_8", num_classes=10, width=2))["params"])
  assert shapes["stem/kernel"] == (3, 3, 3, 1)

  # ResNeXt at width 16: planes 16/32/64, per-group width 6/12/24.
  shapes = _kernel_shapes(_abstract_variables(
      create_model("resnext29_4_24", num_classes=10, width=16))["params"])
  assert shapes["stem/kernel"] == (3, 3, 3, 16)
  assert shapes["stage1_block1/conv_grouped/kernel"] == (3, 3, 6, 24)
  assert shapes["stage3_block1/conv_grouped/kernel"] == (3, 3, 24, 96)
  assert shapes["stage3_block3/conv_expand/kernel"] == (1, 1, 96, 256)
  assert shapes["head/kernel"] == (256, 10)


@pytest.mark.parametrize("width", [1, 3, 10, 37])
def test_resnext_grouped_width_divisible_by_cardinality(width):
  shapes = _kernel_shapes(_abstract_variables(
      create_model("resnext29_4_24", num_classes=10, width=width),
      image_size=8)["params"])
  for path, shape in shapes.items():
    if path.endswith("conv_grouped/kernel"):
      per_group_in, inner = shape[2], shape[3]
      assert inner == 4 * per_group_in >= 4, (path, shape)


# --------------------------------------------------------------------------
# Calling convention: shapes, dtypes, train vs eval.


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_train_and_eval(name):
  model = _small_model(name)
  variables = _small_variables(name)
  assert set(variables) == {"params", "batch_stats"}
  x = _images(4, 16)

  train_fn = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                              mutable=["batch_stats"]))
  logits, updates = train_fn(variables, x)
  assert logits.shape == (4, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  assert set(updates) == {"batch_stats"}
  # Every running statistic moved toward the batch statistics.
  old_stats = jax.tree.leaves(variables["batch_stats"])
  new_stats = jax.tree.leaves(updates["batch_stats"])
  assert len(old_stats) == len(new_stats) > 0
  assert all(not np.allclose(a, b) for a, b in zip(old_stats, new_stats))

  # BN momentum: train-mode batch statistics ignore the running ones, so a
  # second step on the same batch b turns the running mean (initially 0) from
  # (1 - m) * b into (1 - m) * b * (1 + m), m being flax's momentum: 0.9
  # everywhere (PyTorch's 0.1) except WRN's final BN (0.1, the reference quirk).
  _, updates_2 = train_fn({"params": variables["params"], **updates}, x)
  flat_1 = jax.tree_util.tree_flatten_with_path(updates["batch_stats"])[0]
  flat_2 = jax.tree.leaves(updates_2["batch_stats"])
  for (path, mean_1), mean_2 in zip(flat_1, flat_2):
    if path[-1].key != "mean":
      continue
    momentum = 0.1 if path[0].key == "final_bn" else 0.9
    np.testing.assert_allclose(mean_2, (1 + momentum) * mean_1, rtol=1e-4,
                               atol=1e-6, err_msg=str(path))

  # Eval uses running stats only: deterministic and not batch-dependent.
  trained = {"params": variables["params"], **updates}
  eval_fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  eval_1 = eval_fn(trained, x)
  eval_2 = eval_fn(trained, x)
  assert eval_1.shape == (4, 10) and eval_1.dtype == jnp.float32
  np.testing.assert_array_equal(eval_1, eval_2)
  # Even when allowed to, eval mode leaves the running statistics alone.
  _, eval_updates = jax.jit(lambda v, x: model.apply(
      v, x, train=False, mutable=["batch_stats"]))(trained, x)
  jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"],
               trained["batch_stats"])
  # Eval logits of example 0 ignore the rest of the batch, whereas train-mode
  # logits depend on it through the batch statistics.
  other_batch = x.at[1:].set(_images(3, 16, seed=2))
  np.testing.assert_allclose(eval_fn(trained, other_batch)[0], eval_1[0],
                             rtol=1e-5, atol=1e-5)
  other_train_logits, _ = train_fn(variables, other_batch)
  assert not np.allclose(other_train_logits[0], logits[0], rtol=1e-3, atol=1e-4)


def _primitive_input_dtypes(jaxpr, primitive_names):
  """Input dtypes of every `primitive_names` equation, nested jaxprs included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in primitive_names:
      found.append((eqn.primitive.name,
                    tuple(str(v.aval.dtype) for v in eqn.invars)))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
        if hasattr(sub, "eqns"):
          found.extend(_primitive_input_dtypes(sub, primitive_names))
  return found


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_bfloat16_dtypes(name):
  """Trace-only check (no compilation): bf16 compute, float32 state/logits."""
  model = _small_model(name, dtype=jnp.bfloat16)
  variables = _abstract_variables(model, image_size=8)
  for leaf in jax.tree.leaves(variables):
    assert leaf.dtype == jnp.float32
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)

  def train_fn(variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])

  logits, updates = jax.eval_shape(train_fn, variables, x)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
  for leaf in jax.tree.leaves(updates):
    assert leaf.dtype == jnp.float32
  # Every conv and matmul (the layers that dominate the cost) runs in bf16.
  matmuls = _primitive_input_dtypes(
      jax.make_jaxpr(train_fn)(variables, x).jaxpr,
      ("conv_general_dilated", "dot_general"))
  assert len(matmuls) > 5
  for primitive, dtypes in matmuls:
    assert dtypes == ("bfloat16", "bfloat16"), (primitive, dtypes)


# One plain and one grouped-conv model is enough for the numeric check; the
# trace-only test above covers the dtype plumbing of all four.
@pytest.mark.parametrize("name", ["preactresnet8", "resnext29_4_24"])
def test_bfloat16_numerics(name):
  model = _small_model(name, dtype=jnp.bfloat16)
  variables = _small_variables(name)
  x = _images(2, 8)
  logits, updates = _apply_train(model, variables, x)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
  assert np.all(np.isfinite(logits))
  # The same variables in float32 give nearly the same logits.
  reference = _small_model(name)
  reference_logits, reference_updates = _apply_train(reference, variables, x)
  np.testing.assert_allclose(logits, reference_logits, rtol=0.1, atol=0.1)
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=0.1, atol=0.05),
      updates, reference_updates)


# --------------------------------------------------------------------------
# Initialisation statistics.


def test_pytorch_default_init_preactresnet():
  assert SMALL_WIDTHS["preactresnet8"] == 16
  params = _small_variables("preactresnet8")["params"]
  # kaiming_uniform(a=sqrt(5)) == U(+-sqrt(1 / fan_in)).
  kernel = np.asarray(params["stage3_block1"]["conv2"]["kernel"])  # 3x3x64x64
  bound = math.sqrt(1.0 / (3 * 3 * 64))
  assert np.abs(kernel).max() <= bound
  assert np.abs(kernel).max() > 0.99 * bound
  np.testing.assert_allclose(kernel.std(), bound / math.sqrt(3), rtol=0.02)
  assert abs(kernel.mean()) < 0.01 * bound
  assert "bias" not in params["stage3_block1"]["conv2"]

  head_kernel = np.asarray(params["head"]["kernel"])  # 64 x 10
  head_bias = np.asarray(params["head"]["bias"])
  head_bound = 1.0 / math.sqrt(64)
  assert np.abs(head_kernel).max() <= head_bound
  assert np.abs(head_bias).max() <= head_bound
  assert np.abs(head_bias).max() > 0.3 * head_bound  # not zero-initialised

  bn = params["stage3_block1"]["bn2"]
  np.testing.assert_array_equal(bn["scale"], 1.0)
  np.testing.assert_array_equal(bn["bias"], 0.0)


def test_pytorch_default_conv_bias_init_wrn():
  assert SMALL_WIDTHS["wrn16_8"] == 16
  params = _small_variables("wrn16_8")["params"]
  # Stage 3 conv2 maps 64 -> 64 channels with a 3x3 kernel.
  conv2 = params["stage3_block2"]["conv2"]
  bound = 1.0 / math.sqrt(3 * 3 * 64)
  bias = np.asarray(conv2["bias"])
  assert bias.shape == (64,)
  assert np.abs(bias).max() <= bound
  assert np.abs(bias).max() > 0.5 * bound
  assert np.abs(conv2["kernel"]).max() <= bound
  # 1x1 shortcut into stage 2: fan_in = 16 (stage-1 width).
  shortcut_bias = np.asarray(params["stage2_block1"]["shortcut"]["bias"])
  assert np.abs(shortcut_bias).max() <= 1.0 / math.sqrt(16)
  assert np.abs(shortcut_bias).max() > 0.5 / math.sqrt(16)
  # The stem's bias: fan_in = 3 * 3 * 3.
  stem_bias = np.asarray(params["stem"]["bias"])
  assert np.abs(stem_bias).max() <= 1.0 / math.sqrt(27)


def test_resnext_kaiming_normal_init():
  assert SMALL_WIDTHS["resnext29_4_24"] == 16
  params = _small_variables("resnext29_4_24")["params"]
  # 1x1 expand conv of stage 3: 96 -> 256, std sqrt(2 / (1 * 1 * 256)).
  expand = np.asarray(params["stage3_block3"]["conv_expand"]["kernel"])
  assert expand.shape == (1, 1, 96, 256)
  np.testing.assert_allclose(expand.std(), math.sqrt(2 / 256), rtol=0.03)
  assert abs(expand.mean()) < 0.03 * math.sqrt(2 / 256)
  # Untruncated normal: some values lie beyond 2 std.
  assert np.abs(expand).max() > 3 * math.sqrt(2 / 256)
  # Grouped conv: fan_out uses all output channels, k * k * D = 9 * 96.
  grouped = np.asarray(params["stage3_block1"]["conv_grouped"]["kernel"])
  assert grouped.shape == (3, 3, 24, 96)
  np.testing.assert_allclose(grouped.std(), math.sqrt(2 / (9 * 96)), rtol=0.05)
  # The classifier keeps PyTorch's default init.
  head_bound = 1.0 / math.sqrt(256)
  assert np.abs(params["head"]["kernel"]).max() <= head_bound
  assert np.abs(params["head"]["bias"]).max() <= head_bound
  np.testing.assert_array_equal(params["stem_bn"]["scale"], 1.0)
  np.testing.assert_array_equal(params["stem_bn"]["bias"], 0.0)


# --------------------------------------------------------------------------
# Argument validation.


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError) as excinfo:
    create_model("resnet50", num_classes=10)
  for name in MODEL_NAMES:
    assert name in str(excinfo.value)


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True, "10", None])
def test_bad_num_classes(num_classes):
  with pytest.raises(ValueError, match="num_classes"):
    create_model("preactresnet8", num_classes=num_classes)


@pytest.mark.parametrize("width", [0, -4, 1.5, False, "16"])
def test_bad_width(width):
  with pytest.raises(ValueError, match="width"):
    create_model("preactresnet8", num_classes=10, width=width)


# --------------------------------------------------------------------------
# Cross-device BatchNorm.


def test_cross_device_batch_norm_matches_full_batch():
  num_devices = 8
  assert jax.device_count() >= num_devices, "conftest.py forces 8 devices"
  mesh = jax.make_mesh((num_devices,), ("data",))
  synced = _small_model("preactresnet8", bn_axis_name="data")
  single = _small_model("preactresnet8")
  variables = _small_variables("preactresnet8")
  x = _images(2 * num_devices, 8)

  def train_step(variables, x):
    return synced.apply(variables, x, train=True, mutable=["batch_stats"])

  # Place the batch split over devices (and the variables replicated) as the
  # trainer does; shard_map then sees 2 images per device.
  sharded_step = jax.jit(jax.shard_map(
      train_step, mesh=mesh, in_specs=(P(), P("data")),
      out_specs=(P("data"), P())))
  sharded_logits, sharded_updates = sharded_step(
      jax.device_put(variables, NamedSharding(mesh, P())),
      jax.device_put(x, NamedSharding(mesh, P("data"))))
  full_logits, full_updates = _apply_train(single, variables, x)

  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
      sharded_updates, full_updates)
  np.testing.assert_allclose(sharded_logits, full_logits, rtol=1e-4, atol=1e-4)

  # Control: one shard's own statistics differ, so the match above is real.
  _, shard_updates = _apply_train(single, variables, x[:2])
  first_mean = lambda u: u["batch_stats"]["stage1_block1"]["bn1"]["mean"]
  assert not np.allclose(first_mean(shard_updates), first_mean(full_updates),
                         rtol=1e-3, atol=1e-4)
