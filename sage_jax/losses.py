"""Training losses: `loss(logits (B, K), targets float (B, K)) -> float32 scalar`."""
import jax
import jax.numpy as jnp
import optax

# PyTorch's BCELoss clamps each log term at -100.
_BCE_LOG_FLOOR = -100.0


def bce_softmax_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """BCE(softmax(logits), targets), mean over batch and classes (docs/method.md §2).

  The released code's loss: each log term is clamped at -100 like PyTorch's
  BCELoss. Gradients stay finite when a probability saturates at 0 or 1.

  Args:
    logits: float (B, K). targets: float (B, K) in [0, 1].

  Returns:
    float32 scalar.
  """
  logits = logits.astype(jnp.float32)
  log_p = jnp.maximum(jax.nn.log_softmax(logits), _BCE_LOG_FLOOR)
  one_minus_p = 1.0 - jax.nn.softmax(logits)
  positive = one_minus_p > 0
  # where-guarded so that log(0) neither appears nor back-propagates NaN.
  log_one_minus_p = jnp.where(
      positive, jnp.log(jnp.where(positive, one_minus_p, 1.0)), _BCE_LOG_FLOOR)
  log_one_minus_p = jnp.maximum(log_one_minus_p, _BCE_LOG_FLOOR)
  return -jnp.mean(targets * log_p + (1.0 - targets) * log_one_minus_p)


def softmax_xent_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Softmax cross-entropy with (soft) targets, mean over the batch."""
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


LOSS_FNS = {"bce_softmax": bce_softmax_loss, "softmax_xent": softmax_xent_loss}
