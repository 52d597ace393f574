"""Vanilla training: one train-mode pass on the clean batch, one-hot targets."""
from sage_jax.methods import base


def make_step(context: base.StepContext, method_config) -> base.StepFn:
  del method_config  # no hyperparameters

  def step(key, params, batch_stats, batch: base.Batch) -> base.StepOutput:
    del key  # deterministic
    return base.train_pass(context, params, batch_stats, batch.images,
                           context.one_hot(batch.labels), batch.labels)

  return step


METHOD = base.Method(
    name="vanilla",
    summary="no mixing: the configured loss on the clean batch",
    make_step=make_step)
