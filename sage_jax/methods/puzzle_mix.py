"""Puzzle Mix (Kim et al., ICML 2020), as the SAGE release runs it on CIFAR.

1. Saliency pass (docs/baselines.md §3.1): BatchNorm in eval mode (running
   statistics, nothing updated), mean softmax cross-entropy on the true
   labels, gradient with respect to the input only (the release zeroes the
   parameter gradient of this pass, so it is never computed here), saliency =
   RMS over channels.
2. `augment.puzzle_mix`: block count, permutation and λ per batch; the mask
   energy minimised on the device; transport; the mixed batch and label
   weights.
3. One train-mode pass on the mixed batch with the configured loss (BCE on
   softmax in the published settings).

No adversarial perturbation and no clean-loss term: the release's CIFAR
settings (`adv_p = 0`, `clean_lam = 0`).
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sage_jax import augment
from sage_jax.methods import base


def default_config() -> ml_collections.ConfigDict:
  """The release's CIFAR settings for `--method puzzle` (docs/baselines.md §3)."""
  config = ml_collections.ConfigDict()
  config.alpha = 1.0             # λ ~ Beta(α, α), one per batch
  config.beta = 1.2              # label smoothness (÷16n inside)
  config.gamma = 0.5             # data smoothness
  config.eta = 0.2               # label prior weight
  config.neigh_size = 4          # pooling of the data-smoothness term
  config.transport = True        # move salient patches into the kept cells
  config.transport_size = 4      # transport cell, pixels
  config.transport_eps = 0.8     # weight of the transport distance
  config.block_nums = (2, 4, 8, 16)
  return config


def _is_block_nums(value) -> bool:
  return (isinstance(value, (tuple, list)) and len(value) > 0
          and all(base.is_int(n) and n >= 2 for n in value))


CONFIG_RULES = {
    "alpha": base.POSITIVE,
    "beta": base.NON_NEGATIVE,
    "gamma": base.NON_NEGATIVE,
    "eta": base.NON_NEGATIVE,
    "neigh_size": base.POSITIVE_INT,
    "transport": base.BOOLEAN,
    "transport_size": base.POSITIVE_INT,
    "transport_eps": base.POSITIVE,
    "block_nums": (_is_block_nums,
                   "must be a non-empty tuple of ints ≥ 2 (e.g. (2, 4, 8, 16))"),
}


def input_saliency(context: base.StepContext, params, batch_stats, images,
                   labels) -> jax.Array:
  """(B, H, W) Puzzle Mix saliency from an eval-mode pass (docs/baselines.md §3.1)."""

  def eval_loss(inputs):
    logits = context.model.apply({"params": params, "batch_stats": batch_stats},
                                 inputs, train=False)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels))

  return augment.puzzle_saliency(jax.grad(eval_loss)(images))


def make_step(context: base.StepContext, method_config) -> base.StepFn:
  options = dict(method_config)
  options["block_nums"] = tuple(options["block_nums"])

  def step(key, params, batch_stats, batch: base.Batch) -> base.StepOutput:
    saliency = input_saliency(context, params, batch_stats, batch.images,
                              batch.labels)
    mixed = augment.puzzle_mix(key, batch.images, batch.labels, saliency,
                               mean=context.mean, std=context.std,
                               num_classes=context.num_classes, **options)
    out = base.train_pass(context, params, batch_stats, mixed.images,
                          mixed.labels, batch.labels)
    metrics = dict(out.metrics, mix_label_weight=jnp.mean(mixed.lam),
                   block_num=augment.drawn_block_num(
                       key, options["block_nums"]).astype(jnp.float32))
    return out._replace(metrics=metrics)

  return step


METHOD = base.Method(
    name="puzzle_mix",
    summary=("Puzzle Mix: block masks from a saliency MRF solved on the device, "
             "with transport"),
    make_step=make_step, default_config=default_config, config_rules=CONFIG_RULES)
