"""Manifold Mixup (Verma et al., 2019), as the released SAGE code runs it.

Per batch: one mix point k uniform in {0, 1, 2} (the input, after the first
stage, after the second stage), one λ ~ Beta(2, 2), one permutation. The
model mixes its hidden state h ← λ·h + (1-λ)·h[perm] at point k
(`augment.mix_at`, called by every `sage_jax.models` architecture); the target
is λ·onehot(y) + (1-λ)·onehot(y[perm]). One train-mode pass, so the
BatchNorm layers after the mix point see mixed activations. k is a traced
value: one compiled step serves all three points.
"""
import jax.numpy as jnp
import ml_collections

from sage_jax import augment
from sage_jax.methods import base


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.alpha = 2.0       # Beta(α, α); the released code forces 2.0 on CIFAR
  config.num_points = 3    # k ~ U{0, ..., num_points-1}; the code: {0, 1, 2}
  return config


CONFIG_RULES = {
    "alpha": base.POSITIVE,
    "num_points": (lambda v: base.is_int(v) and 1 <= v <= 3,
                   "must be 1, 2 or 3 (mix points: input, stage 1, stage 2)"),
}


def make_step(context: base.StepContext, method_config) -> base.StepFn:

  def step(key, params, batch_stats, batch: base.Batch) -> base.StepOutput:
    mix = augment.draw_manifold_mix(key, batch.labels.shape[0],
                                    alpha=method_config.alpha,
                                    num_points=method_config.num_points)
    targets = augment.manifold_mixup_targets(batch.labels, mix,
                                             num_classes=context.num_classes)
    out = base.train_pass(context, params, batch_stats, batch.images, targets,
                          batch.labels, manifold_mix=mix)
    return out._replace(metrics=dict(
        out.metrics, mix_label_weight=mix.lam,
        mix_point=mix.layer.astype(jnp.float32)))

  return step


METHOD = base.Method(
    name="manifold_mixup",
    summary=("Manifold Mixup: mix the input or the output of stage 1 or 2, "
             "one point, λ ~ Beta(2, 2) per batch"),
    make_step=make_step, default_config=default_config, config_rules=CONFIG_RULES)
