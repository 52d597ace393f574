"""Energy and speed of the Puzzle Mix and Co-Mixup mask solvers against gco's α-β swap.

    pip install gco-wrapper        # the oracle (3.0.9 tested); only this script imports it
    python benchmarks/solver_bench.py --image_folder=DIR [--cases 2048] [--batch 128]
    python benchmarks/solver_bench.py --image_folder=DIR --problem co_mixup [--cases 2010] [--draws 5]

DIR holds one subfolder of images per class (e.g. CIFAR-10's test split as
JPEG/PNG files); images are read in sorted order, at most
`--images_per_class` per class, resized to 32×32 if needed.

For each block count n ∈ {2, 4, 8, 16} it builds `--cases` Puzzle Mix mask
energies (docs/baselines.md §3.3) the way training does: saliency = root mean square
over channels of the input gradient of a randomly initialised PreActResNet8
in eval mode (softmax cross-entropy); random partners (a permutation per
batch) and λ ~ U(0, 1) per case; the energy terms from
`sage_jax.augment.block_energy`. It then solves every case with

* `grid_mrf.solve_grid_mrf` (jitted, route "auto", one device), and
* gco's α-β swap as the release calls it (`gco.cut_grid_graph(...,
  algorithm='swap')` on the terms ×1000·n² truncated to int32, one call per
  case on the host; cases where gco's own ×1e5 scaling overflows int32 are
  skipped and counted, docs/baselines.md §3.4),

(``--problem puzzle_mix``, the default) and prints, per n: the cases, the share where our float energy is ≤ gco's +
1e-6, the share strictly better, the mean and worst relative gap
(E_ours - E_gco)/|E_gco| (positive = worse), and milliseconds per batch
(median over `--repeats` calls after a compile call; wall and process CPU
time) of our solver and of gco (wall) over the same batch.

``--problem co_mixup`` builds Co-Mixup's per-output subproblems
(docs/baselines.md §4.3: 4×4 blocks, 20 inputs per chunk, β' = 0.32/16,
γ' = 1/16, η' = 0.05/16, τ' = 13.28, ω = 0.001) from the same saliency: per
case 20 random images, c_k = −(8×8 block means, summing to 1), α ~
Dirichlet(2·1), a random symmetric compatibility Â, the other 19 outputs
labelled at random (half uniformly, half with 1-3 inputs each), the
thresholded modular penalty, and 0 / 1 / 3 half-half labels (L = 20 / 21 /
23) in turn. gco gets each case as the release passes it (float32, its own
L); ours gets batches of `--co_mixup_batch` (5, the chunks of one device)
with L = 23, unused labels at `grid_mrf.DISABLED_UNARY` and the half-half
labels preferred, route "moves", each problem solved on its own under
`jax.vmap` as Co-Mixup calls it. For each of `--draws` draws of cases
(seeds `--seed`, `--seed` + 1, ...) it prints the share of cases ≤ gco +
1e-6, strictly lower, the mean and worst relative gap, the cases worse by
more than 0.5 %, our ms per call (wall / process CPU, median) and per
training step (80 sequential calls: 4 sweeps × 20 outputs), and gco's ms
per call (one problem, wall).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from sage_jax import augment
from sage_jax import models
from sage_jax.augment import grid_mrf

IMAGE_SIZE = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Only used to normalise the model's input; the energy uses pixels in [0, 1].
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)
# gco-wrapper multiplies int32 unaries by 1e5 when the pairwise table is float.
GCO_UNARY_SCALE = 100000


def load_images(folder: str, per_class: int):
  """(uint8 (N, 32, 32, 3), int labels (N,)) from `folder/<class>/<image>`."""
  classes = sorted(d for d in os.listdir(folder)
                   if os.path.isdir(os.path.join(folder, d)))
  if not classes:
    raise SystemExit(f"--image_folder={folder} has no class subfolders.")
  images, labels = [], []
  for index, name in enumerate(classes):
    files = sorted(f for f in os.listdir(os.path.join(folder, name))
                   if f.lower().endswith(IMAGE_SUFFIXES))[:per_class]
    for file in files:
      image = Image.open(os.path.join(folder, name, file)).convert("RGB")
      if image.size != (IMAGE_SIZE, IMAGE_SIZE):
        image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
      images.append(np.asarray(image))
      labels.append(index)
  if len(images) < 2:
    raise SystemExit(f"--image_folder={folder}: found {len(images)} images; need ≥ 2.")
  return np.stack(images), np.asarray(labels)


def model_saliency(images: np.ndarray, labels: np.ndarray, batch: int) -> np.ndarray:
  """float32 (N, 32, 32): RMS over channels of ∂CE/∂x of a random PreActResNet8."""
  model = models.create_model("preactresnet8", num_classes=int(labels.max()) + 1, width=16)
  normalise = lambda x: (x.astype(jnp.float32) / 255.0 - CIFAR_MEAN) / CIFAR_STD
  variables = jax.jit(lambda key, x: model.init(key, x, train=False))(
      jax.random.key(0, impl="rbg"), normalise(jnp.asarray(images[:2])))

  @jax.jit
  def saliency(x, y):
    def loss(inputs):
      logits = model.apply(variables, inputs, train=False)   # eval: running stats
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss)(normalise(x))
    return jnp.sqrt(jnp.mean(grads * grads, axis=-1))

  parts = []
  for start in range(0, len(images), batch):
    x, y = images[start:start + batch], labels[start:start + batch]
    pad = batch - len(x)   # one compiled shape
    x = np.concatenate([x, np.repeat(x[:1], pad, 0)]) if pad else x
    y = np.concatenate([y, np.repeat(y[:1], pad, 0)]) if pad else y
    parts.append(np.asarray(saliency(x, y))[:batch - pad])
  return np.concatenate(parts)


def float64_energy(labels, unary, weight_vertical, weight_horizontal, table):
  """The docs/baselines.md §3.3 energy of int labels (B, n, n) in float64."""
  unary, table = np.asarray(unary, np.float64), np.asarray(table, np.float64)
  data = np.take_along_axis(unary, labels[..., None], -1)[..., 0].sum((1, 2))
  vertical = (np.asarray(weight_vertical, np.float64)
              * table[labels[:, :-1], labels[:, 1:]]).sum((1, 2))
  horizontal = (np.asarray(weight_horizontal, np.float64)
                * table[labels[:, :, :-1], labels[:, :, 1:]]).sum((1, 2))
  return data + vertical + horizontal


def gco_swap(unary, weight_vertical, weight_horizontal, table, n):
  """Release-style α-β swap per case: (labels (B, n, n), overflow mask (B,), seconds)."""
  import gco  # pylint: disable=g-import-not-at-top  (benchmark-only oracle)
  scale = 1000 * n * n
  unary_int = (scale * np.asarray(unary, np.float64)).astype(np.int32)
  vertical_int = (scale * np.asarray(weight_vertical, np.float64)).astype(np.int32)
  horizontal_int = (scale * np.asarray(weight_horizontal, np.float64)).astype(np.int32)
  table32 = np.asarray(table, np.float32)
  overflow = (np.abs(unary_int.astype(np.int64)).max(axis=(1, 2, 3)) * GCO_UNARY_SCALE
              > np.iinfo(np.int32).max)
  labels = np.zeros(unary_int.shape[:3], np.int32)
  start = time.perf_counter()
  for i in range(len(unary_int)):
    flat = gco.cut_grid_graph(unary_int[i], table32, vertical_int[i], horizontal_int[i],
                              n_iter=-1, algorithm="swap")
    labels[i] = np.asarray(flat).reshape(n, n)
  return labels, overflow, time.perf_counter() - start


CO_MIXUP = dict(inputs=20, max_labels=23, beta=0.32 / 16, gamma=1.0 / 16,
                eta=0.05 / 16, tau=0.83 * 16, omega=0.001, mix_bonus=5e-4,
                calls_per_step=80)


def co_mixup_cases(saliency: np.ndarray, num_cases: int, seed: int):
  """[(float64 unary (4, 4, L), table (L, L))], L = 20, 21, 23 in turn."""
  c = CO_MIXUP
  k = c["inputs"]
  rng = np.random.default_rng(seed)
  pooled = saliency.astype(np.float64).reshape(-1, 4, 8, 4, 8).mean(axis=(2, 4))
  pooled = pooled / pooled.sum(axis=(1, 2), keepdims=True)
  cases = []
  for case in range(num_cases):
    index = rng.choice(len(saliency), k, replace=False)
    alpha = rng.dirichlet(2.0 * np.ones(k))
    cost = -pooled[index] - c["eta"] * np.log(alpha + 1e-8)[:, None, None]
    a_hat = rng.uniform(0.0, 1.0, (k, k))
    a_hat = a_hat + a_hat.T
    np.fill_diagonal(a_hat, 0.0)
    compat = (1 - c["omega"]) * np.eye(k) + c["omega"] * a_hat / a_hat.sum() * k
    if rng.uniform() < 0.5:
      others = rng.integers(0, k, (k - 1, 16))
    else:
      others = np.stack([rng.choice(rng.choice(k, rng.integers(1, 4), replace=False), 16)
                         for _ in range(k - 1)])
    counts = np.bincount(others.ravel(), minlength=k).astype(np.float64)
    over = (compat @ counts > c["tau"]).astype(np.float64)
    penalty = 2 * c["gamma"] * (over[None, :] * compat) @ counts
    plain = np.moveaxis(cost + penalty[:, None, None], 0, -1)
    num_mixed = (0, 1, 3)[case % 3]
    if num_mixed == 1:
      pairs = [tuple(rng.choice(k, 2, replace=False))]
    elif num_mixed == 3:
      a, b, d = rng.choice(k, 3, replace=False)
      pairs = [(a, b), (a, d), (b, d)]
    else:
      pairs = []
    table = 1.0 - np.eye(k + num_mixed)
    mixed = [0.5 * (plain[..., i] + plain[..., j]) - c["mix_bonus"] for i, j in pairs]
    unary = np.concatenate([plain] + [m[..., None] for m in mixed], axis=-1)
    for q, pair in enumerate(pairs):
      for member in pair:
        table[k + q, member] = table[member, k + q] = 0.25
    cases.append((np.ascontiguousarray(unary), table))
  return cases


def co_mixup_padded(cases):
  """float32 (N, 4, 4, 23) unaries (unused labels disabled), (N, 23, 23) tables."""
  size = CO_MIXUP["max_labels"]
  unary = np.full((len(cases), 4, 4, size), grid_mrf.DISABLED_UNARY, np.float32)
  tables = np.ones((len(cases), size, size), np.float32)
  for b, (u, table) in enumerate(cases):
    unary[b, ..., :u.shape[-1]] = u
    tables[b, :u.shape[-1], :u.shape[-1]] = table
    tables[b, np.arange(size), np.arange(size)] = 0.0
  return unary, tables


def co_mixup_energy(labels, unary, table):
  """float64 energy of a (4, 4) labelling of the float32-rounded case."""
  beta = CO_MIXUP["beta"]
  unary = np.asarray(unary, np.float32).astype(np.float64)
  table = np.asarray(table, np.float32).astype(np.float64)
  data = np.take_along_axis(unary, labels[..., None], -1).sum()
  pairs = table[labels[:-1], labels[1:]].sum() + table[labels[:, :-1], labels[:, 1:]].sum()
  return data + np.float64(np.float32(beta)) * pairs


def co_mixup_table(args, saliency):
  """Prints the Co-Mixup comparison (see the module docstring)."""
  import gco  # pylint: disable=g-import-not-at-top  (benchmark-only oracle)
  beta = np.float32(CO_MIXUP["beta"])
  size = CO_MIXUP["max_labels"]
  preferred = np.arange(size) >= CO_MIXUP["inputs"]      # the half-half labels
  batch = args.co_mixup_batch
  vertical = np.full((3, 4), beta, np.float32)
  horizontal = np.full((4, 3), beta, np.float32)
  # One problem per call under vmap over the chunks, as Co-Mixup calls it.
  solver = jax.jit(jax.vmap(lambda u, t: grid_mrf.solve_grid_mrf(
      u[None], t, vertical[None], horizontal[None], method="moves",
      preferred_labels=preferred)[0]))
  steps = CO_MIXUP["calls_per_step"]
  print(f"Co-Mixup subproblems (4×4, L = 20/21/23 padded to 23, route 'moves', batch {batch})")
  print(f"{'seed':>5} {'cases':>6} {'≤ gco':>8} {'better':>7} {'mean gap':>10} "
        f"{'worst gap':>10} {'> 0.5%':>7} {'ours ms':>8} {'ours cpu':>8} {'ms/step':>8} "
        f"{'gco ms':>7}")
  for seed in range(args.seed, args.seed + args.draws):
    cases = co_mixup_cases(saliency, args.cases, seed)
    start = time.perf_counter()
    gco_labels = [np.asarray(gco.cut_grid_graph(
        np.ascontiguousarray(u, np.float32), np.ascontiguousarray(t, np.float32),
        vertical, horizontal, algorithm="swap")).reshape(4, 4) for u, t in cases]
    gco_ms = 1e3 * (time.perf_counter() - start) / len(cases)
    unary, tables = co_mixup_padded(cases)
    pad = -len(cases) % batch
    unary = np.concatenate([unary, np.repeat(unary[:1], pad, 0)])
    tables = np.concatenate([tables, np.repeat(tables[:1], pad, 0)])
    ours_ms = time_ms(solver, (unary[:batch], tables[:batch]), args.repeats)
    labels = np.concatenate([np.asarray(solver(unary[i:i + batch], tables[i:i + batch]))
                             for i in range(0, len(unary), batch)])[:len(cases)]
    ours = np.array([co_mixup_energy(l, u, t) for l, (u, t) in zip(labels, cases)])
    theirs = np.array([co_mixup_energy(l, u, t) for l, (u, t) in zip(gco_labels, cases)])
    gap = (ours - theirs) / np.abs(theirs)
    print(f"{seed:>5} {len(cases):>6} {100 * np.mean(ours <= theirs + 1e-6):>7.2f}% "
          f"{100 * np.mean(ours < theirs - 1e-6):>6.2f}% {gap.mean():>10.2e} "
          f"{gap.max():>10.2e} {int(np.sum(gap > 0.005)):>7} {ours_ms[0]:>8.2f} "
          f"{ours_ms[1]:>8.2f} {steps * ours_ms[0]:>8.1f} {gco_ms:>7.3f}", flush=True)
  print(f"\ngap = (E_ours - E_gco)/|E_gco| on the float energy (positive: ours "
        f"worse); '≤ gco' allows +1e-6; '> 0.5%': cases worse than gco by more than "
        f"0.5%; ours: ms per call of {batch} problems (median wall / process CPU) "
        f"and per step of {steps} sequential calls; gco: ms per problem (wall).")


def time_ms(fn, args, repeats):
  """(wall, process CPU) ms per call, medians after a compile call.

  The CPU time (all threads of this process) is the steadier figure on a
  shared machine, where the wall time also counts other processes' turns.
  """
  jax.block_until_ready(fn(*args))   # compile
  wall, cpu = [], []
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    wall.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return 1e3 * float(np.median(wall)), 1e3 * float(np.median(cpu))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--image_folder", required=True,
                      help="folder of class subfolders of images (e.g. CIFAR-10 test)")
  parser.add_argument("--images_per_class", type=int, default=100)
  parser.add_argument("--cases", type=int, default=2048, help="cases per block count")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--block_nums", type=int, nargs="+", default=[2, 4, 8, 16])
  parser.add_argument("--method", default="auto", choices=grid_mrf.METHODS)
  parser.add_argument("--problem", default="puzzle_mix", choices=("puzzle_mix", "co_mixup"))
  parser.add_argument("--co_mixup_batch", type=int, default=5,
                      help="problems per solver call for --problem co_mixup")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--draws", type=int, default=1,
                      help="--problem co_mixup: draws of cases, seeds --seed, --seed + 1, ...")
  args = parser.parse_args()
  try:
    import gco  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise SystemExit("needs gco: pip install gco-wrapper") from None

  print(f"jax {jax.__version__}, device: {jax.devices()[0]} "
        f"({jax.devices()[0].device_kind}), {os.cpu_count()} host cores")
  images, labels = load_images(args.image_folder, args.images_per_class)
  saliency = model_saliency(images, labels, args.batch)
  pixels = images.astype(np.float32) / 255.0
  print(f"{len(images)} images; saliency from a random PreActResNet8 (w16, eval mode)")
  if args.problem == "co_mixup":
    co_mixup_table(args, saliency)
    return
  batches = -(-args.cases // args.batch)
  rng = np.random.default_rng(args.seed)

  header = (f"{'n':>3} {'route':>8} {'cases':>6} {'skip':>5} {'≤ gco':>8} "
            f"{'better':>7} {'mean gap':>10} {'worst gap':>10} {'ours ms':>8} "
            f"{'ours cpu':>8} {'gco ms':>8}")
  rows = []
  for n in args.block_nums:
    energy_fn = jax.jit(lambda s, x, p, lam, n=n: augment.block_energy(
        s, x, p, lam, block_num=n))
    solver, table = None, None
    ours, theirs, skipped, gco_seconds, solver_ms = [], [], 0, 0.0, None
    for _ in range(batches):
      index = rng.integers(0, len(images), args.batch)
      perm = rng.permutation(args.batch).astype(np.int32)
      lam = rng.uniform(0.0, 1.0, args.batch).astype(np.float32)
      terms = energy_fn(jnp.asarray(saliency[index]), jnp.asarray(pixels[index]),
                        jnp.asarray(perm), jnp.asarray(lam))
      problem = (terms.unary, terms.weight_vertical, terms.weight_horizontal)
      if solver is None:
        # (l_p - l_q)²/4: a constant of the compiled solver, as in training.
        table = np.asarray(terms.pairwise)
        solver = jax.jit(lambda u, wv, wh, table=table: grid_mrf.solve_grid_mrf(
            u, jnp.asarray(table), wv, wh, method=args.method))
        solver_ms = time_ms(solver, problem, args.repeats)
      labels_ours = np.asarray(solver(*problem))
      host = [np.asarray(x) for x in problem]
      labels_gco, overflow, seconds = gco_swap(*host, table, n)
      gco_seconds += seconds
      keep = ~overflow
      skipped += int(overflow.sum())
      ours.append(float64_energy(labels_ours[keep], *(h[keep] for h in host), table))
      theirs.append(float64_energy(labels_gco[keep], *(h[keep] for h in host), table))
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    gap = (ours - theirs) / np.abs(theirs)
    route = args.method
    if route == "auto":
      route = grid_mrf.choose_method(n, 3, table)
      route = "lifted" if route == "run time" else route   # Puzzle Mix weights > 0
    rows.append(f"{n:>3} {route:>8} {len(ours):>6} {skipped:>5} "
                f"{100 * np.mean(ours <= theirs + 1e-6):>7.2f}% "
                f"{100 * np.mean(ours < theirs - 1e-6):>6.2f}% "
                f"{gap.mean():>10.2e} {gap.max():>10.2e} {solver_ms[0]:>8.1f} "
                f"{solver_ms[1]:>8.1f} {1e3 * gco_seconds / batches:>8.1f}")
    print(rows[-1] if len(rows) > 1 else header + "\n" + rows[-1], flush=True)

  print(f"\nbatch {args.batch}; gap = (E_ours - E_gco)/|E_gco| on the float §3.3 energy "
        "(positive: ours worse); '≤ gco' allows +1e-6; 'skip': gco int32 overflow "
        "cases; ms per batch: ours jitted on one device (median wall / process CPU "
        "time), gco on the host (wall).")


if __name__ == "__main__":
  main()
