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

import functools
import json
import os
import queue
import shutil
import signal
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

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


def base_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The run's initial lr: the method block's `learning_rate` when it is
  > 0 (a method whose published lr differs on this dataset, e.g. Co-Mixup's
  0.12 on CIFAR-10, set by configs/cifar10.py), else `config.learning_rate`."""
  block = config.get(config.method)
  override = block.get("learning_rate", 0.0) if block is not None else 0.0
  return float(override) if override > 0 else float(config.learning_rate)


def learning_rate_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """Piecewise-constant lr from `base_learning_rate(config)`: ×lr_decay at
  each epoch of `lr_boundaries`."""
  boundaries = {int(round(epoch * steps_per_epoch)): config.lr_decay
                for epoch in config.lr_boundaries}
  return optax.piecewise_constant_schedule(base_learning_rate(config), boundaries)


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD (Nesterov) with weight decay added to the gradient, on all params."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay),
      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))


# --- The train step ----------------------------------------------------------------------


def make_train_step_body(method_step: methods.base.StepFn, tx, mean, std,
                         schedule, *, nonfinite_metric: bool = False) -> Callable:
  """Per-device train step: (state, images uint8, labels) -> (state, metrics).

  Written like a pmap body: it runs on one device's shard of the batch under
  `shard_map`. The method's step (`sage_jax.methods`) gives this device's
  gradient, BN statistics and metrics; the body averages the gradient across
  the 'data' axis, updates the parameters, and averages the metrics over
  devices, so they describe the global batch. Nothing here depends on which
  method runs.

  A step whose metrics, averaged gradient or updated parameters are not all
  finite leaves the parameters, optimizer state and BN statistics as they
  were (only `step` advances). With `nonfinite_metric` (the trainer sets it)
  the metrics also hold 'nonfinite': float32 0 for a normal step, else the
  `nonfinite_code` of what was not finite.
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
    # The metrics, the gradient and the new parameters are the same on every
    # device (after the pmeans), so every device takes the same decision
    # without another collective. A non-finite step keeps the old parameters,
    # optimizer state and BN statistics (only the step counter moves on), so
    # a NaN never reaches the state; the host reads `nonfinite` with the
    # other metrics and stops or counts the skip (`nonfinite_code`).
    code = nonfinite_code(metrics, grads, params)
    finite = code == 0
    keep_if_finite = lambda new, old: jax.tree.map(
        lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep_if_finite(params, state.params),
        opt_state=keep_if_finite(opt_state, state.opt_state),
        batch_stats=keep_if_finite(
            jax.tree.map(lambda x: x[None], out.batch_stats), state.batch_stats))
    if nonfinite_metric:
      metrics = dict(metrics, nonfinite=code)
    return new_state, metrics

  return body


# `nonfinite` metric values: what was found non-finite first.
NONFINITE_WHAT = {1.0: "a metric", 2.0: "the gradient", 3.0: "the updated parameters"}


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def nonfinite_code(metrics, grads, params) -> jax.Array:
  """float32 scalar: 0 when everything is finite, else 1 (a metric, e.g. the
  loss), 2 (the gradient) or 3 (the updated parameters), the first found."""
  return jnp.select(
      [~_all_finite(metrics), ~_all_finite(grads), ~_all_finite(params)],
      [jnp.float32(1), jnp.float32(2), jnp.float32(3)], jnp.float32(0))


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


