"""SAGE's training gradient for Flax NNX modules.

`sage_value_and_grad` works on pure functions of (params, state). An NNX
module keeps its BatchNorm statistics (and RNG counts) inside itself, so it
has to be split into those two, run as a pure function under `jax.grad`, and
the updated state written back; `nnx_sage_value_and_grad` does that, so that
the module's statistics move exactly as after two plain calls (the clean
batch, then the SAGE batch).

flax is imported when the helper is built, not with `sage_jax.augment`: the
core depends on jax and numpy only.
"""
from typing import Any, Callable, Optional

from sage_jax.augment import _checks
from sage_jax.augment import gradients


def _split_nnx_output(output: Any, has_aux: bool, name: str):
  """Returns (loss, aux) from `loss_fn`'s output, checked against `has_aux`."""
  if has_aux:
    if not (isinstance(output, (tuple, list)) and len(output) == 2):
      raise TypeError(
          f"with has_aux=True, `{name}` must return (loss, aux); it returned "
          f"{_checks.describe(output)}. If it returns only the loss, pass "
          "has_aux=False.")
    loss, aux = output
  else:
    if isinstance(output, (tuple, list)):
      raise TypeError(
          f"`{name}` must return the scalar loss (has_aux=False); it returned "
          f"{_checks.describe(output)}. If it returns (loss, aux), pass has_aux=True.")
    loss, aux = output, None
  _checks.check_scalar_loss(name, loss)
  return loss, aux


def nnx_sage_value_and_grad(
    loss_fn: Callable[..., Any], *, wrt: Any = None,
    mix_grad_weight: float = 0.7, has_aux: bool = False, sigma: float = 1.0,
    kernel_size: int = 5, num_classes: Optional[int] = None,
    check_labels: bool = False,
    **sage_kwargs) -> Callable[..., gradients.SageGradients]:
  """Turns a loss function of an NNX module into the SAGE gradient function.

  The same computation as `sage_value_and_grad`: one backward pass of the
  clean batch for g_clean and the saliency, the SAGE batch, a second pass
  for g_mix, and (1-η)·g_clean + η·g_mix; the module's other Variables
  (BatchNorm statistics, RNG counts) go through the clean pass, then the
  mixed pass, as with two plain calls of the module.

  Args:
    loss_fn: `loss_fn(model, images, targets)` returning the scalar loss, or
      `(loss, aux)` when `has_aux`. `model` is a fresh copy of the module,
      which `loss_fn` calls as usual (its BatchNorm updates are collected
      afterwards); `images` (B, H, W, C) normalised, `targets` float32
      (B, K). Put the module in training mode (`model.train()`) for
      BatchNorm to use and update batch statistics.
    wrt: NNX filter of the Variables to differentiate (default `nnx.Param`),
      as `nnx.Optimizer(..., wrt=)`.
    mix_grad_weight, has_aux, sigma, kernel_size, num_classes, check_labels,
      **sage_kwargs: as `sage_value_and_grad` (`upper_lambda` defaults to
      1.0; the paper uses 0.6 on CIFAR-10).

  Returns:
    `grad_fn(key, model, images, labels) -> SageGradients`, where `model` is
    either

    - an `nnx.Module`: its non-`wrt` Variables are updated in place to the
      state after both passes (use it eagerly or under `nnx.jit`, which
      carries the update out of the compiled function), or
    - the tuple `nnx.split(module, wrt, ...)`, i.e. `(graphdef, params,
      rest)`, for `jax.jit`/`shard_map` code: nothing is updated in place.

    In both, `.grads` is an `nnx.State` of the `wrt` Variables (what
    `nnx.Optimizer.update(model, grads)` takes; the structure of `params`)
    and `.state` the `nnx.State` of the other Variables after both passes
    (the new `rest`). No cross-device communication, as in
    `sage_value_and_grad`.

  Raises:
    ImportError: if flax is not installed.
    ValueError: as `sage_value_and_grad` (bad `mix_grad_weight` or SAGE
      option).
    `grad_fn` raises TypeError if `model` is neither form, or if `loss_fn`
    returns something other than a scalar loss (has_aux=False) or
    `(loss, aux)` (has_aux=True), and ValueError on bad images or labels.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  wrt = nnx.Param if wrt is None else wrt
  name = getattr(loss_fn, "__name__", "loss_fn")

  def pure_loss(params, state, images, targets):
    # The graphdef rides in the state: it has no leaves, so it passes through
    # jax.grad unchanged, and one generic gradient function serves all calls.
    graphdef, rest = state
    # copy=True: fresh Variables, so the call's updates never touch `rest`.
    module = nnx.merge(graphdef, params, rest, copy=True)
    loss, aux = _split_nnx_output(loss_fn(module, images, targets), has_aux,
                                  name)
    new_rest = nnx.split(module, wrt, ...)[2]
    return loss, ((graphdef, new_rest), aux)

  generic = gradients.sage_value_and_grad(
      pure_loss, mix_grad_weight=mix_grad_weight, has_aux=True, sigma=sigma,
      kernel_size=kernel_size, num_classes=num_classes,
      check_labels=check_labels, **sage_kwargs)

  def grad_fn(key, model, images, labels) -> gradients.SageGradients:
    if isinstance(model, nnx.Module):
      graphdef, params, rest = nnx.split(model, wrt, ...)
    elif (isinstance(model, tuple) and len(model) == 3
          and isinstance(model[0], nnx.GraphDef)):
      graphdef, params, rest = model
    else:
      raise TypeError(
          "`model` must be an nnx.Module or `nnx.split(module, wrt, ...)` = "
          f"(graphdef, params, rest); got {_checks.describe(model)}. Split as "
          "`nnx.split(model, nnx.Param, ...)` (with your `wrt`), not "
          "`nnx.split(model)`.")
    out = generic(key, params, (graphdef, rest), images, labels)
    new_rest = out.state[1]
    if isinstance(model, nnx.Module):
      nnx.update(model, new_rest)
    return out._replace(state=new_rest)

  return grad_fn
