"""Cost and optimality of sage_jax.augment (one process, this machine).

    python benchmarks/augment_bench.py [--sizes 32 64] [--batch 128]
                                       [--optimality-pairs 4096]

Prints, at batch 128 on 32×32×3 and 64×64×3 images:
  * milliseconds of saliency_map, sage (sampled), sage (exhaustive), mixup and
    cutmix, each jitted, and each as a fraction of one jitted PreActResNet18
    (width 64) vanilla train step (forward + backward + SGD update) at the same
    batch and image size;
  * the exhaustive search's optimality: the share of pairs where it picked the
    brute-force best offset, on saliency maps from the input gradients of a
    small CNN briefly trained on real CIFAR-10 images, and what the paper's 1%
    sampled search loses against that optimum.

The CIFAR-10 images come from tfds by default (downloaded when missing and
online), or from `--image_folder ROOT` or `--archive FOLDER.tar.gz`
(`common.add_data_flags`).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import optax

from sage_jax import augment
from sage_jax import input_pipeline
from sage_jax import models
from sage_jax.augment import rearrange
import common


def time_ms(fn, *args, repeats=10):
  """Median wall time of `fn(*args)` in ms, after one warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def make_train_step(model, tx):
  def loss_fn(params, batch_stats, images, targets):
    logits, updates = model.apply({"params": params, "batch_stats": batch_stats},
                                  images, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy(logits, targets).mean(), updates["batch_stats"]

  @jax.jit
  def step(params, batch_stats, opt_state, images, targets):
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch_stats, images, targets)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss
  return step, loss_fn


def train_step_ms(size, batch, repeats):
  model = models.create_model("preactresnet18", num_classes=10)
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  targets = jax.nn.one_hot(jnp.arange(batch) % 10, 10)
  variables = model.init(jax.random.key(1), images[:2], train=False)
  tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
  step, _ = make_train_step(model, tx)
  return time_ms(step, variables["params"], variables["batch_stats"],
                 tx.init(variables["params"]), images, targets, repeats=repeats)


def augment_costs(size, batch, repeats):
  key = jax.random.key(0)
  images = jax.random.normal(key, (batch, size, size, 3))
  labels = jnp.arange(batch) % 10
  grads = jax.random.normal(jax.random.key(1), images.shape)
  saliency = augment.saliency_map(grads)
  sage = jax.jit(augment.sage, static_argnames=("search", "sample_fraction",
                                                "num_classes"))
  mixup = jax.jit(augment.mixup, static_argnames=("num_classes",))
  cutmix = jax.jit(augment.cutmix, static_argnames=("num_classes",))
  return {
      "saliency_map": time_ms(jax.jit(augment.saliency_map), grads, repeats=repeats),
      "sage sampled": time_ms(functools.partial(sage, num_classes=10, upper_lambda=0.6),
                              key, images, labels, saliency, repeats=repeats),
      "sage exhaustive": time_ms(functools.partial(sage, num_classes=10,
                                                   upper_lambda=0.6,
                                                   search="exhaustive"),
                                 key, images, labels, saliency, repeats=repeats),
      "mixup": time_ms(functools.partial(mixup, num_classes=10), key, images, labels,
                       repeats=repeats),
      "cutmix": time_ms(functools.partial(cutmix, num_classes=10), key, images, labels,
                        repeats=repeats),
  }


def real_saliency(num_pairs, batch, train_steps, data_args):
  """Saliency maps of real test images (CIFAR-10 unless the data flags name
  another image folder) from a briefly trained small CNN."""
  data = common.load_data(data_args)
  info = data.info
  num_classes = info.num_classes
  model = models.create_model("preactresnet8", num_classes=num_classes, width=16)
  tx = optax.sgd(0.05, momentum=0.9, nesterov=True)
  variables = model.init(jax.random.key(0), jnp.zeros((2,) + tuple(info.image_shape)),
                         train=False)
  params, stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  step, loss_fn = make_train_step(model, tx)
  normalize = jax.jit(lambda x: input_pipeline.normalize(x, info.mean, info.std))
  batches = input_pipeline.train_batches(data.train_images, data.train_labels,
                                         global_batch_size=batch, seed=0, epoch=0)
  for _, b in zip(range(train_steps), batches):
    params, stats, opt_state, loss = step(params, stats, opt_state,
                                          normalize(b["image"]),
                                          jax.nn.one_hot(b["label"], num_classes))
  print(f"small CNN (preactresnet8 w16) trained {train_steps} steps, last loss "
        f"{float(loss):.3f}")

  @jax.jit
  def saliency_of(images, labels):
    grads = jax.grad(loss_fn, argnums=2, has_aux=True)(
        params, stats, normalize(images), jax.nn.one_hot(labels, num_classes))[0]
    return augment.saliency_map(grads)

  maps = []
  for start in range(0, num_pairs, batch):
    maps.append(saliency_of(data.test_images[start:start + batch],
                            data.test_labels[start:start + batch]))
  return jnp.concatenate(maps)[:num_pairs]