# XLA:CPU compile options of `config.xla_cpu_eigen_convolutions`. jaxlib 0.10
# hands convolutions, dots and reductions to YNNPACK fusions by default; its
# convolutions (above all the weight gradients) are 2-4x slower than XLA's
# Eigen ones on x86, while its dots and reductions (the BatchNorm statistics)
# are faster than XLA's own. This list keeps YNNPACK for dots and reductions
# only (benchmarks/torch_cpu_bench.py times both settings side by side).
EIGEN_CONVOLUTION_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _cpu_accepts(options: tuple) -> bool:
  """Whether this jaxlib's CPU compiler knows every option (a newer or older
  XLA may rename them: the run then keeps XLA's defaults, with a warning)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(
        jnp.zeros((), jnp.float32)).compile()
    return True
  except Exception as error:  # pylint: disable=broad-except
    logging.warning("XLA:CPU does not accept %s (%s); keeping its defaults.",
                    dict(options), str(error).splitlines()[0])
    return False


def compiler_options(config, mesh) -> Optional[dict]:
  """The XLA compile options of the train and eval steps on `mesh`: the
  Eigen-convolution list on a CPU mesh when
  `config.xla_cpu_eigen_convolutions` (and this XLA accepts it), else None."""
  if not config.get("xla_cpu_eigen_convolutions", False):
    return None
  if any(device.platform != "cpu" for device in mesh.devices.flat):
    return None
  options = tuple(sorted(EIGEN_CONVOLUTION_OPTIONS.items()))
  return dict(options) if _cpu_accepts(options) else None


def make_train_step(body: Callable, mesh,
                    options: Optional[dict] = None) -> Callable:
  """jit(shard_map(body)) with the state donated, compiled with the XLA
  `options` (see `compiler_options`)."""
  # check_vma=False gives pmap semantics: the gradient of the replicated
  # params stays this device's own until the body's explicit pmean. (With
  # varying-axis checking on, differentiating w.r.t. a replicated input
  # inserts an implicit psum, which the explicit pmean would then double.)
  mapped = jax.shard_map(body, mesh=mesh,
                         in_specs=(_state_specs(), P(AXIS), P(AXIS)),
                         out_specs=(_state_specs(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=0, compiler_options=options)


def make_eval_step(model, loss_fn, num_classes, mean, std, mesh,
                   options: Optional[dict] = None) -> Callable:
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
  return jax.jit(mapped, compiler_options=options)


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
  state = jax.tree.map(_local_value, state)
  return state.replace(batch_stats=jax.tree.map(lambda x: x[0], state.batch_stats))


def _local_value(x) -> np.ndarray:
  """A host copy of `x`; for an array spanning other processes' devices (a
  multi-process run), this process's first shard: the whole value for a
  replicated array, device 0's copy (leading axis 1) for per-device ones."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(jax.device_get(x))


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
  body = make_train_step_body(method_step, tx, mean, std, schedule,
                              nonfinite_metric=True)
  options = compiler_options(config, mesh)
  return Components(model, schedule, tx, loss_fn,
                    make_train_step(body, mesh, options),
                    make_eval_step(model, loss_fn, num_classes, mean, std, mesh,
                                   options),
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


# --- Failures: what stops a run, and how ------------------------------------------------

# Fields a resumed run must share with the run that wrote the workdir (its
# config.json); everything else (steps, eval/checkpoint frequency, ...) may
# change between runs.
RESUME_FIXED_FIELDS = ("method", "model.name", "model.width", "dataset.name",
                       "batch_size")
PREEMPTION_DIRNAME = "preemption"


class NonFiniteError(FloatingPointError):
  """A train step's loss, metrics, gradient or parameters were not finite.

  Attributes:
    step: the (first) step concerned.
  """

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class WorkdirMismatchError(ValueError):
  """The workdir holds a run with other settings than the requested one."""


class Preempted(Exception):
  """SIGTERM/SIGINT stopped training after saving a checkpoint.

  Rerunning the same command resumes from `step` exactly.

  Attributes:
    step: the step saved.
    signal_name: e.g. "SIGTERM".
  """

  def __init__(self, step: int, signal_name: str, workdir: str):
    super().__init__(
        f"{signal_name}: stopped after step {step} and saved it in "
        f"{os.path.join(workdir, 'checkpoints')}; rerun the same command to "
        "resume.")
    self.step = step
    self.signal_name = signal_name


def _field(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if not isinstance(node, (dict, ml_collections.ConfigDict)) or part not in node:
      return None
    node = node[part]
  return node


def check_resume_config(config, workdir: str) -> None:
  """Stops a resume whose config differs from the workdir's in a fixed field.

  Compares `RESUME_FIXED_FIELDS` with `<workdir>/config.json` (written by
  the run that made the checkpoints); nothing to compare when it is absent.

  Raises:
    WorkdirMismatchError: listing each differing field with the saved and the
      requested value, and the two ways out.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as error:
    logging.warning("Cannot read %s (%s); not comparing the configs.", path,
                    error)
    return
  saved_dir = _field(saved, "dataset.data_dir")
  if saved_dir is not None and saved_dir != config.dataset.data_dir:
    # Data may move between machines; the fixed fields and the checkpoint's
    # shapes (number of classes) still guard against another dataset.
    logging.warning("config.dataset.data_dir is %r; the run in %s used %r.",
                    config.dataset.data_dir, workdir, saved_dir)
  differences = [(field, _field(saved, field), _field(config, field))
                 for field in RESUME_FIXED_FIELDS]
  differences = [(f, a, b) for f, a, b in differences
                 if a is not None and a != b]
  if not differences:
    return
  lines = "; ".join(f"config.{f}: saved {a!r}, requested {b!r}"
                    for f, a, b in differences)
  same = " ".join(f"--config.{f}={a}" for f, a, _ in differences)
  raise WorkdirMismatchError(
      f"The workdir {workdir} holds checkpoints of a run with other settings "
      f"({lines}). Either resume that run with its settings ({same}), or "
      "pass a new --workdir to start this one. (May change on resume: "
      "num_epochs, num_train_steps, eval/checkpoint/log frequency, ...)")


def _describe_nonfinite(code: float, metrics: dict) -> str:
  """e.g. "the metric 'loss' (nan)" for a step's host metrics."""
  if code == 1.0:
    names = ["loss"] + sorted(k for k in metrics if k not in ("loss", "nonfinite"))
    for name in names:
      if name in metrics and not np.isfinite(metrics[name]):
        return f"the metric {name!r} ({metrics[name]})"
  return NONFINITE_WHAT.get(code, "a value")


class _StopSignals:
  """SIGTERM and SIGINT -> finish the current step, save, stop.

  One process: a handler records the first signal (later ones are counted
  and otherwise ignored, so a second Ctrl-C cannot interrupt the save). Several
  processes: they must stop at the same step, so SIGTERM is left to JAX's
  preemption service (`reached_preemption_sync_point`, which agrees on a
  step across processes) and SIGINT is forwarded to it as a SIGTERM.
  Handlers are installed only in the main thread, and `close` restores the
  previous ones.
  """

  def __init__(self, enabled: bool):
    self.signal_name = None
    self.count = 0
    self._previous = {}
    self._multi_process = jax.process_count() > 1
    if not enabled or threading.current_thread() is not threading.main_thread():
      return
    for signum in (signal.SIGTERM, signal.SIGINT):
      if self._multi_process and signum == signal.SIGTERM:
        continue
      self._previous[signum] = signal.signal(signum, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    # Only records: the loop logs and acts between steps.
    self.count += 1
    if self.signal_name is None:
      self.signal_name = signal.Signals(signum).name
      if self._multi_process:
        os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, step: int) -> bool:
    """Whether to stop after `step`; every process gets the same answer."""
    if self._multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        stop = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # The preemption service is disabled.
        return False
      if stop and self.signal_name is None:
        self.signal_name = "SIGTERM"
      return stop
    return self.signal_name is not None

  def close(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}


def _preemption_paths(workdir: str, step: int) -> tuple:
  directory = os.path.join(workdir, PREEMPTION_DIRNAME)
  return (directory,
          os.path.join(directory, f"step_{step}.process_{jax.process_index()}.npz"),
          os.path.join(directory, f"step_{step}.metrics.json"))


def _local_mesh_devices(mesh) -> list:
  return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def _save_preemption_extras(workdir: str, step: int, state: TrainState, mesh,
                            window: list) -> None:
  """What a checkpoint lacks for an exact resume mid-way between averaging
  points: each device's own BN running statistics (the checkpoint holds
  their mean) and the metrics of the log window so far. Written before the
  checkpoint, atomically; a resume from another step ignores them."""
  directory, stats_path, metrics_path = _preemption_paths(workdir, step)
  os.makedirs(directory, exist_ok=True)
  for name in os.listdir(directory):  # Older preemptions' files.
    if not name.startswith(f"step_{step}."):
      if jax.process_index() == 0 or f"process_{jax.process_index()}." in name:
        try:
          os.remove(os.path.join(directory, name))
        except FileNotFoundError:
          pass
  local = _local_mesh_devices(mesh)
  arrays = {"device_ids": np.asarray([d.id for d in local])}
  for index, leaf in enumerate(jax.tree.leaves(state.batch_stats)):
    by_device = {shard.device.id: np.asarray(shard.data)
                 for shard in leaf.addressable_shards}
    arrays[f"leaf_{index}"] = np.concatenate([by_device[d.id] for d in local])
  tmp = stats_path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, stats_path)
  if jax.process_index() == 0:
    tmp = metrics_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"step": step, "window": window}, f)
    os.replace(tmp, metrics_path)


