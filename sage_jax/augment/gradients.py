"""SAGE's training gradient with gradient reuse (docs/method.md §1, steps 1, 9, 10).

One backward pass of the clean batch gives both the clean parameter gradient
g_clean and the input gradient ∂ℓ/∂x from which the saliency is computed; the
SAGE batch is built from that saliency and a second pass gives g_mix; the
update direction is (1-η)·g_clean + η·g_mix with η = `mix_grad_weight`.
Mutable state (BatchNorm statistics) flows clean pass → mixed pass.
"""
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from sage_jax.augment import _checks
from sage_jax.augment import mixing
from sage_jax.augment import saliency as saliency_lib


class SageGradients(NamedTuple):
  """Result of a function made by `sage_value_and_grad` or
  `nnx_sage_value_and_grad` (a pytree).

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

# Options forwarded to `mixing.sage`.
_SAGE_OPTIONS = frozenset({"alpha", "upper_lambda", "search", "sample_fraction",
                           "lam", "perm", "offsets", "mask"})


def _state_signature(state: Any) -> list:
  """(key path, shape) of every leaf: the state's layout, container-agnostic.

  Paths, not tree structures, are compared so that, e.g., a linen
  `FrozenDict` in and a `dict` out still match.
  """
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  return [(jax.tree_util.keystr(path), jnp.shape(leaf)) for path, leaf in leaves]


def split_loss_output(output: Any, state: Any, has_aux: bool,
                      name: str = "loss_fn"):
  """Checks `loss_fn`'s output and returns `(loss, (new_state, aux))`.

  Args:
    output: what `loss_fn(params, state, images, targets)` returned.
    state: the state passed in; the returned one must have its layout,
      since it is passed on to the next pass (and the next step).
    has_aux: whether `output` is `(loss, (new_state, aux))` rather than
      `(loss, new_state)`.
    name: the loss function's name in messages.

  Raises:
    TypeError: naming what was returned and the form expected, when the
      output is not a pair, the loss is not a scalar, or the new state's
      layout differs from `state`'s (the usual sign of a wrong `has_aux`).
  """
  expected = ("(loss, (new_state, aux))" if has_aux else "(loss, new_state)")
  if not (isinstance(output, (tuple, list)) and len(output) == 2):
    raise TypeError(
        f"`{name}` must return {expected} (has_aux={has_aux}); it returned "
        f"{_checks.describe(output)}. With no mutable state, return (loss, None).")
  loss, rest = output
  _checks.check_scalar_loss(name, loss)
  if has_aux:
    if not (isinstance(rest, (tuple, list)) and len(rest) == 2):
      raise TypeError(
          f"with has_aux=True, `{name}` must return (loss, (new_state, aux)); "
          f"its second element is {_checks.describe(rest)}. If it returns "
          "(loss, new_state), pass has_aux=False.")
    new_state, aux = rest
  else:
    new_state, aux = rest, None
  passed, returned = _state_signature(state), _state_signature(new_state)
  if passed != returned:
    hint = ("if it returns (loss, new_state), pass has_aux=False"
            if has_aux else
            "if it returns (loss, (new_state, aux)), pass has_aux=True")
    # The first differing leaf, not the whole layout: a model has hundreds.
    index = next((i for i, (a, b) in enumerate(zip(passed, returned)) if a != b),
                 min(len(passed), len(returned)))
    first = lambda leaves: leaves[index] if index < len(leaves) else "nothing"
    raise TypeError(
        f"`{name}` returned a new state whose layout differs from the state "
        f"passed in ({hint}): {len(passed)} leaves passed, {len(returned)} "
        f"returned; leaf {index} (path, shape) is {first(passed)} passed, "
        f"{first(returned)} returned.")
  return loss, (new_state, aux)


def sage_value_and_grad(loss_fn: LossFn, *, mix_grad_weight: float = 0.7,
                        has_aux: bool = False, sigma: float = 1.0,
                        kernel_size: int = 5, num_classes: Optional[int] = None,
                        check_labels: bool = False,
                        **sage_kwargs) -> Callable[..., SageGradients]:
  """Turns a loss function into the SAGE gradient function.

  Args:
    loss_fn: `loss_fn(params, state, images, targets)` returning
      `(loss, new_state)`, or `(loss, (new_state, aux))` when `has_aux`.
      `images` (B, H, W, C) normalised, `targets` float32 (B, K); `state` is
      whatever mutable collections the model threads (e.g. linen
      `batch_stats`); pass None and return None when there is none. The new
      state must have the layout (leaf paths and shapes) of the state
      passed in. It must be differentiable in `params` and `images`. For a
      Flax NNX module use `nnx_sage_value_and_grad`.
    mix_grad_weight: η in [0, 1], the weight of the mixed-batch gradient
      (the released code's `update_ratio`; 0.7 for CIFAR PreActResNet18).
    has_aux: whether `loss_fn` returns aux outputs.
    sigma, kernel_size: saliency smoothing (see `saliency_map`).
    num_classes: required when the labels passed are int (B,).
    check_labels: add a `checkify` range check of traced int labels (see
      `sage`); unchecked by default.
    **sage_kwargs: forwarded to `sage` (alpha, upper_lambda, search,
      sample_fraction, lam, perm, offsets, mask). `upper_lambda` defaults
      to 1.0 as in `sage`; the paper uses 0.6 on CIFAR-10 (see `sage`).

  Returns:
    `grad_fn(key, params, state, images, labels) -> SageGradients`. It does
    no cross-device communication: in a data-parallel step, average
    `.grads` (e.g. `jax.lax.pmean`) afterwards. `grad_fn` raises TypeError
    if `params` or `state` holds an `nnx.Module` (its updates would be
    dropped silently) or if `loss_fn`'s output does not match `has_aux`
    (see `split_loss_output`), and ValueError on bad images or labels (as
    `sage`).

  Raises:
    ValueError: if `mix_grad_weight` is outside [0, 1] or `sage_kwargs`
      holds an unknown name.
  """
  _checks.check_unit_interval("mix_grad_weight", mix_grad_weight)
  unknown = set(sage_kwargs) - _SAGE_OPTIONS
  if unknown:
    raise ValueError(
        f"unknown SAGE option(s) {sorted(unknown)}; expected some of "
        f"{sorted(_SAGE_OPTIONS)}.")
  name = getattr(loss_fn, "__name__", "loss_fn")

  def loss_with_state(params, state, images, targets):
    return split_loss_output(loss_fn(params, state, images, targets), state,
                             has_aux, name)

  clean_value_and_grad = jax.value_and_grad(loss_with_state, argnums=(0, 2),
                                            has_aux=True)
  mix_value_and_grad = jax.value_and_grad(loss_with_state, has_aux=True)

  def grad_fn(key, params, state, images, labels) -> SageGradients:
    _checks.reject_nnx_modules("params", params)
    _checks.reject_nnx_modules("state", state)
    _checks.check_images(images)
    targets = _checks.to_targets(labels, images.shape[0], num_classes,
                                 check_labels)
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


