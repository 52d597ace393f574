"""SAGE, Mixup and CutMix as pure, jit-able JAX functions.

    from sage_jax import augment
    sal = augment.saliency_map(input_grads)             # (B,H,W,C) -> (B,H,W)
    out = augment.sage(key, images, labels, sal, upper_lambda=0.6, num_classes=10)
    out.images, out.labels, out.lam, out.perm, out.offset

`sage_value_and_grad` wraps a loss function into SAGE's full training gradient
(one backward pass for the clean gradient and the saliency, gradient reuse).
"""
from sage_jax.augment.gradients import SageGradients
from sage_jax.augment.gradients import sage_value_and_grad
from sage_jax.augment.manifold import draw_manifold_mix
from sage_jax.augment.manifold import ManifoldMix
from sage_jax.augment.manifold import manifold_mixup_targets
from sage_jax.augment.manifold import mix_at
from sage_jax.augment.mixing import cutmix
from sage_jax.augment.mixing import MASK_MODES
from sage_jax.augment.mixing import MixResult
from sage_jax.augment.mixing import mixup
from sage_jax.augment.mixing import sage
from sage_jax.augment.mixing import SEARCH_MODES
from sage_jax.augment.rearrange import all_offsets
from sage_jax.augment.rearrange import num_sampled_offsets
from sage_jax.augment.rearrange import sample_offsets
from sage_jax.augment.rearrange import shift
from sage_jax.augment.saliency import saliency_map

__all__ = [
    "MASK_MODES", "MixResult", "SEARCH_MODES", "SageGradients", "all_offsets",
    "cutmix",
    "ManifoldMix", "draw_manifold_mix", "manifold_mixup_targets", "mix_at",
    "mixup", "num_sampled_offsets", "sage", "sage_value_and_grad",
    "sample_offsets", "saliency_map", "shift",
]
