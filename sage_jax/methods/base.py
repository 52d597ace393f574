"""The interface every training method implements.

A method owns the part of a train step that differs between methods: from the
model, this device's shard of the batch and a PRNG key, it produces this
device's parameter gradient, the BatchNorm statistics after its forward
passes, and its metrics. The train step (`sage_jax.train`) does everything
else the same way for every method: folding the key with the step and the
device, normalising the batch, the gradient all-reduce, the optimizer update
and averaging the metrics over devices. A method does no cross-device
communication, so pairs are formed within each device's shard.

A method is a `Method` value registered in `sage_jax.methods.REGISTRY`. Its
hyperparameters live in the config block `config.<name>` (built from
`default_config`, validated with `config_rules`).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections


class Batch(NamedTuple):
  """One device's shard of a training batch.

  Attributes:
    images: float32 (B, H, W, C), normalised with the dataset mean and std.
    images_uint8: uint8 (B, H, W, C), the same images as stored (pixel space).
    labels: int32 (B,) class indices.
  """
  images: jax.Array
  images_uint8: jax.Array
  labels: jax.Array


class StepOutput(NamedTuple):
  """What a method's step returns (a pytree).

  Attributes:
    grads: this device's gradient, same structure as the params (not yet
      averaged over devices).
    batch_stats: BatchNorm running statistics after the method's passes.
    metrics: dict of float32 scalars; always 'loss' (the objective whose
      gradient `grads` is) and 'accuracy' (of the logits on each image's own
      label), plus method-specific entries. The keys are fixed per method.
  """
  grads: Any
  batch_stats: Any
  metrics: dict


@dataclasses.dataclass(frozen=True)
class StepContext:
  """What a method's step is built from (static, shared by all methods).

  Attributes:
    model: a flax linen module, `model.apply(variables, x, train=...,
      mutable=['batch_stats'])` (see `sage_jax.models`).
    loss_fn: the configured training loss, `loss_fn(logits (B, K), targets
      float (B, K)) -> scalar` (a `sage_jax.losses.LOSS_FNS` value).
    num_classes: K.
    mean, std: per-channel normalisation of the dataset (pixel values in
      [0, 1]), for methods that need pixel space.
  """
  model: Any
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
  num_classes: int
  mean: tuple
  std: tuple

  def apply_train(self, params, batch_stats, images, **model_kwargs):
    """Train-mode forward: (logits (B, K), updated batch_stats)."""
    logits, updates = self.model.apply(
        {"params": params, "batch_stats": batch_stats}, images, train=True,
        mutable=["batch_stats"], **model_kwargs)
    return logits, updates["batch_stats"]

  def model_loss(self, params, batch_stats, images, targets, **model_kwargs):
    """(loss, (updated batch_stats, logits)): the signature `jax.grad` needs."""
    logits, batch_stats = self.apply_train(params, batch_stats, images,
                                           **model_kwargs)
    return self.loss_fn(logits, targets), (batch_stats, logits)

  def one_hot(self, labels: jax.Array) -> jax.Array:
    return jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)


# step(key, params, batch_stats, batch) -> StepOutput
StepFn = Callable[[jax.Array, Any, Any, Batch], StepOutput]
# One validation rule: (predicate on the value, "must ..." requirement text).
Rule = tuple[Callable[[Any], bool], str]


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: its name, hyperparameters and step.

  Attributes:
    name: the `config.method` value.
    summary: one line saying what the method does (help texts, tables).
    make_step: `make_step(context, method_config) -> step`, where
      `method_config` is the `config.<name>` block (None when the method has
      no hyperparameters) and `step(key, params, batch_stats, batch) ->
      StepOutput` runs on one device under `jit`/`shard_map`.
    default_config: the `config.<name>` block with the published defaults,
      or None when the method has no hyperparameters.
    config_rules: field (within the block) -> Rule, checked at config load.
  """
  name: str
  summary: str
  make_step: Callable[[StepContext, Optional[ml_collections.ConfigDict]], StepFn]
  default_config: Optional[Callable[[], ml_collections.ConfigDict]] = None
  config_rules: Mapping[str, Rule] = dataclasses.field(default_factory=dict)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of rows whose argmax is the label (float32 scalar)."""
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


# --- Validation rules shared by the run config and the method blocks -----------------


def is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def one_of(options) -> Rule:
  return (lambda v: v in options, f"must be one of {tuple(options)}")


POSITIVE_INT: Rule = (lambda v: is_int(v) and v > 0, "must be a positive int")
POSITIVE: Rule = (lambda v: is_number(v) and v > 0, "must be a positive number")
NON_NEGATIVE: Rule = (lambda v: is_number(v) and v >= 0, "must be a number >= 0")
UNIT: Rule = (lambda v: is_number(v) and 0 <= v <= 1, "must be a number in [0, 1]")
BOOLEAN: Rule = (lambda v: isinstance(v, bool), "must be True or False")


# --- Building blocks of simple methods --------------------------------------------------


def train_pass(context: StepContext, params, batch_stats, images, targets, labels,
               **model_kwargs) -> StepOutput:
  """One train-mode forward/backward with the configured loss.

  Returns this pass's gradient, the updated BN statistics and the metrics
  'loss' and 'accuracy' (of the logits against `labels`, each image's own
  class). `model_kwargs` go to the model (e.g. `manifold_mix=`).
  """
  (loss, (batch_stats, logits)), grads = jax.value_and_grad(
      context.model_loss, has_aux=True)(params, batch_stats, images, targets,
                                        **model_kwargs)
  return StepOutput(grads, batch_stats,
                    {"loss": loss, "accuracy": accuracy(logits, labels)})


def input_mixing_method(name: str, summary: str, mix_fn: Callable,
                        default_config: Callable[[], ml_collections.ConfigDict],
                        config_rules: Mapping[str, Rule]) -> Method:
  """A method that mixes the input batch, then takes one train-mode pass.

  `mix_fn(key, images, labels, num_classes=K, **method_config)` returns an
  `augment.MixResult`; the loss is the configured loss on its soft labels.
  Accuracy is measured on the mixed batch against each image's own label.
  """

  def make_step(context: StepContext, method_config) -> StepFn:
    options = dict(method_config or {})

    def step(key, params, batch_stats, batch: Batch) -> StepOutput:
      mixed = mix_fn(key, batch.images, batch.labels,
                     num_classes=context.num_classes, **options)
      return train_pass(context, params, batch_stats, mixed.images, mixed.labels,
                        batch.labels)

    return step

  return Method(name=name, summary=summary, make_step=make_step,
                default_config=default_config, config_rules=config_rules)
