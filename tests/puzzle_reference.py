"""NumPy reference of the Puzzle Mix mask energy (BASELINES §3.2-3.3) and its gco oracle.

Written from the spec, in float64, one readable step per line, to build test
cases for `sage_jax.augment.grid_mrf` and to pin the JAX energy construction
of `sage_jax.augment.puzzle_mix`:

    terms = puzzle_energy_terms(saliency, pixels, perm, lam, n)
    labels = gco_solve(release_discretise(terms, n))     # the release's α-β swap
    energy = grid_energy(labels, **terms)                # float §3.3 energy

Indexing conventions (all NHWC / row-major, as in the JAX code):

* blocks: the n×n grid of bs×bs pixel blocks, bs = H/n; block (r, c);
* vertical edge (r, c)-(r+1, c): `weight_vertical[:, r, c]`, shape (B, n-1, n);
* horizontal edge (r, c)-(r, c+1): `weight_horizontal[:, r, c]`, (B, n, n-1);
* labels l in {0, 1, 2}: block keeps the share m_l = 1 - l/2 of image i
  ("S", self) and 1 - m_l of its partner j = perm[i] ("Q").

`gco` (`pip install gco-wrapper`) is imported inside `gco_solve` only.
"""
import numpy as np

NUM_LABELS = 3
# Added inside log(P_l + eps) of the label prior (the release's constant).
PRIOR_EPS = 1e-8
# gco-wrapper multiplies int32 unaries by this when the pairwise table is float.
GCO_UNARY_SCALE = 100000
INT32_MAX = np.iinfo(np.int32).max


