"""SAGE (Ma et al., BMVC 2022), as the released code trains with it (docs/method.md §1).

1. Clean pass in train mode; one backward gives g_clean and ∂ℓ/∂x.
2-8. Saliency, λ, partners, the rearrangement search and the saliency mask
   (`augment.sage`).
9. Mixed pass in train mode, continuing from the clean pass's BN statistics.
10. g = (1-η)·g_clean + η·g_mix, η = `mix_grad_weight`.
All of it is `augment.sage_value_and_grad`; this module only configures it.
"""
import jax.numpy as jnp
import ml_collections

from sage_jax import augment
from sage_jax.methods import base


def default_config() -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 PreActResNet18 settings (docs/method.md §4)."""
  config = ml_collections.ConfigDict()
  config.alpha = 1.0
  config.upper_lambda = 0.6
  config.mix_grad_weight = 0.7   # η: weight of the mixed-batch gradient
  config.sigma = 1.0
  config.kernel_size = 5
  config.search = "sampled"      # sampled | exhaustive | none
  config.sample_fraction = 0.01
  config.mask = "saliency"       # saliency | constant (the "w/o SM" ablation)
  return config


CONFIG_RULES = {
    "alpha": base.POSITIVE,
    "upper_lambda": base.UNIT,
    "mix_grad_weight": base.UNIT,
    "sigma": base.POSITIVE,
    "kernel_size": (lambda v: base.is_int(v) and v > 0 and v % 2 == 1,
                    "must be an odd positive int"),
    "search": base.one_of(augment.SEARCH_MODES),
    "sample_fraction": (lambda v: base.is_number(v) and 0 < v <= 1,
                        "must lie in (0, 1]"),
    "mask": base.one_of(augment.MASK_MODES),
}


def make_step(context: base.StepContext, method_config) -> base.StepFn:
  eta = method_config.mix_grad_weight
  sage_grad = augment.sage_value_and_grad(
      context.model_loss, mix_grad_weight=eta, has_aux=True,
      sigma=method_config.sigma, kernel_size=method_config.kernel_size,
      num_classes=context.num_classes, alpha=method_config.alpha,
      upper_lambda=method_config.upper_lambda, search=method_config.search,
      sample_fraction=method_config.sample_fraction, mask=method_config.mask)

  def step(key, params, batch_stats, batch: base.Batch) -> base.StepOutput:
    out = sage_grad(key, params, batch_stats, batch.images, batch.labels)
    metrics = {
        "loss": (1.0 - eta) * out.clean_loss + eta * out.mix_loss,
        "clean_loss": out.clean_loss,
        "mix_loss": out.mix_loss,
        "accuracy": base.accuracy(out.clean_aux, batch.labels),
        "mix_label_weight": jnp.mean(out.mixed.lam),
    }
    return base.StepOutput(out.grads, out.state, metrics)

  return step


METHOD = base.Method(
    name="sage",
    summary=("SAGE: saliency-guided mixing with the best shift of the partner, "
             "gradient reuse"),
    make_step=make_step, default_config=default_config, config_rules=CONFIG_RULES)
