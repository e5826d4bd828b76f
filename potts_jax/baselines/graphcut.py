r"""Hard pseudo-labels by graph cut: alpha-expansion on the grid Potts energy.

The discrete problem (hard self-labeling, paper appendix A and Table 4's
"hard" row): with ``σ = softmax(logits)`` fixed, find labels ``l ∈ {0..K-1}``
per pixel minimising::

    E(l) = Σ_i D_i(l_i) + Σ_{(i,j)∈N} V_ij [l_i ≠ l_j]
    D_i(l) = η (−ln σ_i^l) on valid unlabeled pixels, 0 elsewhere,
    V_ij = λ w_ij   (:func:`potts_jax.neighborhoods.affinities`),

scribbled pixels fixed to their label (any other label costs ∞) and padding
pixels (254) in no term. This is exactly :func:`potts_jax.solver.energy` of
the one-hot ``y = onehot(l)`` with ``cross_entropy="ce"`` and
``relaxation="bl"``: ``H_CE(σ, e_l) = −ln σ^l`` and ``P_BL(e_a, e_b) = 1 −
e_aᵀe_b = [a ≠ b]``; ``−ln`` is guarded as in :func:`potts_jax.potts.safe_log`
(at most ``−ln EPS`` = 69.08).

Alpha-expansion (Boykov, Veksler & Zabih 2001) cycles over labels ``α``; each
move lets every free pixel either keep its label (``x_i = 0``) or switch to
``α`` (``x_i = 1``) and takes the best such move, a binary problem solved
exactly by one min cut (PyMaxflow). Cycles repeat until no move lowers E.

The move's graph (derivation). For a pair ``(i, j)`` with current labels
``a = l_i``, ``b = l_j`` and weight ``V``, the binary pair energy is::

    E(0,0) = A = V[a ≠ b]   E(0,1) = B = V[a ≠ α]
    E(1,0) = C = V[α ≠ b]   E(1,1) = D = 0

and for any such table, with ``c = (B + C − A − D) / 2``::

    E(x_i, x_j) = A + (C − A − c) x_i + (B − A − c) x_j + c [x_i ≠ x_j]

(check the four cases). ``B + C − A − D = V([a≠α] + [α≠b] − [a≠b]) ≥ 0`` by
the triangle inequality of the Potts metric (exactly, in floating point too:
the terms are 0 or V), so the last term is a pair of edges ``i ⇄ j`` of
capacity ``c``: ``V`` when ``a = b`` (then the linear terms vanish, the
classic construction) and ``V/2`` when ``a, b, α`` all differ (linear terms
``−V/2`` each, in place of BVZ's auxiliary node). A pixel that cannot move (a
scribble of another label, padding, or already ``α``) is a constant ``x = 0``:
a pair with one fixed end leaves the linear term ``(C − A) x_i`` (``j``
fixed) or ``(B − A) x_j`` (``i`` fixed), and one with two a constant. Each
pixel's linear coefficient ``u_i`` (its own ``D_i(α) − D_i(l_i)`` plus the
pair terms) becomes a terminal edge: source capacity ``max(u_i, 0)`` (cut
when ``x_i = 1``, on the sink side) and sink capacity ``max(−u_i, 0)``. All
arrays are ``[H, W]`` per offset, so the graph is built by one
``add_grid_edges`` per offset (a structure with a single neighbour, the
per-pixel capacities, ``symmetric=True``) and one ``add_grid_tedges``: no
Python loop over pixels. Scribbles are hard constraints without a big-M
constant: their pixels never enter a move except as fixed ends.

Guarantees: every move is optimal, so E never increases; for K = 2 the
converged labelling is a global minimum (for the minimiser ``x*`` and a
converged ``l``, ``E(l) ≤ E(l ∨ x*)`` and ``E(l) ≤ E(l ∧ x*)`` are expansion
moves, and submodularity gives ``E(l ∨ x*) + E(l ∧ x*) ≤ E(l) + E(x*)``); for
K ≥ 3 it is within a factor 2 of the global minimum (the Potts bound, as
``D ≥ 0``).

From JAX, :func:`hard_labels_graphcut` calls the cuts through
``jax.pure_callback``: they run **on the host CPU, one image after another,
outside XLA**, after the device-to-host copy of the unaries and weights
(usable under ``jit``, ``vmap``, ``shard_map`` and ``pmap``, where each device
calls the host with its own images). There is no gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import maxflow
import numpy as np

from potts_jax import labels as label_codes
from potts_jax import neighborhoods
from potts_jax import potts
from potts_jax import solver
#: Neighbourhoods the graph cut supports (grid ones; dense is not a grid).
NEIGHBORHOODS = ("nn4", "nn8")


def unary_costs(logits: jax.Array, labels: jax.Array, eta: float) -> jax.Array:
  """``D = η (−ln σ)`` on valid unlabeled pixels, 0 elsewhere.

  The same float32 terms as :func:`potts_jax.solver.energy` with ``ce``.

  Args:
    logits: ``[B, H, W, K]`` network logits (no gradient is taken).
    labels: ``[B, H, W]`` int: class, 255 unlabeled, 254 padding.
    eta: weight of the unary term.

  Returns:
    ``[B, H, W, K]`` float32, nonnegative.
  """
  sigma = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32))
  weight = eta * label_codes.unlabeled(labels).astype(jnp.float32)
  return -weight[..., None] * potts.safe_log(sigma)


def pair_costs(image: jax.Array, labels: jax.Array, *, lam: float,
               sigma_rgb: float, neighborhood: str = "nn8") -> jax.Array:
  """``V = λ w`` ``[B, H, W, D]`` (:func:`neighborhoods.affinities`)."""
  _check_neighborhood(neighborhood)
  return lam * neighborhoods.affinities(image, labels, neighborhood=neighborhood,
                                        sigma_rgb=sigma_rgb)


def _check_neighborhood(name: str) -> None:
  if name not in NEIGHBORHOODS:
    raise ValueError(f"graph cut neighborhood must be one of {NEIGHBORHOODS}; "
                     f"got {name!r}")


def _shift(x: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
  """``out[r, c] = x[r + dy, c + dx]``, ``fill`` outside ``x`` (numpy)."""
  h, w = x.shape[:2]
  out = np.full_like(x, fill)
  out[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)] = (
      x[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)])
  return out


def _pair_weights(weights, d, dy, dx):
  """``weights[..., d]``, 0 where the partner is outside the image."""
  inside = _shift(np.ones(weights.shape[:2], bool), dy, dx, False)
  return np.where(inside, weights[..., d], 0.0)


def discrete_energy(assignment: np.ndarray, unary: np.ndarray,
                    weights: np.ndarray) -> float:
  """``Σ_i D_i(l_i) + Σ_(i,j) V_ij [l_i ≠ l_j]`` of one labelling (float64).

  Args:
    assignment: ``[H, W]`` int labels ``l``.
    unary: ``[H, W, K]`` ``D``.
    weights: ``[H, W, D]`` ``V`` per offset of ``neighborhoods.OFFSETS``.
  """
  unary = np.asarray(unary, np.float64)
  weights = np.asarray(weights, np.float64)
  total = np.take_along_axis(unary, assignment[..., None], -1).sum()
  for d, (dy, dx) in enumerate(neighborhoods.offsets_for(weights.shape[-1])):
    cut = assignment != _shift(assignment, dy, dx, -1)
    total += np.sum(_pair_weights(weights, d, dy, dx) * cut)
  return float(total)


def _validate(unary, weights, labels, init):
  if unary.ndim != 3:
    raise ValueError(f"unary must be [H, W, K]; got shape {unary.shape}")
  h, w, k = unary.shape
  if weights.ndim != 3 or weights.shape[:2] != (h, w) or (
      weights.shape[2] not in (2, 4)):
    raise ValueError(f"weights must be [H, W, D] = [{h}, {w}, 2 or 4] to match "
                     f"unary {unary.shape}; got shape {weights.shape}")
  if labels.shape != (h, w):
    raise ValueError(f"labels must be [H, W] = [{h}, {w}] to match unary "
                     f"{unary.shape}; got shape {labels.shape}")
  if init is not None and np.shape(init) != (h, w):
    raise ValueError(f"init must be [H, W] = [{h}, {w}]; got shape "
                     f"{np.shape(init)}")
  bad = np.unique(labels[((labels < 0) | (labels >= k))
                         & (labels != label_codes.UNLABELED)
                         & (labels != label_codes.PADDING)])
  if bad.size:
    raise ValueError(
        f"labels hold value(s) {bad[:10].tolist()}; expected a class in "
        f"0..{k - 1} (K={k}), {label_codes.UNLABELED} (unlabeled) or "
        f"{label_codes.PADDING} (padding)")
  if init is not None and (np.min(init) < 0 or np.max(init) >= k):
    raise ValueError(f"init labels must lie in 0..{k - 1}")
  if not (np.all(np.isfinite(unary)) and np.all(np.isfinite(weights))):
    raise ValueError("unary and weights must be finite")
  if np.any(weights < 0):
    raise ValueError("weights must be nonnegative (Potts needs V_ij >= 0)")


def _expansion_move(current, alpha, unary, weights, offsets, fixed):
  """The best expansion of ``alpha`` from ``current`` (see module docstring)."""
  h, w = current.shape
  movable = ~fixed & (current != alpha)
  if not movable.any():
    return current
  rows, cols = np.indices((h, w))
  # u: coefficient of x_i in the move energy (constants dropped).
  u = np.where(movable, unary[..., alpha]
               - unary[rows, cols, current], 0.0)
  graph = maxflow.Graph[float]()
  nodes = graph.add_grid_nodes((h, w))
  for d, (dy, dx) in enumerate(offsets):
    v = _pair_weights(weights, d, dy, dx)
    other = _shift(current, dy, dx, -1)
    moves_j = _shift(movable, dy, dx, False)
    a = v * (current != other)
    b = v * (current != alpha)
    c = v * (other != alpha)
    both = movable & moves_j
    edge = np.where(both, 0.5 * (b + c - a), 0.0)
    u += np.where(movable, c - a - edge, 0.0)
    u += _shift(np.where(moves_j, b - a - edge, 0.0), -dy, -dx, 0.0)
    structure = np.zeros((3, 3))
    structure[1 + dy, 1 + dx] = 1.0
    graph.add_grid_edges(nodes, weights=edge, structure=structure,
                         symmetric=True)
  graph.add_grid_tedges(nodes, np.maximum(u, 0.0), np.maximum(-u, 0.0))
  graph.maxflow()
  to_alpha = graph.get_grid_segments(nodes) & movable
  return np.where(to_alpha, alpha, current)


def alpha_expansion(unary: np.ndarray, weights: np.ndarray,
                    labels: np.ndarray, *, init: np.ndarray | None = None,
                    max_cycles: int = 20) -> tuple[np.ndarray, float]:
  """Alpha-expansion for one image (numpy, on the host).

  Args:
    unary: ``[H, W, K]`` costs ``D_i(l)``, finite (:func:`unary_costs`).
    weights: ``[H, W, D]`` Potts weights ``V`` per offset of ``nn4``
      (``D = 2``) or ``nn8`` (``D = 4``), nonnegative (:func:`pair_costs`).
    labels: ``[H, W]`` int: class (fixed), 255 free, 254 padding (fixed).
    init: ``[H, W]`` starting labels (default ``argmin D``); scribbles are
      imposed on it. Padding pixels keep their ``init`` label.
    max_cycles: most passes over all labels; stops earlier when a pass
      lowers nothing.

  Returns:
    ``(assignment [H, W] int32, energy)``: the labelling and its
    :func:`discrete_energy` (float64).

  Raises:
    ValueError: for mismatched shapes, labels outside ``0..K-1, 254, 255``,
      non-finite costs or negative weights.
  """
  unary = np.asarray(unary, np.float64)
  weights = np.asarray(weights, np.float64)
  labels = np.asarray(labels)
  _validate(unary, weights, labels, init)
  offsets = neighborhoods.offsets_for(weights.shape[-1])
  scribbled = np.asarray(label_codes.scribbled(labels))
  fixed = scribbled | (labels == label_codes.PADDING)
  current = np.argmin(unary, -1) if init is None else np.asarray(init)
  current = np.where(scribbled, labels, current).astype(np.int32)
  energy = discrete_energy(current, unary, weights)
  for _ in range(max_cycles):
    improved = False
    for alpha in range(unary.shape[-1]):
      proposal = _expansion_move(current, alpha, unary, weights, offsets,
                                 fixed)
      new = discrete_energy(proposal, unary, weights)
      if new < energy - 1e-12 * max(1.0, abs(energy)):
        current, energy, improved = proposal, new, True
    if not improved:
      break
  return current, energy


def _solve_batch(unary, weights, labels, init, max_cycles):
  """Host side: :func:`alpha_expansion` per image ``[B, ...]``."""
  out = [alpha_expansion(unary[b], weights[b], labels[b], init=init[b],
                         max_cycles=max_cycles) for b in range(len(unary))]
  return (np.stack([a for a, _ in out]).astype(np.int32),
          np.asarray([e for _, e in out], np.float64))


def _initial_labels(logits, labels):
  """``argmax logits`` with the scribbles imposed ``[B, H, W]`` int32."""
  return jnp.where(label_codes.scribbled(labels), labels,
                   jnp.argmax(logits, -1)).astype(jnp.int32)


def solve(logits, image, labels, *, eta: float = 0.3, lam: float = 6.0,
          sigma_rgb: float = 9.0, neighborhood: str = "nn8",
          max_cycles: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """Graph-cut hard labels for a batch, on the host (numpy).

  Starts from ``argmax logits`` (scribbles imposed) and runs
  :func:`alpha_expansion` on each image in turn.

  Args:
    logits: ``[B, H, W, K]`` network logits.
    image: ``[B, H, W, C]`` RGB in 0..255.
    labels: ``[B, H, W]`` int: class, 255 unlabeled, 254 padding.
    eta, lam, sigma_rgb: the energy's weights (docs/architecture.md).
    neighborhood: ``nn8`` (default) or ``nn4``.
    max_cycles: see :func:`alpha_expansion`.

  Returns:
    ``(assignment [B, H, W] int32, energy [B] float64)``.
  """
  _check_neighborhood(neighborhood)
  solver.validate_inputs(logits, image, labels)
  labels = jnp.asarray(labels, jnp.int32)
  unary = unary_costs(jnp.asarray(logits), labels, eta)
  weights = pair_costs(image, labels, lam=lam, sigma_rgb=sigma_rgb,
                       neighborhood=neighborhood)
  init = _initial_labels(jnp.asarray(logits), labels)
  return _solve_batch(*(np.asarray(x) for x in (unary, weights, labels, init)),
                      max_cycles)


def hard_labels_graphcut(logits: jax.Array, image: jax.Array,
                         labels: jax.Array, *, eta: float = 0.3,
                         lam: float = 6.0, sigma_rgb: float = 9.0,
                         neighborhood: str = "nn8", max_cycles: int = 20,
                         return_energy: bool = False):
  """``onehot`` of the graph-cut labelling, callable from JAX.

  The costs are computed by XLA; the cuts run through ``jax.pure_callback``
  **on the host, one image after another, outside XLA** (the device waits).
  Works under ``jit``, ``vmap`` (sequentially) and per device under
  ``shard_map`` / ``pmap``, each device passing its own images. No gradient:
  inputs and outputs are ``stop_gradient``-ed.

  Args:
    logits, image, labels, eta, lam, sigma_rgb, neighborhood, max_cycles:
      as :func:`solve`.
    return_energy: also return the energies ``[B]`` (float32).

  Returns:
    ``y`` ``[B, H, W, K]`` float32 one-hot (scribbled pixels on their class),
    or ``(y, energy)``.
  """
  _check_neighborhood(neighborhood)
  solver.validate_inputs(logits, image, labels)
  logits = jax.lax.stop_gradient(jnp.asarray(logits))
  labels = jnp.asarray(labels, jnp.int32)
  b, h, w, k = logits.shape
  unary = unary_costs(logits, labels, eta)
  weights = jax.lax.stop_gradient(pair_costs(
      image, labels, lam=lam, sigma_rgb=sigma_rgb, neighborhood=neighborhood))
  init = _initial_labels(logits, labels)

  def host(unary, weights, labels, init):
    assignment, energy = _solve_batch(
        np.asarray(unary), np.asarray(weights), np.asarray(labels),
        np.asarray(init), max_cycles)
    return assignment, energy.astype(np.float32)

  shapes = (jax.ShapeDtypeStruct((b, h, w), jnp.int32),
            jax.ShapeDtypeStruct((b,), jnp.float32))
  assignment, energy = jax.pure_callback(host, shapes, unary, weights, labels,
                                         init, vmap_method="sequential")
  y = jax.lax.stop_gradient(jax.nn.one_hot(assignment, k, dtype=jnp.float32))
  return (y, energy) if return_energy else y