def avg_pool(x, size):
  """Mean over non-overlapping size×size windows: (B, H, W, ...) -> (B, H/size, W/size, ...)."""
  batch, height, width = x.shape[:3]
  rest = x.shape[3:]
  windows = x.reshape((batch, height // size, size, width // size, size) + rest)
  return windows.mean(axis=(2, 4))


def normalised_block_saliency(saliency, block_size):
  """s = avgpool(u, bs) / Σ_blocks avgpool(u, bs): (B, n, n), each map sums to 1."""
  pooled = avg_pool(np.asarray(saliency, np.float64), block_size)
  return pooled / pooled.sum(axis=(1, 2), keepdims=True)


def neighbour_penalty(upper_source, lower_source, k):
  """D_ab of every edge, for source a on the upper/left block and b on the lower/right.

  `upper_source`, `lower_source`: (B, n·k, n·k, C) images avg-pooled over
  neigh_size windows, so each block holds k×k pooled cells.

  Vertical edge (r, c)-(r+1, c): the last pooled row of block row r,
  (r+1)k - 1, of `upper_source` against the first pooled row of block row
  r+1, (r+1)k, of `lower_source`; |difference| averaged over the channels,
  then over the k pooled columns of block column c. Horizontal edges: the
  same with rows and columns swapped.

  Returns:
    (vertical (B, n-1, n), horizontal (B, n, n-1)) float64.
  """
  batch, rows, _, _ = upper_source.shape
  n = rows // k
  vertical = np.zeros((batch, n - 1, n))
  horizontal = np.zeros((batch, n, n - 1))
  for r in range(n - 1):
    last_row = (r + 1) * k - 1   # last pooled row of block row r
    first_row = (r + 1) * k      # first pooled row of block row r + 1
    diff = np.abs(upper_source[:, last_row] - lower_source[:, first_row])  # (B, n·k, C)
    per_column = diff.mean(axis=-1)                                       # (B, n·k)
    vertical[:, r] = per_column.reshape(batch, n, k).mean(axis=-1)
  for c in range(n - 1):
    last_col = (c + 1) * k - 1
    first_col = (c + 1) * k
    diff = np.abs(upper_source[:, :, last_col] - lower_source[:, :, first_col])
    per_row = diff.mean(axis=-1)
    horizontal[:, :, c] = per_row.reshape(batch, n, k).mean(axis=-1)
  return vertical, horizontal


def label_prior(lam, n, eta):
  """π_l = (η/n²)·(-log(P_l + 1e-8)), P = (λ², 2λ(1-λ), (1-λ)²): (B, 3) float64."""
  lam = np.asarray(lam, np.float64)
  probs = np.stack([lam ** 2, 2 * lam * (1 - lam), (1 - lam) ** 2], axis=-1)
  return eta / n ** 2 * -np.log(probs + PRIOR_EPS)


def pairwise_table():
  """(l_p - l_q)² / 4 for 3 labels: [[0, .25, 1], [.25, 0, .25], [1, .25, 0]]."""
  index = np.arange(NUM_LABELS, dtype=np.float64)
  return (index[:, None] - index[None, :]) ** 2 / (NUM_LABELS - 1) ** 2


def puzzle_energy_terms(saliency, images_pixel, perm, lam, n, beta=1.2, gamma=0.5,
                        eta=0.2, neigh_size=4):
  """The 3-label block-grid MRF of every pair (i, perm[i]) (BASELINES §3.3).

  Args:
    saliency: (B, H, W) non-negative saliency u (H = W, divisible by n); each
      map must have a positive sum.
    images_pixel: (B, H, W, C) images in pixel space [0, 1].
    perm: (B,) int partner indices j = perm[i].
    lam: λ, a float or (B,) floats in [0, 1] (share of image i).
    n: block count per side.
    beta, gamma, eta, neigh_size: the release's β, γ, η and smoothness pooling.

  Returns:
    dict with float64 `unary` (B, n, n, 3), `weight_vertical` (B, n-1, n),
    `weight_horizontal` (B, n, n-1) and `pairwise` (3, 3), so that
    E(l) = Σ_p unary[p, l_p] + Σ_edges w·pairwise[l_p, l_q].
  """
  saliency = np.asarray(saliency, np.float64)
  images_pixel = np.asarray(images_pixel, np.float64)
  perm = np.asarray(perm)
  batch, height, _ = saliency.shape
  block_size = height // n
  ns = min(neigh_size, block_size)
  k = block_size // ns
  beta_block = beta / (16 * n)  # β'

  s_self = normalised_block_saliency(saliency, block_size)  # s_i
  s_partner = s_self[perm]                                   # s_j
  pooled_self = avg_pool(images_pixel, ns)                   # P of x_i
  pooled_partner = pooled_self[perm]                         # P of x_j
  source = {"S": pooled_self, "Q": pooled_partner}

  # θ_ab = β'·γ·D_ab, a = source of the upper/left block, b = of the lower/right.
  theta_v, theta_h = {}, {}
  for a in "SQ":
    for b in "SQ":
      d_v, d_h = neighbour_penalty(source[a], source[b], k)
      theta_v[a + b] = beta_block * gamma * d_v
      theta_h[a + b] = beta_block * gamma * d_h

  # cost_S(p): what keeping x_i in p costs (the partner's saliency lost);
  # cost_Q(p) likewise for x_j. Each edge adds its data-smoothness halves.
  cost_s = s_partner.copy()
  cost_q = s_self.copy()
  for r in range(n - 1):  # vertical edges (r, c)-(r+1, c)
    t = {ab: theta_v[ab][:, r] for ab in theta_v}
    cost_s[:, r] += (t["SQ"] + t["SS"]) / 2       # upper block
    cost_q[:, r] += (t["QS"] + t["QQ"]) / 2
    cost_s[:, r + 1] += (t["QS"] + t["SS"]) / 2   # lower block
    cost_q[:, r + 1] += (t["SQ"] + t["QQ"]) / 2
  for c in range(n - 1):  # horizontal edges (r, c)-(r, c+1)
    t = {ab: theta_h[ab][:, :, c] for ab in theta_h}
    cost_s[:, :, c] += (t["SQ"] + t["SS"]) / 2    # left block
    cost_q[:, :, c] += (t["QS"] + t["QQ"]) / 2
    cost_s[:, :, c + 1] += (t["QS"] + t["SS"]) / 2  # right block
    cost_q[:, :, c + 1] += (t["SQ"] + t["QQ"]) / 2

  def edge_weight(t):
    return beta_block + (t["SQ"] + t["QS"] - t["SS"] - t["QQ"]) / 2

  lam = np.broadcast_to(np.asarray(lam, np.float64), (batch,))
  prior = label_prior(lam, n, eta)  # (B, 3)
  unary = np.zeros((batch, n, n, NUM_LABELS))
  for label in range(NUM_LABELS):
    keep = 1 - label / (NUM_LABELS - 1)  # m_l
    unary[..., label] = (keep * cost_s + (1 - keep) * cost_q
                         + prior[:, label, None, None])
  return {"unary": unary, "weight_vertical": edge_weight(theta_v),
          "weight_horizontal": edge_weight(theta_h), "pairwise": pairwise_table()}


def grid_energy(labels, unary, pairwise, weight_vertical, weight_horizontal):
  """float64 (B,) energy Σ_p unary[p, l_p] + Σ_edges w·pairwise[l_p, l_q].

  labels: int (B, n, n); the other arguments as `puzzle_energy_terms` returns.
  """
  labels = np.asarray(labels)
  unary = np.asarray(unary, np.float64)
  pairwise = np.asarray(pairwise, np.float64)
  data = np.take_along_axis(unary, labels[..., None], axis=-1)[..., 0].sum(axis=(1, 2))
  vertical = (np.asarray(weight_vertical, np.float64)
              * pairwise[labels[:, :-1, :], labels[:, 1:, :]]).sum(axis=(1, 2))
  horizontal = (np.asarray(weight_horizontal, np.float64)
                * pairwise[labels[:, :, :-1], labels[:, :, 1:]]).sum(axis=(1, 2))
  return data + vertical + horizontal


def release_discretise(terms, n):
  """What the release hands gco: everything ×1000·n², unary and weights cut to int32.

  The truncation is `astype(np.int32)` (toward zero) of float64 values here;
  the release truncates float32-rounded torch values, which can differ by one
  unit on rare ties. The pairwise table stays float32 (so gco-wrapper runs
  in its "float energy" mode: unary ×1e5, weights ×1e3, table ×1e2).

  Returns:
    dict with int32 `unary` (B, n, n, 3), `weight_vertical` (B, n-1, n),
    `weight_horizontal` (B, n, n-1) and float32 `pairwise` (3, 3).
  """
  scale = 1000 * n ** 2
  return {
      "unary": (scale * terms["unary"]).astype(np.int32),
      "weight_vertical": (scale * terms["weight_vertical"]).astype(np.int32),
      "weight_horizontal": (scale * terms["weight_horizontal"]).astype(np.int32),
      "pairwise": np.asarray(terms["pairwise"], np.float32),
  }


def gco_overflows(discrete):
  """(B,) bool: cases where gco-wrapper's unary ×1e5 overflows int32 (§3.4 quirk).

  The release then solves a wrapped-around energy; tests skip such cases.
  """
  largest = np.abs(discrete["unary"].astype(np.int64)).max(axis=(1, 2, 3))
  return largest * GCO_UNARY_SCALE > INT32_MAX


def gco_solve(discrete):
  """int32 (B, n, n) labels of gco's α-β swap (n_iter=-1) per case, as the release runs it."""
  import gco  # pylint: disable=g-import-not-at-top  (test-only oracle)
  unary = discrete["unary"]
  batch, n = unary.shape[:2]
  labels = np.zeros((batch, n, n), np.int32)
  for i in range(batch):
    flat = gco.cut_grid_graph(unary[i], discrete["pairwise"],
                              discrete["weight_vertical"][i],
                              discrete["weight_horizontal"][i],
                              n_iter=-1, algorithm="swap")
    labels[i] = np.asarray(flat).reshape(n, n)
  return labels