def optimality(saliency, batch, upper_lambda):
  """Share of pairs where the exhaustive search = brute force (and v lost by 1%)."""
  size = saliency.shape[1]
  offsets = jnp.asarray(augment.all_offsets(size, size))

  @jax.jit
  def one_batch(key, maps):
    lam_key, perm_key, sample_key = jax.random.split(key, 3)
    lam = upper_lambda * jax.random.uniform(lam_key)
    perm = jax.random.permutation(perm_key, maps.shape[0])
    sums = maps.sum((1, 2), keepdims=True)
    sal0 = maps / sums * lam
    sal1 = maps[perm] / sums[perm] * (1 - lam)
    score_all = jax.vmap(lambda a, b: jax.vmap(
        rearrange.kept_saliency, in_axes=(None, None, 0))(a, b, offsets))
    brute_scores = score_all(sal0, sal1)
    brute = offsets[jnp.argmax(brute_scores, axis=1)]
    fast = rearrange.exhaustive_best(sal0, sal1)
    sampled_offsets = rearrange.sample_offsets(sample_key, size, size, 0.01)
    sampled = jax.vmap(rearrange.best_of, in_axes=(0, 0, None))(sal0, sal1,
                                                                sampled_offsets)
    value = lambda o: jax.vmap(rearrange.kept_saliency)(sal0, sal1, o)
    best_value = brute_scores.max(axis=1)
    return (jnp.all(fast == brute, axis=1), value(fast) / best_value,
            value(sampled) / best_value)

  same, fast_ratio, sampled_ratio = [], [], []
  for index, start in enumerate(range(0, saliency.shape[0], batch)):
    s, f, r = one_batch(jax.random.key(index), saliency[start:start + batch])
    same.append(s); fast_ratio.append(f); sampled_ratio.append(r)
  same, fast_ratio, sampled_ratio = map(np.concatenate, (same, fast_ratio, sampled_ratio))
  return same, fast_ratio, sampled_ratio


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--step-repeats", type=int, default=3)
  parser.add_argument("--optimality-pairs", type=int, default=4096)
  parser.add_argument("--cnn-train-steps", type=int, default=200)
  common.add_data_flags(parser)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, devices: {jax.devices()}")

  for size in args.sizes:
    step = train_step_ms(size, args.batch, args.step_repeats)
    costs = augment_costs(size, args.batch, args.repeats)
    print(f"\n== batch {args.batch}, {size}x{size}x3 ==")
    print(f"PreActResNet18 (width 64) train step: {step:9.1f} ms")
    for name, ms in costs.items():
      print(f"{name:16s} {ms:9.2f} ms   {100 * ms / step:6.2f}% of a train step")

  saliency = real_saliency(args.optimality_pairs, args.batch, args.cnn_train_steps,
                           args)
  for upper_lambda in (0.6, 1.0):
    same, fast_ratio, sampled_ratio = optimality(saliency, args.batch, upper_lambda)
    print(f"\n== optimality on {same.size} CIFAR-10 pairs, λ ~ U(0, {upper_lambda}) ==")
    print(f"exhaustive picked the brute-force best offset: {100 * same.mean():.2f}% "
          f"({int((~same).sum())} misses); exact-score ratio to the optimum: "
          f"min {fast_ratio.min():.6f}")
    print(f"sampled 1% search keeps of the optimal v: mean "
          f"{100 * sampled_ratio.mean():.2f}%, p1 {100 * np.percentile(sampled_ratio, 1):.2f}%")


if __name__ == "__main__":
  main()
