"""Training and evaluation: `train_and_evaluate(config, workdir)`.

One train step for every method, written as the per-device body of a
data-parallel program: each device runs the configured method
(`sage_jax.methods`) on its own shard (pairs are formed within the shard),
then the gradients are averaged with `lax.pmean` over the 'data' axis. The body is mapped with
`jax.shard_map` over a 1-D device mesh inside `jax.jit`; the train state is
donated.

BatchNorm running statistics are kept per device (a leading device axis,
sharded over 'data') unless `cross_device_batch_norm`; they are averaged
across devices before every evaluation and checkpoint, in the same way in an
uninterrupted and a resumed run, so resuming is exact.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sage_jax import checkpointing
from sage_jax import config as config_lib
from sage_jax import input_pipeline
from sage_jax import losses
from sage_jax import methods
from sage_jax import metrics as metrics_lib
from sage_jax import models

AXIS = "data"


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue exactly.

  Attributes:
    step: int32 scalar, number of steps taken.
    params: model parameters (replicated).
    batch_stats: BatchNorm running statistics. While training, every leaf
      has a leading device axis (one copy per device); in checkpoints it has
      none (the average over devices).
    opt_state: optax state.
    rng: uint32 key data of the run's base PRNG key; step `s` on device `d`
      uses fold_in(fold_in(key, s), d).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


# --- Losses (defined in `sage_jax.losses`, re-exported for existing callers) ----------

bce_softmax_loss = losses.bce_softmax_loss
softmax_xent_loss = losses.softmax_xent_loss
LOSS_FNS = losses.LOSS_FNS


# --- Optimizer -------------------------------------------------------------------------


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """Piecewise-constant lr: ×lr_decay at each epoch of `lr_boundaries`."""
  boundaries = {int(round(epoch * steps_per_epoch)): config.lr_decay
                for epoch in config.lr_boundaries}
  return optax.piecewise_constant_schedule(config.learning_rate, boundaries)


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD (Nesterov) with weight decay added to the gradient, on all params."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))


# --- The train step ----------------------------------------------------------------------


def make_train_step_body(method_step: methods.base.StepFn, tx, mean, std,
                         schedule) -> Callable:
  """Per-device train step: (state, images uint8, labels) -> (state, metrics).

  Written like a pmap body: it runs on one device's shard of the batch under
  `shard_map`. The method's step (`sage_jax.methods`) gives this device's
  gradient, BN statistics and metrics; the body averages the gradient across
  the 'data' axis, updates the parameters, and averages the metrics over
  devices, so they describe the global batch. Nothing here depends on which
  method runs.
  """

  def body(state: TrainState, images_uint8, labels):
    # Leading device axis of size 1 on each device; the method works without it.
    batch_stats = jax.tree.map(lambda x: x[0], state.batch_stats)
    key = jax.random.wrap_key_data(state.rng)
    key = jax.random.fold_in(jax.random.fold_in(key, state.step),
                             jax.lax.axis_index(AXIS))
    batch = methods.Batch(input_pipeline.normalize(images_uint8, mean, std),
                          images_uint8, labels)
    out = method_step(key, state.params, batch_stats, batch)

    grads = jax.lax.pmean(out.grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(out.metrics, learning_rate=schedule(state.step))
    metrics = jax.lax.pmean(metrics, AXIS)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        batch_stats=jax.tree.map(lambda x: x[None], out.batch_stats))
    return new_state, metrics

  return body


def make_method_step(config, model, loss_fn, num_classes: int, mean,
                     std) -> methods.base.StepFn:
  """The per-device step of `config.method`, configured by its config block."""
  method = methods.get_method(config.method)
  context = methods.StepContext(model=model, loss_fn=loss_fn,
                                num_classes=num_classes, mean=tuple(mean),
                                std=tuple(std))
  return method.make_step(context, config.get(method.name))


def _state_specs() -> TrainState:
  """shard_map specs: everything replicated except the per-device BN stats."""
  return TrainState(step=P(), params=P(), batch_stats=P(AXIS), opt_state=P(),
                    rng=P())


def make_train_step(body: Callable, mesh) -> Callable:
  """jit(shard_map(body)) with the state donated."""
  # check_vma=False gives pmap semantics: the gradient of the replicated
  # params stays this device's own until the body's explicit pmean. (With
  # varying-axis checking on, differentiating w.r.t. a replicated input
  # inserts an implicit psum, which the explicit pmean would then double.)
  mapped = jax.shard_map(body, mesh=mesh,
                         in_specs=(_state_specs(), P(AXIS), P(AXIS)),
                         out_specs=(_state_specs(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=0)


def make_eval_step(model, loss_fn, num_classes, mean, std, mesh) -> Callable:
  """Sums of loss, correct predictions and examples over a padded batch."""

  def body(params, batch_stats, images_uint8, labels, mask):
    images = input_pipeline.normalize(images_uint8, mean, std)
    logits = model.apply({"params": params, "batch_stats": batch_stats}, images,
                         train=False)
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    per_example = jax.vmap(lambda l, t: loss_fn(l[None], t[None]))(logits, targets)
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    sums = {"loss": jnp.sum(per_example * mask), "correct": jnp.sum(correct * mask),
            "count": jnp.sum(mask)}
    return jax.lax.psum(sums, AXIS)

  mapped = jax.shard_map(body, mesh=mesh,
                         in_specs=(P(), P(), P(AXIS), P(AXIS), P(AXIS)),
                         out_specs=P())
  return jax.jit(mapped)


# --- State placement -------------------------------------------------------------------


def make_average_batch_stats(mesh) -> Callable[[TrainState], TrainState]:
  """state -> state with each device's BN running statistics replaced by
  their mean over devices (one all-reduce, only at eval/checkpoint time)."""
  mean_over_devices = jax.shard_map(
      lambda stats: jax.lax.pmean(stats, AXIS), mesh=mesh, in_specs=P(AXIS),
      out_specs=P(AXIS))

  def average(state: TrainState) -> TrainState:
    return state.replace(batch_stats=mean_over_devices(state.batch_stats))

  return jax.jit(average, donate_argnums=0)


def to_device_state(state: TrainState, mesh) -> TrainState:
  """Checkpoint layout -> training layout (per-device BN copies, sharded)."""
  num_devices = mesh.devices.size
  replicated = NamedSharding(mesh, P())
  stacked = NamedSharding(mesh, P(AXIS))
  state = state.replace(batch_stats=jax.tree.map(
      lambda x: np.broadcast_to(np.asarray(x)[None], (num_devices,) + np.shape(x)),
      state.batch_stats))
  shardings = TrainState(
      step=replicated, params=jax.tree.map(lambda _: replicated, state.params),
      batch_stats=jax.tree.map(lambda _: stacked, state.batch_stats),
      opt_state=jax.tree.map(lambda _: replicated, state.opt_state), rng=replicated)
  return jax.tree.map(
      lambda x, s: jax.make_array_from_callback(
          np.shape(x), s, lambda index, x=x: np.asarray(x)[index]), state, shardings)


def to_checkpoint_state(state: TrainState) -> TrainState:
  """Training layout -> checkpoint layout (host numpy, one BN copy).

  Call after `average_batch_stats`: every device then holds the same
  statistics and device 0's copy is taken bit for bit (re-averaging identical
  float32 copies on the host could change the last bit and break exact
  resumption).
  """
  state = jax.device_get(state)
  return state.replace(batch_stats=jax.tree.map(lambda x: x[0], state.batch_stats))


def init_state(config, model, tx, image_shape) -> TrainState:
  """A fresh state in checkpoint layout (traceable: works under eval_shape)."""
  init_key, run_key = jax.random.split(jax.random.key(config.seed))
  variables = model.init(init_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32),
                         train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=tx.init(params), rng=jax.random.key_data(run_key))


class Components(NamedTuple):
  """The compiled-program pieces of a run, built from the config."""
  model: Any
  schedule: optax.Schedule
  tx: optax.GradientTransformation
  loss_fn: Callable
  train_step: Callable      # (state, images, labels) -> (state, metrics)
  eval_step: Callable       # (params, batch_stats, images, labels, mask) -> sums
  average_batch_stats: Callable


def create_components(config, mesh, *, num_classes: int, mean, std,
                      steps_per_epoch: int) -> Components:
  """Model, optimizer and the data-parallel train/eval steps on `mesh`."""
  model = models.create_model(
      config.model.name, num_classes=num_classes, width=config.model.width or None,
      dtype=jnp.bfloat16 if config.half_precision else jnp.float32,
      bn_axis_name=AXIS if config.cross_device_batch_norm else None)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  tx = create_optimizer(config, schedule)
  loss_fn = LOSS_FNS[config.loss]
  method_step = make_method_step(config, model, loss_fn, num_classes, mean, std)
  body = make_train_step_body(method_step, tx, mean, std, schedule)
  return Components(model, schedule, tx, loss_fn, make_train_step(body, mesh),
                    make_eval_step(model, loss_fn, num_classes, mean, std, mesh),
                    make_average_batch_stats(mesh))


def lower_train_step(config, mesh, *, num_classes: int, image_shape,
                     steps_per_epoch: int = 100):
  """The train step lowered for abstract inputs (no data, no init compute).

  For inspecting the compiled program, e.g. counting its collectives:
  `lower_train_step(...).compile().as_text()`.
  """
  channels = image_shape[-1]
  parts = create_components(config, mesh, num_classes=num_classes,
                            mean=(0.5,) * channels, std=(0.25,) * channels,
                            steps_per_epoch=steps_per_epoch)
  state = jax.eval_shape(lambda: init_state(config, parts.model, parts.tx, image_shape))
  num_devices = mesh.devices.size
  replicated, stacked = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                      sharding=replicated), state)
  state = state.replace(batch_stats=jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((num_devices,) + x.shape, x.dtype,
                                     sharding=stacked), state.batch_stats))
  batch = config.batch_size
  images = jax.ShapeDtypeStruct((batch,) + tuple(image_shape), jnp.uint8,
                                sharding=stacked)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=stacked)
  return parts.train_step.lower(state, images, labels)


def restore_variables(config, workdir: str, model, tx, image_shape,
                      step: int | None = None) -> tuple:
  """(params, batch_stats, step) of a run's checkpoint, as host arrays.

  Opens `<workdir>/checkpoints` read-only, so it is safe while the run is
  still training. The checkpoint's batch_stats are the average over devices.

  Args:
    config, model, tx, image_shape: those of the run (they fix the tree).
    step: the checkpoint to restore; None for the latest.

  Raises:
    FileNotFoundError: `workdir` has no checkpoint (or none for `step`).
  """
  # Shapes and dtypes are all a restore target needs.
  target = jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype),
      jax.eval_shape(lambda: init_state(config, model, tx, image_shape)))
  with checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  read_only=True) as checkpointer:
    state = checkpointer.restore(target, step=step)
  return state.params, state.batch_stats, int(state.step)


# --- Input feeding ------------------------------------------------------------------------


def _global_batch(batch: dict, sharding) -> tuple:
  """This process's rows -> global jax.Arrays sharded over 'data'."""
  return tuple(jax.make_array_from_process_local_data(sharding, batch[k])
               for k in ("image", "label"))


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """Runs `iterator` in a background thread, `size` items ahead.

  Closing (or garbage-collecting) the returned generator stops the thread.
  """
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def worker():
    try:
      for item in iterator:
        if not put(item):
          return
      put(done)
    except BaseException as error:  # re-raised in the consumer
      put(error)

  threading.Thread(target=worker, daemon=True).start()
  try:
    while True:
      item = items.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def train_iterator(data: input_pipeline.InMemoryDataset, config, start_step: int,
                   steps_per_epoch: int) -> Iterator[dict]:
  """Batches from global step `start_step` on, epoch after epoch."""
  epoch, batch = divmod(start_step, steps_per_epoch)
  while True:
    yield from input_pipeline.train_batches(
        data.train_images, data.train_labels, global_batch_size=config.batch_size,
        seed=config.seed, epoch=epoch, start_batch=batch,
        process_index=jax.process_index(), process_count=jax.process_count())
    epoch, batch = epoch + 1, 0


