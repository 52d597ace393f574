"""The method registry: one interface, results unchanged by the move."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import legacy_step
from sage_jax import config as config_lib
from sage_jax import methods
from sage_jax import models
from sage_jax import published
from sage_jax import train
from test_train import tiny_config

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
NUM_CLASSES = 10


def run_steps(config, make_body, num_steps=3, num_devices=8):
  """Final host state after `num_steps` steps of the body `make_body` builds."""
  mesh = jax.make_mesh((num_devices,), ("data",))
  model = models.create_model(config.model.name, num_classes=NUM_CLASSES,
                              width=config.model.width or None)
  schedule = train.learning_rate_schedule(config, steps_per_epoch=10)
  tx = train.create_optimizer(config, schedule)
  loss_fn = train.LOSS_FNS[config.loss]
  step = train.make_train_step(make_body(model, tx, loss_fn, schedule), mesh)
  state = jax.device_get(jax.jit(
      lambda: train.init_state(config, model, tx, (8, 8, 3)))())
  state = train.to_device_state(state, mesh)
  rng = np.random.default_rng(0)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  for _ in range(num_steps):
    images = rng.integers(0, 256, (config.batch_size, 8, 8, 3)).astype(np.uint8)
    labels = rng.integers(0, NUM_CLASSES, (config.batch_size,)).astype(np.int32)
    state, metrics = step(state, jax.device_put(images, sharding),
                          jax.device_put(labels, sharding))
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize("method", ["vanilla", "mixup", "cutmix", "sage"])
def test_registry_step_is_bit_identical_to_the_pre_registry_step(method):
  config = tiny_config(method=method)

  def registry_body(model, tx, loss_fn, schedule):
    method_step = train.make_method_step(config, model, loss_fn, NUM_CLASSES,
                                         MEAN, STD)
    return train.make_train_step_body(method_step, tx, MEAN, STD, schedule)

  def legacy_body(model, tx, loss_fn, schedule):
    return legacy_step.make_train_step_body(model, tx, loss_fn, config,
                                            NUM_CLASSES, MEAN, STD, schedule)

  new_state, new_metrics = run_steps(config, registry_body)
  old_state, old_metrics = run_steps(config, legacy_body)
  assert int(new_state.step) == 3
  jax.tree.map(np.testing.assert_array_equal, new_state, old_state)
  assert new_metrics.keys() == old_metrics.keys()
  jax.tree.map(np.testing.assert_array_equal, new_metrics, old_metrics)


def test_every_registered_method_has_a_valid_default_block():
  config = config_lib.base_config()
  # The registry lists the methods in the order of the paper's tables.
  order = [name for name in published.METHOD_ORDER if name in methods.REGISTRY]
  assert list(methods.METHOD_NAMES) == order
  for name, method in methods.REGISTRY.items():
    assert method.name == name and method.summary
    if method.default_config is None:
      assert not method.config_rules and name not in config
    else:
      assert isinstance(config[name], ml_collections.ConfigDict)
      assert set(method.config_rules) == set(config[name].keys()), name
  config_lib.validate_config(config)


def test_unknown_method_names_the_registry():
  with pytest.raises(ValueError, match="registered methods are vanilla, mixup"):
    methods.get_method("puzzlemix")
  config = tiny_config(method="puzzlemix")
  with pytest.raises(ValueError, match=r"config\.method must be one of"):
    config_lib.validate_config(config)


def test_method_blocks_are_validated():
  with pytest.raises(ValueError, match=r"config\.mixup\.alpha must be a positive"):
    config_lib.validate_config(tiny_config(**{"mixup.alpha": 0.0}))
  with pytest.raises(ValueError, match=r"config\.cutmix\.alpha"):
    config_lib.validate_config(tiny_config(**{"cutmix.alpha": -1.0}))


def test_the_train_step_does_not_branch_on_method_names():
  # One interface: sage_jax.train never names a method.
  import inspect
  source = inspect.getsource(train)
  for name in methods.METHOD_NAMES:
    assert f'"{name}"' not in source, name


@pytest.mark.parametrize("method", methods.METHOD_NAMES)
def test_every_method_step_returns_its_contract(method):
  config = tiny_config(method=method)
  model = models.create_model("preactresnet8", num_classes=NUM_CLASSES, width=4)
  step = train.make_method_step(config, model, train.LOSS_FNS["bce_softmax"],
                                NUM_CLASSES, MEAN, STD)
  images = jax.random.uniform(jax.random.key(0), (8, 8, 8, 3))
  uint8 = (images * 255).astype(jnp.uint8)
  labels = jnp.arange(8) % NUM_CLASSES
  variables = model.init(jax.random.key(1), images, train=False)
  batch = methods.Batch(images, uint8, labels)
  out = jax.jit(step)(jax.random.key(2), variables["params"],
                      variables["batch_stats"], batch)
  assert jax.tree.structure(out.grads) == jax.tree.structure(variables["params"])
  assert jax.tree.structure(out.batch_stats) == jax.tree.structure(
      variables["batch_stats"])
  assert {"loss", "accuracy"} <= set(out.metrics)
  for value in jax.tree.leaves((out.grads, out.metrics)):
    assert np.all(np.isfinite(value))
  # The same key gives the same step.
  again = jax.jit(step)(jax.random.key(2), variables["params"],
                        variables["batch_stats"], batch)
  jax.tree.map(np.testing.assert_array_equal, out, again)


def _tiny_setup(batch=8, size=8):
  model = models.create_model("preactresnet8", num_classes=NUM_CLASSES, width=4)
  images = jax.random.uniform(jax.random.key(0), (batch, size, size, 3))
  uint8 = (images * 255).astype(jnp.uint8)
  images = (uint8.astype(jnp.float32) / 255 - 0.5) / 0.25
  labels = jnp.arange(batch) % NUM_CLASSES
  variables = model.init(jax.random.key(1), images, train=False)
  return model, methods.Batch(images, uint8, labels), variables


def _step(method, model, **overrides):
  config = tiny_config(method=method, **overrides)
  return train.make_method_step(config, model, train.LOSS_FNS["bce_softmax"],
                                NUM_CLASSES, MEAN, STD)


def test_manifold_mixup_with_lambda_one_is_vanilla(monkeypatch):
  from sage_jax.methods import manifold_mixup
  model, batch, variables = _tiny_setup()
  draw = manifold_mixup.augment.draw_manifold_mix
  vanilla = jax.jit(_step("vanilla", model))(
      jax.random.key(3), variables["params"], variables["batch_stats"], batch)
  for layer in range(3):
    monkeypatch.setattr(manifold_mixup.augment, "draw_manifold_mix",
                        lambda key, b, layer=layer, **kw: draw(key, b, lam=1.0,
                                                               layer=layer, **kw))
    out = jax.jit(_step("manifold_mixup", model))(
        jax.random.key(3), variables["params"], variables["batch_stats"], batch)
    jax.tree.map(np.testing.assert_array_equal, (out.grads, out.batch_stats),
                 (vanilla.grads, vanilla.batch_stats))
    assert out.metrics["loss"] == vanilla.metrics["loss"]


def test_manifold_mixup_at_the_input_is_mixup_on_the_same_draws(monkeypatch):
  from sage_jax import augment
  from sage_jax.methods import manifold_mixup
  model, batch, variables = _tiny_setup()
  perm = jnp.array([3, 0, 1, 2, 7, 6, 5, 4], jnp.int32)
  draw = manifold_mixup.augment.draw_manifold_mix
  monkeypatch.setattr(manifold_mixup.augment, "draw_manifold_mix",
                      lambda key, b, **kw: draw(key, b, lam=0.3, layer=0,
                                                perm=perm, **kw))
  out = jax.jit(_step("manifold_mixup", model))(
      jax.random.key(3), variables["params"], variables["batch_stats"], batch)
  mixed = augment.mixup(jax.random.key(9), batch.images, batch.labels, lam=0.3,
                        perm=perm, num_classes=NUM_CLASSES)
  context = methods.StepContext(model, train.LOSS_FNS["bce_softmax"], NUM_CLASSES,
                                MEAN, STD)
  (loss, (stats, _)), grads = jax.jit(jax.value_and_grad(
      context.model_loss, has_aux=True))(variables["params"],
                                         variables["batch_stats"], mixed.images,
                                         mixed.labels)
  tol = dict(rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol),
               (out.grads, out.batch_stats, out.metrics["loss"]), (grads, stats, loss))
  assert float(out.metrics["mix_label_weight"]) == pytest.approx(0.3)


@pytest.mark.parametrize("method,overrides", [
    ("manifold_mixup", {}),
    ("saliencymix", {"saliencymix.mix_prob": 1.0}),
    ("puzzle_mix", {}),
    ("co_mixup", {}),
    # The compatibility option: OpenCV on the host, inside the mapped step.
    ("saliencymix", {"saliencymix.mix_prob": 1.0,
                     "saliencymix.saliency": "released_float_image"})])
def test_eight_device_step_is_the_mean_of_per_shard_steps(method, overrides):
  # Pairs are formed within each device's shard and nothing but the gradient
  # (and the metrics) is communicated: the 8-device update equals the update
  # with the mean of the eight shards' own method steps.
  config = tiny_config(method=method, **overrides)
  num_devices, per_device = 8, 2
  mesh = jax.make_mesh((num_devices,), ("data",))
  model = models.create_model("preactresnet8", num_classes=NUM_CLASSES, width=4)
  schedule = train.learning_rate_schedule(config, steps_per_epoch=10)
  tx = train.create_optimizer(config, schedule)
  loss_fn = train.LOSS_FNS[config.loss]
  method_step = train.make_method_step(config, model, loss_fn, NUM_CLASSES, MEAN, STD)
  step = train.make_train_step(
      train.make_train_step_body(method_step, tx, MEAN, STD, schedule), mesh)
  host_state = jax.device_get(jax.jit(
      lambda: train.init_state(config, model, tx, (8, 8, 3)))())
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (num_devices * per_device, 8, 8, 3)).astype(np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (num_devices * per_device,)).astype(np.int32)
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  new_state, _ = step(train.to_device_state(host_state, mesh),
                      jax.device_put(images, sharding), jax.device_put(labels, sharding))

  from sage_jax import input_pipeline
  base_key = jax.random.wrap_key_data(host_state.rng)
  shard_grads = []
  one_step = jax.jit(method_step)
  for device in range(num_devices):
    rows = slice(device * per_device, (device + 1) * per_device)
    key = jax.random.fold_in(jax.random.fold_in(base_key, 0), device)
    shard = methods.Batch(input_pipeline.normalize(images[rows], MEAN, STD),
                          jnp.asarray(images[rows]), jnp.asarray(labels[rows]))
    shard_grads.append(one_step(key, host_state.params, host_state.batch_stats,
                                shard).grads)
  grads = jax.tree.map(lambda *g: np.mean(np.stack(g), axis=0), *shard_grads)
  updates, _ = tx.update(grads, host_state.opt_state, host_state.params)
  import optax
  want = optax.apply_updates(host_state.params, updates)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(new_state.params), want)


def test_puzzle_mix_step_is_an_eval_mode_saliency_then_one_mixed_pass():
  # §3.1: the saliency pass runs BN in eval mode and updates nothing; its
  # parameter gradient is discarded. The step's gradient and BN statistics
  # are those of one train-mode pass on the Puzzle Mix batch.
  from sage_jax import augment
  import optax
  model, batch, variables = _tiny_setup()
  params, stats = variables["params"], variables["batch_stats"]
  key = jax.random.key(4)
  out = jax.jit(_step("puzzle_mix", model))(key, params, stats, batch)

  def eval_loss(images):
    logits = model.apply(variables, images, train=False)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits,
                                                                     batch.labels))

  saliency = jnp.sqrt(jnp.mean(jax.grad(eval_loss)(batch.images) ** 2, axis=-1))
  mixed = augment.puzzle_mix(key, batch.images, batch.labels, saliency, mean=MEAN,
                             std=STD, num_classes=NUM_CLASSES, block_nums=(2, 4))
  context = methods.StepContext(model, train.LOSS_FNS["bce_softmax"], NUM_CLASSES,
                                MEAN, STD)
  (loss, (new_stats, _)), grads = jax.jit(jax.value_and_grad(
      context.model_loss, has_aux=True))(params, stats, mixed.images, mixed.labels)
  tol = dict(rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol),
               (out.grads, out.batch_stats, out.metrics["loss"]),
               (grads, new_stats, loss))
  assert float(out.metrics["mix_label_weight"]) == pytest.approx(
      float(jnp.mean(mixed.lam)), abs=1e-6)
  assert float(out.metrics["block_num"]) in (2.0, 4.0)


def test_co_mixup_step_is_a_train_mode_clean_pass_plus_one_mixed_pass():
  # §4.1: the clean pass runs BN in train mode (running statistics updated)
  # and its (2/K)·CE parameter gradient is kept: the step's gradient is the
  # sum of both passes' gradients, the mixed pass continuing from the clean
  # pass's BN statistics.
  from sage_jax import augment
  import optax
  model, batch, variables = _tiny_setup()
  params, stats = variables["params"], variables["batch_stats"]
  key = jax.random.key(5)
  out = jax.jit(_step("co_mixup", model))(key, params, stats, batch)
  context = methods.StepContext(model, train.LOSS_FNS["bce_softmax"], NUM_CLASSES,
                                MEAN, STD)

  def clean_loss(params, images):
    logits, new_stats = context.apply_train(params, stats, images)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch.labels)
    return 2.0 / NUM_CLASSES * jnp.mean(ce), new_stats

  (clean, clean_stats), (clean_grads, input_grads) = jax.jit(jax.value_and_grad(
      clean_loss, argnums=(0, 1), has_aux=True))(params, batch.images)
  saliency = jnp.sqrt(jnp.mean(input_grads ** 2, axis=-1))
  mixed = augment.co_mixup(key, batch.images, batch.labels, saliency,
                           num_classes=NUM_CLASSES, chunk_size=2)
  (mix_loss, (new_stats, _)), mix_grads = jax.jit(jax.value_and_grad(
      context.model_loss, has_aux=True))(params, clean_stats, mixed.images,
                                         mixed.labels)
  grads = jax.tree.map(jnp.add, clean_grads, mix_grads)
  tol = dict(rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tol),
               (out.grads, out.batch_stats, out.metrics["loss"],
                out.metrics["clean_loss"]),
               (grads, new_stats, clean + mix_loss, clean))
  assert float(out.metrics["mix_label_weight"]) == pytest.approx(
      float(jnp.mean(mixed.lam)), abs=1e-6)
  assert 1.0 <= float(out.metrics["inputs_per_output"]) <= 2.0


def test_co_mixup_learning_rate_replaces_the_shared_one_only_when_set():
  config = tiny_config(method="co_mixup")
  assert train.base_learning_rate(config) == config.learning_rate == 0.2
  config.co_mixup.learning_rate = 0.12
  assert train.base_learning_rate(config) == 0.12
  assert float(train.learning_rate_schedule(config, 10)(0)) == pytest.approx(0.12)
  config.method = "sage"  # another method's block never applies
  assert train.base_learning_rate(config) == 0.2


def test_co_mixup_chunk_that_does_not_divide_the_shard_names_the_fix():
  model, batch, variables = _tiny_setup()  # 8 images on this device
  step = _step("co_mixup", model, **{"co_mixup.chunk_size": 20})
  with pytest.raises(ValueError, match=r"chunk_size=20 must divide the per-device "
                     r"batch 8 .*--config\.co_mixup\.chunk_size=8 or"):
    jax.jit(step)(jax.random.key(0), variables["params"],
                  variables["batch_stats"], batch)
