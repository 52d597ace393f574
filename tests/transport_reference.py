"""Plain NumPy reference of Puzzle Mix's transport step (BASELINES §3.5).

Written from the spec and the facts of the released `mixup.py`
(`cost_matrix`, `mask_transport`, `transport_image`), one image at a time and
without any cleverness, so that it can serve as the oracle of the JAX port in
`sage_jax.augment.transport`:

- cost matrix C[a, b] = ‖pos_a − pos_b‖² / (T − 1)², float32, cells row-major;
- cost[a, b] = ε·C[a, b] − s[a]·z[b] with z = (mask > 0), float32 arithmetic;
- T rounds: each row takes the first argmin of its row; the winner of column b
  is the first row attaining the minimum of (plan ⊙ cost)[:, b] over all rows
  (non-choosers count as 0); the winning plan keeps only winners who chose b;
  every loser pays cost[a, b_a] += 1;
- the plan of the last round is returned;
- output cell b = Σ_a plan[a, b] · patch a (cells nobody won are 0).
"""
import numpy as np


def cost_matrix(grid_size):
  """float32 (T², T²) squared cell distances over (T − 1)², row-major cells."""
  cells = grid_size * grid_size
  cost = np.zeros((cells, cells), np.float32)
  for a in range(cells):
    row_a, col_a = divmod(a, grid_size)
    for b in range(cells):
      row_b, col_b = divmod(b, grid_size)
      cost[a, b] = (row_a - row_b) ** 2 + (col_a - col_b) ** 2
  return cost / np.float32((grid_size - 1) ** 2)


def transport_plan(mask, saliency, eps=0.8, num_rounds=None):
  """The released plan of one image.

  Args:
    mask: (T, T) share of the image kept per cell; cells with mask > 0 accept patches.
    saliency: (T, T) float32 saliency of the image's cells.
    eps: weight of the distance cost.
    num_rounds: rounds of choose/resolve; the release runs T.

  Returns:
    float32 (T², T²) 0/1 plan; plan[a, b] = 1 moves patch a into cell b.
  """
  grid_size = mask.shape[0]
  cells = grid_size * grid_size
  rounds = grid_size if num_rounds is None else num_rounds
  kept = (np.asarray(mask) > 0).astype(np.float32).reshape(cells)
  sal = np.asarray(saliency, np.float32).reshape(cells)
  # float32 throughout, each operation rounded on its own, like the torch code.
  cost = np.float32(eps) * cost_matrix(grid_size) - sal[:, None] * kept[None, :]
  win = np.zeros((cells, cells), np.float32)
  for _ in range(rounds):
    plan = np.zeros((cells, cells), np.float32)
    for a in range(cells):
      plan[a, np.argmin(cost[a])] = 1.0        # np.argmin: the first minimum
    fight = plan * cost
    win = np.zeros((cells, cells), np.float32)
    for b in range(cells):
      win[np.argmin(fight[:, b]), b] = 1.0
    win *= plan
    cost = cost + (1.0 - win) * plan
  return win


def transport_plans(masks, saliencies, eps=0.8, num_rounds=None):
  """float32 (B, T², T²): `transport_plan` of every image of the batch."""
  return np.stack([transport_plan(m, s, eps, num_rounds)
                   for m, s in zip(masks, saliencies)])


def transport_image(image, plan, grid_size):
  """(H, W, C) image with cell b ← Σ_a plan[a, b]·(patch a), as a plain loop."""
  height, width, _ = image.shape
  cell_h, cell_w = height // grid_size, width // grid_size
  image = np.asarray(image, np.float32)
  out = np.zeros_like(image)
  cells = grid_size * grid_size
  for b in range(cells):
    row_b, col_b = divmod(b, grid_size)
    target = out[row_b * cell_h:(row_b + 1) * cell_h, col_b * cell_w:(col_b + 1) * cell_w]
    for a in range(cells):
      if plan[a, b]:
        row_a, col_a = divmod(a, grid_size)
        target += plan[a, b] * image[row_a * cell_h:(row_a + 1) * cell_h,
                                     col_a * cell_w:(col_a + 1) * cell_w]
  return out
