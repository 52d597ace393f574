"""The train-step body as it was before methods moved into `sage_jax.methods`.

A frozen copy of the pre-registry `train.make_train_step_body` (one branch per
method), kept only as a test oracle: `test_methods.py` checks that the
registry's vanilla, mixup, cutmix and SAGE steps end on bit-identical
parameters. The only edit is reading the mixup/cutmix α from the method's own
config block (`config.mixup.alpha`, `config.cutmix.alpha`) instead of the
former shared `config.mix_alpha`.
"""
import jax
import jax.numpy as jnp
import optax

from sage_jax import augment
from sage_jax import input_pipeline

AXIS = "data"


def _accuracy(logits, labels):
  return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


def make_train_step_body(model, tx, loss_fn, config, num_classes, mean, std,
                         schedule):
  method = config.method

  def model_loss(params, batch_stats, images, targets):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    return loss_fn(logits, targets), (updates["batch_stats"], logits)

  sage_grad = augment.sage_value_and_grad(
      model_loss, mix_grad_weight=config.sage.mix_grad_weight, has_aux=True,
      sigma=config.sage.sigma, kernel_size=config.sage.kernel_size,
      num_classes=num_classes, alpha=config.sage.alpha,
      upper_lambda=config.sage.upper_lambda, search=config.sage.search,
      sample_fraction=config.sage.sample_fraction, mask=config.sage.mask)
  baseline_mix = {"mixup": augment.mixup, "cutmix": augment.cutmix}.get(method)

  def body(state, images_uint8, labels):
    batch_stats = jax.tree.map(lambda x: x[0], state.batch_stats)
    key = jax.random.wrap_key_data(state.rng)
    key = jax.random.fold_in(jax.random.fold_in(key, state.step),
                             jax.lax.axis_index(AXIS))
    images = input_pipeline.normalize(images_uint8, mean, std)
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)

    if method == "sage":
      out = sage_grad(key, state.params, batch_stats, images, labels)
      grads, batch_stats = out.grads, out.state
      eta = config.sage.mix_grad_weight
      metrics = {
          "loss": (1.0 - eta) * out.clean_loss + eta * out.mix_loss,
          "clean_loss": out.clean_loss,
          "mix_loss": out.mix_loss,
          "accuracy": _accuracy(out.clean_aux, labels),
          "mix_label_weight": jnp.mean(out.mixed.lam),
      }
    else:
      if baseline_mix is not None:
        mixed = baseline_mix(key, images, labels, alpha=config[method].alpha,
                             num_classes=num_classes)
        images, targets = mixed.images, mixed.labels
      (loss, (batch_stats, logits)), grads = jax.value_and_grad(
          model_loss, has_aux=True)(state.params, batch_stats, images, targets)
      metrics = {"loss": loss, "accuracy": _accuracy(logits, labels)}

    grads = jax.lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["learning_rate"] = schedule(state.step)
    metrics = jax.lax.pmean(metrics, AXIS)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state,
        batch_stats=jax.tree.map(lambda x: x[None], batch_stats))
    return new_state, metrics

  return body