def _load_preemption_extras(workdir: str, step: int, batch_stats, mesh):
  """(per-device BN leaves or None, metric window or []) saved at `step`."""
  _, stats_path, metrics_path = _preemption_paths(workdir, step)
  leaves, window = None, []
  if os.path.exists(stats_path):
    local = _local_mesh_devices(mesh)
    try:
      with np.load(stats_path) as saved:
        templates = jax.tree.leaves(batch_stats)
        loaded = [saved[f"leaf_{i}"] for i in range(len(templates))]
        same_devices = list(saved["device_ids"]) == [d.id for d in local]
      if same_devices and all(
          x.shape == (len(local),) + np.shape(t) for x, t in zip(loaded, templates)):
        leaves = loaded
      else:
        logging.warning("%s was written on other devices; resuming with the "
                        "devices' mean BN statistics (not bit-exact).", stats_path)
    except (OSError, ValueError, KeyError) as error:
      logging.warning("Cannot read %s (%s); resuming with the devices' mean BN "
                      "statistics (not bit-exact).", stats_path, error)
  if os.path.exists(metrics_path):
    try:
      with open(metrics_path) as f:
        window = json.load(f)["window"]
    except (OSError, ValueError, KeyError) as error:
      logging.warning("Cannot read %s (%s).", metrics_path, error)
  return leaves, window


