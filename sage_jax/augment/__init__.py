"""SAGE and the baselines' mixing as pure, jit-able JAX functions.

    from sage_jax import augment
    sal = augment.saliency_map(input_grads)             # (B,H,W,C) -> (B,H,W)
    out = augment.sage(key, images, labels, sal, upper_lambda=0.6, num_classes=10)
    out.images, out.labels, out.lam, out.perm, out.offset

`sage_value_and_grad` wraps a loss function into SAGE's full training gradient
(one backward pass for the clean gradient and the saliency, gradient reuse);
`nnx_sage_value_and_grad` does the same for a Flax NNX module. The
baselines: `mixup`, `cutmix`, `saliencymix`, Manifold Mixup (`mix_at`,
`draw_manifold_mix`), `puzzle_mix` (its mask solver `solve_grid_mrf` and
transport `transport_sources`/`move_patches` run on the device) and Co-Mixup
(`co_mixup` = `co_mixup_assignment` + `co_mixup_apply`, batch-level mixing of
chunks of inputs, also on the device). Importing this
package needs jax and numpy only (flax is imported by the NNX helper).
"""
from sage_jax.augment.gradients import SageGradients
from sage_jax.augment.gradients import sage_value_and_grad
from sage_jax.augment.manifold import draw_manifold_mix
from sage_jax.augment.manifold import ManifoldMix
from sage_jax.augment.manifold import manifold_mixup_targets
from sage_jax.augment.manifold import mix_at
from sage_jax.augment.mixing import cutmix
from sage_jax.augment.mixing import MASK_MODES
from sage_jax.augment.mixing import MIX_STATIC_ARGNAMES
from sage_jax.augment.mixing import MixResult
from sage_jax.augment.mixing import mixup
from sage_jax.augment.mixing import sage
from sage_jax.augment.mixing import SAGE_STATIC_ARGNAMES
from sage_jax.augment.mixing import SEARCH_MODES
from sage_jax.augment.nnx_gradients import nnx_sage_value_and_grad
from sage_jax.augment.rearrange import all_offsets
from sage_jax.augment.rearrange import num_sampled_offsets
from sage_jax.augment.rearrange import sample_offsets
from sage_jax.augment.rearrange import shift
from sage_jax.augment.puzzle_mix import block_energy
from sage_jax.augment.puzzle_mix import BLOCK_NUMS
from sage_jax.augment.puzzle_mix import drawn_block_num
from sage_jax.augment.puzzle_mix import GridEnergy
from sage_jax.augment.puzzle_mix import puzzle_mix
from sage_jax.augment.puzzle_mix import PUZZLE_STATIC_ARGNAMES
from sage_jax.augment.puzzle_mix import puzzle_saliency
from sage_jax.augment.co_mixup import CO_MIXUP_ASSIGNMENT_STATIC_ARGNAMES
from sage_jax.augment.co_mixup import CO_MIXUP_STATIC_ARGNAMES
from sage_jax.augment.co_mixup import co_mixup
from sage_jax.augment.co_mixup import co_mixup_apply
from sage_jax.augment.co_mixup import co_mixup_assignment
from sage_jax.augment.co_mixup import co_mixup_statistics
from sage_jax.augment.grid_mrf import grid_mrf_energy
from sage_jax.augment.grid_mrf import solve_grid_mrf
from sage_jax.augment.transport import move_patches
from sage_jax.augment.transport import transport_sources
from sage_jax.augment.saliency import saliency_map
from sage_jax.augment.saliencymix import fine_grained_saliency
from sage_jax.augment.saliencymix import opencv_saliency
from sage_jax.augment.saliencymix import saliency_box
from sage_jax.augment.saliencymix import saliencymix

__all__ = [
    "MASK_MODES", "MixResult", "SEARCH_MODES", "SageGradients", "all_offsets",
    "cutmix",
    "ManifoldMix", "draw_manifold_mix", "manifold_mixup_targets", "mix_at",
    "mixup", "num_sampled_offsets", "sage", "sage_value_and_grad",
    "sample_offsets", "saliency_map", "shift",
    "fine_grained_saliency", "opencv_saliency", "saliency_box", "saliencymix",
    "MIX_STATIC_ARGNAMES", "SAGE_STATIC_ARGNAMES", "nnx_sage_value_and_grad",
    "BLOCK_NUMS", "GridEnergy", "PUZZLE_STATIC_ARGNAMES", "block_energy",
    "drawn_block_num", "puzzle_mix", "puzzle_saliency", "grid_mrf_energy",
    "solve_grid_mrf", "move_patches", "transport_sources",
    "CO_MIXUP_ASSIGNMENT_STATIC_ARGNAMES", "CO_MIXUP_STATIC_ARGNAMES", "co_mixup",
    "co_mixup_apply", "co_mixup_assignment", "co_mixup_statistics",
]