# --- The loop -----------------------------------------------------------------------------


def _check_divisible(config, num_devices: int, num_train: int):
  for field in ("batch_size", "eval_batch_size"):
    value = config[field]
    if value % num_devices:
      raise ValueError(
          f"config.{field}={value} must be divisible by the number of devices "
          f"({num_devices}); use e.g. {max(num_devices, value // num_devices * num_devices)}.")
  if config.batch_size > num_train:
    raise ValueError(f"config.batch_size={config.batch_size} exceeds the "
                     f"{num_train} training examples.")


def _select_devices(num_devices: int) -> list:
  devices = jax.devices()
  if num_devices > len(devices):
    raise ValueError(f"config.num_devices={num_devices} but only {len(devices)} "
                     "devices are available.")
  return devices[:num_devices] if num_devices else devices


def evaluate(eval_step, state: TrainState, data, config, sharding) -> dict:
  """Test loss and accuracy with the devices' averaged running statistics."""
  params = state.params
  batch_stats = jax.tree.map(lambda x: x[0], state.batch_stats)  # averaged
  totals = {"loss": 0.0, "correct": 0.0, "count": 0.0}
  for batch in input_pipeline.eval_batches(
      data.test_images, data.test_labels, global_batch_size=config.eval_batch_size,
      process_index=jax.process_index(), process_count=jax.process_count()):
    arrays = [jax.make_array_from_process_local_data(sharding, batch[k])
              for k in ("image", "label", "mask")]
    sums = eval_step(params, batch_stats, *arrays)
    for k in totals:
      totals[k] += float(sums[k])
  return {"loss": totals["loss"] / totals["count"],
          "accuracy": totals["correct"] / totals["count"]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains per `config`, evaluating and checkpointing in `workdir`.

  Resumes automatically from the latest checkpoint in `workdir`. Writes
  `metrics.jsonl`, TensorBoard summaries and, at the end, `summary.json`
  with the best and median-of-last-10 test accuracy.

  Returns:
    The summary dict.

  Raises:
    ValueError: on an invalid config (naming the field), or a batch size
      not divisible by the device count.
    FileNotFoundError: when the dataset is not available offline.
  """
  config_lib.validate_config(config)
  data = input_pipeline.load_dataset(config.dataset.name,
                                     config.dataset.data_dir or None)
  info = data.info
  devices = _select_devices(config.num_devices)
  _check_divisible(config, len(devices), info.num_train)
  mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
  batch_sharding = NamedSharding(mesh, P(AXIS))
  is_chief = jax.process_index() == 0

  steps_per_epoch = input_pipeline.steps_per_epoch(info.num_train, config.batch_size)
  total_steps = (config.num_train_steps if config.num_train_steps > 0
                 else config.num_epochs * steps_per_epoch)
  eval_every = (config.eval_every_steps if config.eval_every_steps > 0
                else steps_per_epoch)
  checkpoint_every = (config.checkpoint_every_steps
                      if config.checkpoint_every_steps > 0 else steps_per_epoch)

  parts = create_components(config, mesh, num_classes=info.num_classes,
                            mean=info.mean, std=info.std,
                            steps_per_epoch=steps_per_epoch)
  schedule = parts.schedule

  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  state = jax.device_get(jax.jit(
      lambda: init_state(config, parts.model, parts.tx, info.image_shape))())
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    logging.info("Resumed from step %d in %s", int(state.step), workdir)
  start_step = int(state.step)
  state = to_device_state(state, mesh)

  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step,
                                    enabled=is_chief)
  if is_chief:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("%s: %s on %s, %d steps (%d per epoch), %d devices, from step %d",
               config.method, config.model.name, config.dataset.name, total_steps,
               steps_per_epoch, len(devices), start_step)

  progress = metrics_lib.ProgressBar(total_steps, start_step, enabled=is_chief)
  batches = prefetch(train_iterator(data, config, start_step, steps_per_epoch))
  try:
    # Steps/s counts only the steps timed since `window_start` (eval and
    # checkpoint time excluded).
    pending, window_start, window_steps = [], time.perf_counter(), 0
    for step in range(start_step + 1, total_steps + 1):
      images, labels = _global_batch(next(batches), batch_sharding)
      state, step_metrics = parts.train_step(state, images, labels)
      pending.append(step_metrics)
      window_steps += 1
      last = step == total_steps
      if step % config.log_every_steps == 0 or last:
        record = {k: float(np.mean([float(m[k]) for m in pending])) for k in pending[0]}
        record["steps_per_second"] = window_steps / (time.perf_counter() - window_start)
        writer.write({"step": step, "epoch": step / steps_per_epoch, "split": "train",
                      **record})
        progress.update(step, record)
        pending, window_start, window_steps = [], time.perf_counter(), 0
      else:
        progress.update(step)
      evaluate_now = step % eval_every == 0 or last
      checkpoint_now = step % checkpoint_every == 0 or last
      if evaluate_now or checkpoint_now:
        # Same averaging points in every run => a resumed run stays exact.
        state = parts.average_batch_stats(state)
      if evaluate_now:
        result = evaluate(parts.eval_step, state, data, config, batch_sharding)
        writer.write({"step": step, "epoch": step / steps_per_epoch, "split": "test",
                      "learning_rate": float(schedule(step - 1)), **result})
        progress.update(step, {"test_accuracy": result["accuracy"]})
      if checkpoint_now:
        checkpointer.save(step, to_checkpoint_state(state))
      if evaluate_now or checkpoint_now:
        jax.block_until_ready(state)
        window_start, window_steps = time.perf_counter(), 0
  finally:
    # Also on an interruption: let a pending asynchronous save finish, so that
    # the checkpoint directory is never left half-written by this process.
    batches.close()
    progress.close()
    checkpointer.close()
    writer.close()

  summary = metrics_lib.summarize(metrics_lib.read_metrics(workdir))
  summary.update(method=config.method, model=config.model.name,
                 dataset=config.dataset.name, total_steps=total_steps)
  if is_chief:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    logging.info("Summary: %s", summary)
    try:
      from sage_jax import curves  # pylint: disable=g-import-not-at-top
      curves.write_curves(
          [workdir], os.path.join(workdir, "curves.png"),
          title=f"{config.method}: {config.model.name} on {config.dataset.name}")
    except Exception as error:  # pylint: disable=broad-except
      # A plotting problem must never fail a finished run.
      logging.warning("Could not write %s/curves.png: %s", workdir, error)
    print(f"best test accuracy {summary['best_test_accuracy']:.4f} (step "
          f"{summary['best_test_step']}), median of last 10 "
          f"{summary['median_last10_test_accuracy']:.4f}")
  return summary