def _with_device_batch_stats(state: TrainState, leaves, mesh) -> TrainState:
  """`state` with its per-device BN statistics set from host rows (this
  process's devices, in mesh order)."""
  local = _local_mesh_devices(mesh)
  sharding = NamedSharding(mesh, P(AXIS))
  arrays = [jax.make_array_from_single_device_arrays(
      (mesh.devices.size,) + rows.shape[1:], sharding,
      [jax.device_put(rows[i:i + 1], d) for i, d in enumerate(local)])
            for rows in leaves]
  treedef = jax.tree.structure(state.batch_stats)
  return state.replace(batch_stats=jax.tree.unflatten(treedef, arrays))


# --- The loop ----------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       handle_signals: bool = True) -> dict:
  """Trains per `config`, evaluating and checkpointing in `workdir`.

  Resumes automatically from the latest intact checkpoint in `workdir`.
  Writes `metrics.jsonl`, TensorBoard summaries and, at the end,
  `summary.json` with the best and median-of-last-10 test accuracy.

  What stops a run, and how (nothing is lost in any case):

  * A step with a non-finite loss, metric, gradient or parameter never
    updates the state. `config.nonfinite="stop"`: NonFiniteError naming the
    step, the method and what was not finite; nothing after it is saved, so
    the latest checkpoint is the last good one. "skip": the step is skipped
    and counted (`skipped_steps` in the train records); NonFiniteError after
    `nonfinite_max_skips` in a row. Checked on the host where it reads the
    metrics anyway (log, eval and checkpoint steps).
  * SIGTERM/SIGINT (`handle_signals`, main thread only): the current step
    finishes, is saved (with what an exact resume needs) and Preempted is
    raised; rerunning resumes bit-exactly.
  * A broken latest checkpoint: a warning naming it, it is moved to
    `checkpoints/broken/`, and training resumes from the newest intact one.

  Returns:
    The summary dict.

  Raises:
    ValueError: on an invalid config (naming the field), or a batch size
      not divisible by the device count.
    WorkdirMismatchError: `workdir` holds a run of another method, model,
      dataset or batch size.
    FileNotFoundError: when the dataset is not available offline.
    NonFiniteError, Preempted: see above.
    checkpointing.CheckpointError: no checkpoint in `workdir` can be read.
  """
  config_lib.validate_config(config)
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    if checkpointer.all_steps():
      check_resume_config(config, workdir)
    return _train(config, workdir, checkpointer, handle_signals)
  finally:
    # Also on an interruption: let a pending asynchronous save finish, so that
    # the checkpoint directory is never left half-written by this process.
    checkpointer.close()


