"""Co-Mixup (Kim et al., ICLR 2021), as the release runs it on CIFAR.

1. Clean pass in train mode (docs/baselines.md §4.1): BatchNorm batch
   statistics, running statistics updated; loss (2·clean_weight/K)·mean
   softmax cross-entropy. One backward gives both its parameter gradient,
   which the release keeps as part of the update, and the input gradient;
   saliency = RMS over channels.
2. `augment.co_mixup_assignment`: per chunk of `chunk_size` consecutive
   images of this device's shard, the joint labelling of every output's
   blocks, optimised on the device (§4.2-4.3); then `co_mixup_apply` mixes
   the images and labels.
3. One train-mode pass on the mixed batch with the configured loss (BCE on
   softmax in the published settings), continuing from the clean pass's BN
   statistics. The step's gradient is the sum of both passes' gradients.

The per-device batch must be a multiple of `chunk_size` (the release: batch
100, chunks of 20). Its published learning rate differs per dataset: 0.12 on
CIFAR-10 (0.2 diverged, says the paper's supplement), 0.2 on CIFAR-100.
`config.co_mixup.learning_rate` > 0 replaces `config.learning_rate` when
this method runs; configs/cifar10.py sets it to 0.12.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

from sage_jax import augment
from sage_jax.methods import base

def default_config() -> ml_collections.ConfigDict:
  """The release's CIFAR settings (docs/baselines.md §4, §5)."""
  config = ml_collections.ConfigDict()
  config.chunk_size = 20         # images optimised jointly (m_part)
  config.block_num = 4           # n×n blocks per image
  config.alpha = 2.0             # Dirichlet prior over a chunk's inputs
  config.beta = 0.32             # label smoothness
  config.gamma = 1.0             # input-reuse (compatibility) penalty
  config.eta = 0.05              # prior weight
  config.tau = 0.83              # reuse threshold
  config.omega = 0.001           # weight of the saliency-peak distances
  config.num_sweeps = 4          # passes over a chunk's outputs
  config.clean_weight = 1.0      # clean_lam: clean loss (2·clean_weight/K)·CE
  # > 0: this method's initial lr instead of config.learning_rate (0 = that).
  config.learning_rate = 0.0
  return config


CONFIG_RULES = {
    "chunk_size": (lambda v: base.is_int(v) and v >= 2, "must be an int ≥ 2"),
    "block_num": (lambda v: base.is_int(v) and v >= 2, "must be an int ≥ 2"),
    "alpha": base.POSITIVE,
    "beta": base.NON_NEGATIVE,
    "gamma": base.NON_NEGATIVE,
    "eta": base.NON_NEGATIVE,
    "tau": base.NON_NEGATIVE,
    "omega": base.UNIT,
    "num_sweeps": base.POSITIVE_INT,
    "clean_weight": base.NON_NEGATIVE,
    "learning_rate": base.NON_NEGATIVE,
}


def make_step(context: base.StepContext, method_config) -> base.StepFn:
  options = dict(method_config)
  del options["learning_rate"]  # read by train.base_learning_rate
  clean_scale = 2.0 * options.pop("clean_weight") / context.num_classes

  def clean_loss(params, batch_stats, images, labels):
    logits, batch_stats = context.apply_train(params, batch_stats, images)
    loss = clean_scale * jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels))
    return loss, (batch_stats, logits)

  def step(key, params, batch_stats, batch: base.Batch) -> base.StepOutput:
    per_device = batch.images.shape[0]
    if per_device % options["chunk_size"]:  # Raised while tracing, before step 1.
      divisors = [d for d in range(2, options["chunk_size"]) if per_device % d == 0]
      raise ValueError(
          f"config.co_mixup.chunk_size={options['chunk_size']} must divide the "
          f"per-device batch {per_device} (config.batch_size / devices): pass "
          + (f"--config.co_mixup.chunk_size={divisors[-1]} or " if divisors else "")
          + "a config.batch_size that is a multiple of chunk_size × devices.")
    (clean, (batch_stats, logits)), (clean_grads, input_grads) = jax.value_and_grad(
        clean_loss, argnums=(0, 2), has_aux=True)(
            params, batch_stats, batch.images, batch.labels)
    saliency = augment.puzzle_saliency(input_grads)
    assignment = augment.co_mixup_assignment(key, saliency, **options)
    mixed = augment.co_mixup_apply(batch.images, context.one_hot(batch.labels),
                                   assignment)
    out = base.train_pass(context, params, batch_stats, mixed.images,
                          mixed.labels, batch.labels)
    statistics = augment.co_mixup_statistics(assignment)
    metrics = {
        "loss": clean + out.metrics["loss"],
        "clean_loss": clean,
        "mix_loss": out.metrics["loss"],
        "accuracy": base.accuracy(logits, batch.labels),
        "mix_label_weight": jnp.mean(mixed.lam),
        "inputs_per_output": statistics["inputs_per_output"],
        "max_reuse": statistics["max_reuse"],
    }
    grads = jax.tree.map(jnp.add, clean_grads, out.grads)
    return base.StepOutput(grads, out.batch_stats, metrics)

  return step


METHOD = base.Method(
    name="co_mixup",
    summary=("Co-Mixup: each chunk of the batch mixed jointly, block labelling "
             "optimised on the device"),
    make_step=make_step, default_config=default_config, config_rules=CONFIG_RULES)
