"""SaliencyMix (Uddin et al., 2021), as the released SAGE code runs it.

Per batch: with probability `mix_prob` (P_mix = 0.5) the batch is mixed,
otherwise it trains on the clean batch. When mixed: λ ~ Beta(1, 1), one
permutation; the saliency map of ONE image, the partner of sample 0, gives
one box (around the map's peak, area ≈ (1-λ)·H·W) that is pasted from each
image's partner into every image; the label weight is the clipped box's
complement. One train-mode pass; the configured loss.

The saliency is OpenCV's fine-grained static saliency (Montabone & Soto).
`saliency="uint8_image"` (default) is the method as its authors describe
it: the map of the 8-bit image, computed on the device in JAX
(`augment.fine_grained_saliency`). `saliency="released_float_image"` is a
compatibility option that reproduces the published numbers: the released
code hands OpenCV the normalised float32 image, which OpenCV misreads (it
reads the centre pixels as bytes of the float buffer), so the box comes from
a different map. That option calls OpenCV on the host through
`jax.pure_callback` (one 32×32 image per step) and needs
`pip install opencv-contrib-python-headless`.
"""
import jax
import ml_collections

from sage_jax import augment
from sage_jax.methods import base

SALIENCY_INPUTS = ("uint8_image", "released_float_image")


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.alpha = 1.0                 # λ ~ Beta(α, α)
  config.mix_prob = 0.5              # P_mix: share of batches that are mixed
  config.saliency = "uint8_image"    # uint8_image | released_float_image
  return config


CONFIG_RULES = {
    "alpha": base.POSITIVE,
    "mix_prob": base.UNIT,
    "saliency": base.one_of(SALIENCY_INPUTS),
}


def partner_saliency(batch: base.Batch, index, saliency: str) -> jax.Array:
  """float32 (H, W) saliency map of image `index` of the batch."""
  if saliency == "uint8_image":
    return augment.fine_grained_saliency(batch.images_uint8[index][None])[0]
  # The released code's input: the normalised float32 RGB image, HWC.
  return augment.opencv_saliency(batch.images[index])


def make_step(context: base.StepContext, method_config) -> base.StepFn:

  def step(key, params, batch_stats, batch: base.Batch) -> base.StepOutput:
    perm_key, mix_key = jax.random.split(key)
    perm = jax.random.permutation(perm_key, batch.labels.shape[0])
    # One map per batch: the partner of sample 0 (released code).
    saliency = partner_saliency(batch, perm[0], method_config.saliency)
    mixed = augment.saliencymix(
        mix_key, batch.images, batch.labels, saliency, perm=perm,
        alpha=method_config.alpha, mix_prob=method_config.mix_prob,
        num_classes=context.num_classes)
    out = base.train_pass(context, params, batch_stats, mixed.images,
                          mixed.labels, batch.labels)
    return out._replace(metrics=dict(out.metrics, mix_label_weight=mixed.lam[0]))

  return step


METHOD = base.Method(
    name="saliencymix",
    summary=("SaliencyMix: half the batches get one box around the partner's "
             "saliency peak"),
    make_step=make_step, default_config=default_config, config_rules=CONFIG_RULES)
