"""SAGE's training gradient with gradient reuse (spec §1 steps 1, 9, 10).

One backward pass of the clean batch gives both the clean parameter gradient
g_clean and the input gradient ∂ℓ/∂x from which the saliency is computed; the
SAGE batch is built from that saliency and a second pass gives g_mix; the
update direction is (1-η)·g_clean + η·g_mix with η = `mix_grad_weight`.
Mutable state (BatchNorm statistics) flows clean pass → mixed pass.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax

from sage_jax.augment import _checks
from sage_jax.augment import mixing
from sage_jax.augment import saliency as saliency_lib


class SageGradients(NamedTuple):
  """Result of a function made by `sage_value_and_grad` (a pytree).

  Attributes:
    grads: (1-η)·g_clean + η·g_mix, same structure as the params.
    state: the mutable state after both passes (clean, then mixed).
    clean_loss: scalar loss of the clean batch.
    mix_loss: scalar loss of the SAGE batch.
    clean_aux, mix_aux: the loss function's aux outputs (None without aux).
    mixed: the `MixResult` of the SAGE batch (images, labels, γ, π, offsets).
    saliency: float32 (B, H, W) smoothed saliency maps of the clean batch.
  """
  grads: Any
  state: Any
  clean_loss: jax.Array
  mix_loss: jax.Array
  clean_aux: Any
  mix_aux: Any
  mixed: mixing.MixResult
  saliency: jax.Array


LossFn = Callable[..., Any]


def sage_value_and_grad(loss_fn: LossFn, *, mix_grad_weight: float = 0.7,
                        has_aux: bool = False, sigma: float = 1.0,
                        kernel_size: int = 5, num_classes: Optional[int] = None,
                        **sage_kwargs) -> Callable[..., SageGradients]:
  """Turns a loss function into the SAGE gradient function.

  Args:
    loss_fn: `loss_fn(params, state, images, targets)` returning
      `(loss, new_state)`, or `(loss, (new_state, aux))` when `has_aux`.
      `images` (B, H, W, C) normalised, `targets` float32 (B, K); `state` is
      whatever mutable collections the model threads (e.g. linen
      `batch_stats`, or an NNX state); pass None and return None when there
      is none. It must be differentiable in `params` and `images`.
    mix_grad_weight: η in [0, 1], the weight of the mixed-batch gradient
      (the released code's `update_ratio`; 0.7 for CIFAR PreActResNet18).
    has_aux: whether `loss_fn` returns aux outputs.
    sigma, kernel_size: saliency smoothing (see `saliency_map`).
    num_classes: required when the labels passed are int (B,).
    **sage_kwargs: forwarded to `sage` (alpha, upper_lambda, search,
      sample_fraction, lam, perm, offsets, mask).

  Returns:
    `grad_fn(key, params, state, images, labels) -> SageGradients`. It does
    no cross-device communication: in a data-parallel step, average
    `.grads` (e.g. `jax.lax.pmean`) afterwards.

  Raises:
    ValueError: if `mix_grad_weight` is outside [0, 1] or `sage_kwargs`
      holds an unknown name.
  """
  _checks.check_unit_interval("mix_grad_weight", mix_grad_weight)
  allowed = {"alpha", "upper_lambda", "search", "sample_fraction", "lam", "perm",
             "offsets", "mask"}
  unknown = set(sage_kwargs) - allowed
  if unknown:
    raise ValueError(
        f"unknown SAGE option(s) {sorted(unknown)}; expected some of {sorted(allowed)}.")

  def split_output(output):
    loss, rest = output
    return (loss, rest) if has_aux else (loss, (rest, None))

  def loss_with_state(params, state, images, targets):
    return split_output(loss_fn(params, state, images, targets))

  clean_value_and_grad = jax.value_and_grad(loss_with_state, argnums=(0, 2),
                                            has_aux=True)
  mix_value_and_grad = jax.value_and_grad(loss_with_state, has_aux=True)

  def grad_fn(key, params, state, images, labels) -> SageGradients:
    _checks.check_images(images)
    targets = _checks.to_targets(labels, images.shape[0], num_classes)
    # Step 1: one backward pass gives g_clean and ∂ℓ/∂x together.
    (clean_loss, (state, clean_aux)), (clean_grads, input_grads) = (
        clean_value_and_grad(params, state, images, targets))
    # Steps 2-3: saliency; steps 4-8: the SAGE batch.
    saliency = saliency_lib.saliency_map(input_grads, sigma=sigma,
                                         kernel_size=kernel_size)
    mixed = mixing.sage(key, images, targets, saliency, **sage_kwargs)
    # Step 9: mixed pass, continuing from the clean pass's state.
    (mix_loss, (state, mix_aux)), mix_grads = mix_value_and_grad(
        params, state, mixed.images, mixed.labels)
    # Step 10: gradient reuse.
    grads = jax.tree.map(
        lambda clean, mix: (1.0 - mix_grad_weight) * clean + mix_grad_weight * mix,
        clean_grads, mix_grads)
    return SageGradients(grads, state, clean_loss, mix_loss, clean_aux, mix_aux,
                         mixed, saliency)

  return grad_fn