def _train(config, workdir: str, checkpointer, handle_signals: bool) -> dict:
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

  state = jax.device_get(jax.jit(
      lambda: init_state(config, parts.model, parts.tx, info.image_shape))())
  if checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    if checkpointer.broken_steps:
      checkpointer.set_aside_broken()
    logging.info("Resumed from step %d in %s", int(state.step), workdir)
  start_step = int(state.step)
  device_stats, window = (None, [])
  if start_step:
    device_stats, window = _load_preemption_extras(
        workdir, start_step, state.batch_stats, mesh)
  state = to_device_state(state, mesh)
  if device_stats is not None:
    state = _with_device_batch_stats(state, device_stats, mesh)
    logging.info("Resumed the devices' own BN statistics of step %d.", start_step)

  writer = metrics_lib.MetricWriter(workdir, resume_step=start_step,
                                    enabled=is_chief)
  if is_chief:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  logging.info("%s: %s on %s, %d steps (%d per epoch), %d devices, from step %d",
               config.method, config.model.name, config.dataset.name, total_steps,
               steps_per_epoch, len(devices), start_step)

  skip = config.nonfinite == "skip"
  # Host copies of the metrics of the steps since the last train record
  # (`window`, carried over a preemption) and the device metrics not yet
  # checked for non-finite values (`unchecked`).
  unchecked: list = []
  consecutive_skips = 0
  last_saved = checkpointer.latest_step()

  def check_nonfinite() -> None:
    """Fetches the unchecked steps' metrics: the one host read per window."""
    nonlocal consecutive_skips
    fetched = jax.device_get([m for _, m in unchecked])  # one transfer
    for (step, _), host_metrics in zip(unchecked, fetched):
      host = {k: float(v) for k, v in host_metrics.items()}
      window.append(host)
      code = host["nonfinite"]
      if not code:
        consecutive_skips = 0
        continue
      what = _describe_nonfinite(code, host)
      saved = (f"checkpoint {last_saved} in {checkpointer.directory} is the "
               "latest and rerunning resumes from it" if last_saved is not None
               else "no checkpoint was written, so rerunning starts from step 0")
      fix = ("Lower config.learning_rate (the learning rate of step "
             f"{step} was {host.get('learning_rate', float('nan')):g}) or check "
             "the data")
      if not skip:
        raise NonFiniteError(
            f"Step {step} of {config.method} ({config.model.name} on "
            f"{config.dataset.name}) is not finite: {what}. Nothing after the "
            f"last good checkpoint was saved: {saved}. {fix}; or pass "
            "--config.nonfinite=skip to skip such steps.", step)
      consecutive_skips += 1
      logging.warning("Step %d skipped: %s is not finite.", step, what)
      if consecutive_skips >= config.nonfinite_max_skips:
        raise NonFiniteError(
            f"{consecutive_skips} steps in a row (to step {step}) of "
            f"{config.method} were not finite ({what}) and were skipped "
            f"(config.nonfinite_max_skips={config.nonfinite_max_skips}); "
            f"{saved}. {fix}.", step)
    unchecked.clear()

  def train_record() -> dict:
    """The window's mean metrics (skip mode: over the steps not skipped)."""
    used = [m for m in window if not m["nonfinite"]] if skip else window
    keys = [k for k in window[0] if k != "nonfinite"]
    # All skipped: the mean over them (NaN losses, but a learning rate).
    record = {k: float(np.mean([m[k] for m in used or window])) for k in keys}
    if skip:
      record["skipped_steps"] = len(window) - len(used)
    return record

  stops = _StopSignals(handle_signals)
  progress = metrics_lib.ProgressBar(total_steps, start_step, enabled=is_chief)
  batches = prefetch(train_iterator(data, config, start_step, steps_per_epoch))
  try:
    # Steps/s counts only the steps timed since `window_start` (eval and
    # checkpoint time excluded).
    window_start, window_steps = time.perf_counter(), 0
    for step in range(start_step + 1, total_steps + 1):
      images, labels = _global_batch(next(batches), batch_sharding)
      state, step_metrics = parts.train_step(state, images, labels)
      unchecked.append((step, step_metrics))
      window_steps += 1
      last = step == total_steps
      log_now = step % config.log_every_steps == 0 or last
      evaluate_now = step % eval_every == 0 or last
      checkpoint_now = step % checkpoint_every == 0 or last
      stop_now = not last and stops.should_stop(step)
      if log_now or evaluate_now or checkpoint_now or stop_now:
        check_nonfinite()
      if log_now:
        record = train_record()
        record["steps_per_second"] = window_steps / (time.perf_counter() - window_start)
        writer.write({"step": step, "epoch": step / steps_per_epoch, "split": "train",
                      **record})
        progress.update(step, record)
        window.clear()
        window_start, window_steps = time.perf_counter(), 0
      else:
        progress.update(step)
      if evaluate_now or checkpoint_now:
        # Same averaging points in every run => a resumed run stays exact.
        state = parts.average_batch_stats(state)
      if evaluate_now:
        result = evaluate(parts.eval_step, state, data, config, batch_sharding)
        writer.write({"step": step, "epoch": step / steps_per_epoch, "split": "test",
                      "learning_rate": float(schedule(step - 1)), **result})
        progress.update(step, {"test_accuracy": result["accuracy"]})
      if stop_now and not checkpoint_now:
        # The checkpoint needs the devices' mean BN statistics, an averaging
        # an uninterrupted run does not do here: keep each device's own for
        # the resumed run first.
        _save_preemption_extras(workdir, step, state, mesh, window)
        state = parts.average_batch_stats(state)
      if checkpoint_now or stop_now:
        checkpointer.save(step, to_checkpoint_state(state))
        last_saved = step
      if stop_now:
        checkpointer.wait()
        logging.warning("%s received: saved step %d; rerun the same command to "
                        "resume.", stops.signal_name, step)
        raise Preempted(step, stops.signal_name, workdir)
      if evaluate_now or checkpoint_now:
        jax.block_until_ready(state)
        window_start, window_steps = time.perf_counter(), 0
  finally:
    batches.close()
    progress.close()
    # Waits for a save in flight (a second signal meanwhile is only counted).
    checkpointer.wait()
    writer.close()
    stops.close()

  if is_chief:
    shutil.rmtree(os.path.join(workdir, PREEMPTION_DIRNAME), ignore_errors=True)
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
