"""NumPy reference of Co-Mixup's batch mixing (BASELINES §4.2-4.3) and its gco oracle.

Written from the spec, one step per line, in float64 except where the
release hands float32 arrays to gco. All random draws come in as arguments,
so the JAX code (`sage_jax.augment.co_mixup._co_mixup_labeling`) can be fed
the same draws:

    A = compatibility(saliency, chunk_size, window, omega)       # (P, m, m)
    c = block_costs(saliency, n)                                 # (B, n, n)
    z = labeling(c[chunk], A[p], alpha_draw, init, solver=gco_swap)
    mixed, labels = mix(z, images[chunk], targets[chunk])

Conventions: z[i, r, c, k] is the weight (0, 0.5 or 1) of input k in
block (r, c) of output i; `subproblem` returns the release's per-output
unary (n, n, L) and table (L, L) with L = m, m + 1 or m + 3 (the labels
actually in play, as the release builds them). Tie order of the top-3
selection: larger count first, then the smaller input index (our
assumption; `torch.topk` does not specify it). Only the chosen *set*
matters: the release then takes the three inputs in index order.

`gco` (`pip install gco-wrapper`) is imported inside `gco_swap` only.
"""
import numpy as np

PRIOR_EPS = 1e-8
MIXED_BONUS = 5e-4
STOP_TOLERANCE = 1e-6


def block_pool(saliency, n):
  """(B, H, W) -> (B, n, n) block means."""
  batch, height, width = saliency.shape
  size = height // n
  return saliency.reshape(batch, n, size, n, size).mean(axis=(2, 4))


def block_costs(saliency, n):
  """c_k(p) = −s̄_k(p): block means normalised to sum 1; zero maps uniform."""
  pooled = block_pool(np.asarray(saliency, np.float64), n)
  total = pooled.sum(axis=(1, 2), keepdims=True)
  safe = np.where(total > 0, total, 1.0)
  return -np.where(total > 0, pooled / safe, 1.0 / n ** 2)


