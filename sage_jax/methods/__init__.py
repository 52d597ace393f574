"""Training methods: one module per method behind one interface.

    from sage_jax import methods
    method = methods.get_method("sage")
    step = method.make_step(context, config.sage)
    out = step(key, params, batch_stats, batch)    # grads, batch_stats, metrics

Each module defines `METHOD`, a `base.Method`: its name, a one-line summary,
its config block with the published defaults and the rules that validate it,
and `make_step`, the per-device step logic. `sage_jax.train` calls the
selected method through that interface and never branches on its name.
The pure mixing functions the methods use live in `sage_jax.augment`.
"""
from sage_jax.methods import co_mixup
from sage_jax.methods import cutmix
from sage_jax.methods import manifold_mixup
from sage_jax.methods import mixup
from sage_jax.methods import puzzle_mix
from sage_jax.methods import sage
from sage_jax.methods import saliencymix
from sage_jax.methods import vanilla
from sage_jax.methods.base import Batch
from sage_jax.methods.base import Method
from sage_jax.methods.base import StepContext
from sage_jax.methods.base import StepOutput

# config.method -> Method, in the order of the paper's tables.
REGISTRY = {module.METHOD.name: module.METHOD for module in (
    vanilla, mixup, cutmix, manifold_mixup, saliencymix, puzzle_mix, co_mixup,
    sage)}
METHOD_NAMES = tuple(REGISTRY)


def get_method(name: str) -> Method:
  """The registered method called `name`.

  Raises:
    ValueError: `name` is not registered (the message lists the names).
  """
  if name not in REGISTRY:
    raise ValueError(f"unknown method {name!r}; registered methods are "
                     f"{', '.join(METHOD_NAMES)}.")
  return REGISTRY[name]


__all__ = ["Batch", "METHOD_NAMES", "Method", "REGISTRY", "StepContext",
           "StepOutput", "get_method"]