def peaks(saliency, window):
  """(B, 2) (row, col) of the first max of the stride-1 window mean."""
  saliency = np.asarray(saliency, np.float64)
  batch, height, width = saliency.shape
  rows, cols = height - window + 1, width - window + 1
  means = np.zeros((batch, rows, cols))
  for r in range(rows):
    for c in range(cols):
      means[:, r, c] = saliency[:, r:r + window, c:c + window].mean(axis=(1, 2))
  flat = means.reshape(batch, -1).argmax(axis=1)
  return np.stack([flat // cols, flat % cols], axis=1)


def compatibility(saliency, chunk_size, window, omega):
  """(P, m, m) A per chunk: (1−ω)I + ω·A_dist/ΣA_dist·m (Â = 0 if ΣA_dist = 0).

  A_dist is the L1 distance of the peaks over the whole batch, then sliced
  into its diagonal chunk blocks (mixup_parallel.py).
  """
  z = peaks(saliency, window).astype(np.float64)
  distance = np.abs(z[:, None, :] - z[None, :, :]).sum(-1)       # (B, B)
  chunks = len(z) // chunk_size
  out = np.zeros((chunks, chunk_size, chunk_size))
  for p in range(chunks):
    part = slice(p * chunk_size, (p + 1) * chunk_size)
    block = distance[part, part]
    total = block.sum()
    scaled = block / total * chunk_size if total > 0 else np.zeros_like(block)
    out[p] = (1 - omega) * np.eye(chunk_size) + omega * scaled
  return out


def scaled_parameters(n, beta, gamma, eta, tau):
  area = n * n
  return beta / area, gamma / area, eta / area, tau * area


def objective(cost, z, beta_s, gamma_s):
  """The release's `obj_fn` (unthresholded) of one chunk."""
  unary = np.sum(np.moveaxis(cost, 0, -1)[None] * z)
  smooth = (np.sum((z[:, :-1] - z[:, 1:]) ** 2) + np.sum((z[:, :, :-1] - z[:, :, 1:]) ** 2))
  counts = z.sum(axis=(1, 2))
  diversity = np.sum(counts.sum(0) ** 2) - np.sum(counts ** 2)
  return unary + beta_s / 2 * smooth + gamma_s * diversity


def top_three(counts):
  """Indices of the 3 largest counts (ties: smaller index), in index order."""
  order = sorted(range(len(counts)), key=lambda k: (-counts[k], k))
  return sorted(order[:3])


def subproblem(cost, compat, z, output, sweep, add, gamma_s, tau_s):
  """The release's graph-cut problem for one output (`get_onehot_matrix` body).

  Returns:
    unary float64 (n, n, L), table float64 (L, L), mixed list of (a, b)
    input pairs of the labels m, m+1, ... in order.
  """
  m = cost.shape[0]
  counts = z.sum(axis=(1, 2))
  own = counts[output]
  others = counts.sum(axis=0) - own
  pressure = compat @ others
  threshold = (pressure > tau_s).astype(np.float64)
  modular = 2 * gamma_s * ((threshold * compat) @ others)     # (t * A) @ n
  plain = np.moveaxis(cost, 0, -1) + modular
  if add is not None:
    plain = plain + gamma_s * add[output]
  used = [k for k in range(m) if own[k] > 0]
  mixed = []
  if sweep > 0 and len(used) == 2:
    mixed = [(used[0], used[1])]
  elif sweep > 0 and len(used) >= 3:
    a, b, c = top_three(own)
    mixed = [(a, b), (a, c), (b, c)]
  size = m + len(mixed)
  unary = np.zeros(plain.shape[:2] + (size,))
  unary[..., :m] = plain
  table = 1.0 - np.eye(size)
  for j, (a, b) in enumerate(mixed):
    unary[..., m + j] = (plain[..., a] + plain[..., b]) / 2 - MIXED_BONUS
    for k in (a, b):
      table[m + j, k] = table[k, m + j] = 0.25
  return unary, table, mixed


def labels_to_weights(labels, m, mixed):
  """(n, n) labels -> (n, n, m) input weights."""
  out = np.zeros(labels.shape + (m,))
  for idx in np.ndindex(labels.shape):
    label = labels[idx]
    if label < m:
      out[idx + (label,)] = 1.0
    else:
      a, b = mixed[label - m]
      out[idx + (a,)] += 0.5
      out[idx + (b,)] += 0.5
  return out


def resolve_add(z):
  """The release's `resolve_label`: (m, m) 0/1 extra costs for the last sweep."""
  m = z.shape[0]
  used = z.sum(axis=(1, 2)) > 0
  add = np.zeros((m, m))
  for i1 in range(m):
    for i2 in range(i1 + 1, m):
      if np.array_equal(used[i1], used[i2]):
        nonzeros = np.flatnonzero(used[i1])
        if len(nonzeros) == 1:
          continue
        add[i1, nonzeros[0]] = 1.0
        add[i2, nonzeros[1]] = 1.0
  return add


def gco_swap(unary, table, beta_s):
  """Labels (n, n) from gco's α-β swap, called exactly as the release does."""
  import gco  # pylint: disable=g-import-not-at-top  (test-only oracle)
  n = unary.shape[0]
  flat = gco.cut_grid_graph(np.ascontiguousarray(unary, np.float32),
                            np.asarray(table, np.float32),
                            beta_s * np.ones((n - 1, n), np.float32),
                            beta_s * np.ones((n, n - 1), np.float32),
                            algorithm="swap")
  return np.asarray(flat).reshape(n, n)


def grid_energy(labels, unary, table, beta_s):
  """Σ unary + β'·Σ_edges table[l_p, l_q] of one (n, n) labelling."""
  rows, cols = np.indices(labels.shape)
  data = unary[rows, cols, labels].sum()
  pair = table[labels[:-1], labels[1:]].sum() + table[labels[:, :-1], labels[:, 1:]].sum()
  return data + beta_s * pair


def brute_force(unary, table, beta_s):
  """Exact minimiser by enumeration (tiny grids only); first minimum wins.

  Labellings are enumerated in row-major lexicographic order (cell (0, 0)
  the most significant digit).
  """
  n, _, size = unary.shape
  flat = np.stack(np.meshgrid(*[np.arange(size)] * (n * n), indexing="ij"), -1)
  labels = flat.reshape(-1, n, n)
  rows, cols = np.indices((n, n))
  data = unary[rows, cols, labels].sum(axis=(1, 2))
  pair = (table[labels[:, :-1], labels[:, 1:]].sum(axis=(1, 2))
          + table[labels[:, :, :-1], labels[:, :, 1:]].sum(axis=(1, 2)))
  return labels[np.argmin(data + beta_s * pair)]


def labeling(cost, compat, alpha_draw, init, *, beta, gamma, eta, tau, num_sweeps,
             solver=gco_swap, trace=None):
  """The release's `get_onehot_matrix` for one chunk, draws given.

  Args:
    cost: (m, n, n) block costs −s̄ before the prior.
    compat: (m, m) A.
    alpha_draw: (m,) the Dirichlet draw.
    init: int (m, n, n) initial labelling.
    solver: `(unary (n,n,L), table (L,L), β') -> (n, n)` labels.
    trace: optional dict, filled with counts of the branches taken.

  Returns:
    float64 (m, n, n, m) assignment z.
  """
  m, n, _ = cost.shape
  beta_s, gamma_s, eta_s, tau_s = scaled_parameters(n, beta, gamma, eta, tau)
  cost = cost - eta_s * np.log(alpha_draw + PRIOR_EPS)[:, None, None]
  z = np.zeros((m, n, n, m))
  for i in range(m):
    for idx in np.ndindex(n, n):
      z[(i,) + idx + (init[(i,) + idx],)] = 1.0
  previous = objective(cost, z, beta_s, gamma_s)
  add = None
  if trace is not None:
    trace.update(pair=0, triple=0, threshold=0, add=0, sweeps=0)
  for sweep in range(num_sweeps):
    for i in range(m):
      unary, table, mixed = subproblem(cost, compat, z, i, sweep, add, gamma_s, tau_s)
      if trace is not None:
        counts = z.sum(axis=(1, 2))
        others = counts.sum(0) - counts[i]
        trace["threshold"] += int(np.any(compat @ others > tau_s))
        trace["pair"] += int(len(mixed) == 1)
        trace["triple"] += int(len(mixed) == 3)
      labels = solver(unary, table, beta_s)
      z[i] = labels_to_weights(labels, m, mixed)
    if sweep == num_sweeps - 2:
      add = resolve_add(z)
      if trace is not None:
        trace["add"] += int(add.sum())
    energy = objective(cost, z, beta_s, gamma_s)
    if trace is not None:
      trace["sweeps"] += 1
    if abs(previous - energy) / abs(energy) < STOP_TOLERANCE:
      break
    previous = energy
  return z


def mix(z, images, targets):
  """x̃_i = Σ_k M_ik ⊙ x_k (nearest upsampling); labels Σ_k share_ik·y_k."""
  m, n = z.shape[:2]
  size = images.shape[1] // n
  masks = np.repeat(np.repeat(z, size, axis=1), size, axis=2)    # (m, H, W, m)
  mixed = np.einsum("ohwk,khwc->ohwc", masks, np.asarray(images, np.float64))
  share = z.mean(axis=(1, 2))                                     # (m_out, m_in)
  return mixed, share @ np.asarray(targets, np.float64)


def statistics(assignments):
  """Same definitions as `augment.co_mixup_statistics`, on a list of (m,n,n,m) z."""
  shares = np.stack([z.mean(axis=(1, 2)) for z in assignments])  # (P, out, in)
  used = shares > 0
  return {
      "inputs_per_output": float(used.sum(-1).mean()),
      "max_reuse": float(shares.sum(1).max()),
      "max_outputs_per_input": float(used.sum(1).max()),
  }
