"""Exact minimiser of the quadratic pseudo-label problem ``H_Q + P_Q``.

With ``H = q`` and ``P = q`` (H_Q and P_Q of the solver's energy) the pseudo-label energy is a
convex quadratic (the "random walker" of paper Table 1, refs [1, 17])::

    E(y) = η Σ_{i∈F} ½‖σ_i - y_i‖² + λ Σ_{(i,j)∈N} w_ij ½‖y_i - y_j‖²

over the free pixels ``F`` (valid and unlabeled, label 255), with ``y_i``
pinned to the one-hot of its scribble on the scribbled pixels ``S`` and
padding pixels (254) in no term. Setting ``∂E/∂y_F = 0`` gives, per image and
for all ``K`` classes at once (one factorisation, ``K`` right-hand sides)::

    (η I + λ L_FF) Y_F = η σ_F + λ W_FS Y_S

with ``W`` the symmetric affinity matrix of the valid pairs, ``L = D - W`` its
graph Laplacian (``D`` the weighted degrees over *all* valid neighbours) and
``L_FF``, ``W_FS`` its free-free and free-scribbled blocks. This module solves
that sparse system with SciPy in float64. It exists to verify
:func:`potts_jax.solver.solve` (paper Appendix B: the gradient-descent solver
reaches soft Jaccard 99.2% against this optimum) and is not used in training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sparse
import scipy.sparse.linalg as sparse_linalg
import scipy.special

from potts_jax import labels as label_codes
from potts_jax import neighborhoods
from potts_jax import solver
def _pairs(weights: np.ndarray, offsets) -> tuple[np.ndarray, ...]:
  """Flat pixel indices ``i, j`` and weights ``w_ij`` of the nonzero pairs.

  Args:
    weights: ``[H, W, D]`` float64 affinities of one image.
    offsets: the ``D`` offsets ``(dy, dx)``; pixel ``(r, c)`` pairs with
      ``(r + dy, c + dx)``.

  Returns:
    ``(i, j, w)``, three 1-D arrays of equal length.
  """
  h, w, _ = weights.shape
  index = np.arange(h * w).reshape(h, w)
  rows, cols, vals = [], [], []
  for d, (dy, dx) in enumerate(offsets):
    # The window of pixels whose partner lies inside the image.
    r0, r1 = max(0, -dy), h - max(0, dy)
    c0, c1 = max(0, -dx), w - max(0, dx)
    wij = weights[r0:r1, c0:c1, d].ravel()
    keep = wij != 0.0  # absent pairs (padding) carry weight 0
    rows.append(index[r0:r1, c0:c1].ravel()[keep])
    cols.append(index[r0 + dy:r1 + dy, c0 + dx:c1 + dx].ravel()[keep])
    vals.append(wij[keep])
  return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)


def _solve_image(sigma, labels, weights, offsets, eta, lam):
  """Exact ``y`` ``[H, W, K]`` float64 for one image (see module docstring)."""
  h, w, k = sigma.shape
  n = h * w
  flat_labels = labels.ravel()
  free = np.flatnonzero(flat_labels == label_codes.UNLABELED)
  fixed = np.flatnonzero(
      (flat_labels != label_codes.UNLABELED)
      & (flat_labels != label_codes.PADDING)
  )
  y = sigma.reshape(n, k).copy()  # padding keeps σ_i
  y[fixed] = np.eye(k)[flat_labels[fixed]]
  if free.size == 0:
    return y.reshape(h, w, k)
  i, j, wij = _pairs(weights, offsets)
  adjacency = sparse.coo_matrix((wij, (i, j)), shape=(n, n)).tocsr()
  adjacency = adjacency + adjacency.T
  degree = np.asarray(adjacency.sum(axis=1)).ravel()
  laplacian_ff = (
      sparse.diags(degree[free]) - adjacency[free][:, free]
  )
  system = eta * sparse.identity(free.size) + lam * laplacian_ff
  rhs = eta * y[free] + lam * (adjacency[free][:, fixed] @ y[fixed])
  lu = sparse_linalg.splu(sparse.csc_matrix(system))
  y[free] = lu.solve(np.ascontiguousarray(rhs))
  return y.reshape(h, w, k)


def solve_exact(
    logits: Any,
    image: Any,
    labels: Any,
    *,
    eta: float,
    lam: float,
    sigma_rgb: float = 9.0,
    neighborhood: str = "nn4",
    dtype: Any = np.float32,
) -> np.ndarray:
  """The global minimiser of ``E`` with ``H = q`` and ``P = q``.

  Minimises ``E(y) = η Σ_{i∈F} ½‖σ_i - y_i‖² + λ Σ_{(i,j)} w_ij ½‖y_i - y_j‖²``
  (``σ = softmax(logits)``, ``F`` the valid unlabeled pixels, ``w`` exactly
  :func:`potts_jax.neighborhoods.affinities`) over ``y_i ∈ Δ^K`` with
  scribbled ``y_i`` fixed to their one-hot, by one sparse LU factorisation per
  image of ``A = η I + λ L_FF`` (module docstring), in float64.

  Why the simplex constraint is inactive: the unconstrained stationary point
  ``Y_F = A⁻¹ (η σ_F + λ W_FS Y_S)`` already lies on the simplex, so being the
  minimiser of the convex problem without constraints it is also the
  constrained optimum. (1) Rows sum to 1: ``L 1 = 0`` gives
  ``L_FF 1 = W_FS 1``, hence ``A 1 = η 1 + λ W_FS 1``, which is exactly the
  right-hand side applied to ``1`` (``σ_F 1 = 1``, ``Y_S 1 = 1``); since
  ``A`` is invertible, ``Y_F 1 = 1``. (2) Entries are nonnegative: ``A`` has
  nonpositive off-diagonal entries and is strictly diagonally dominant by
  ``η > 0`` (diagonal ``η + λ d_i ≥ η + λ Σ_{j∈F} w_ij``), so it is a
  nonsingular M-matrix with ``A⁻¹ ≥ 0`` entrywise, and the right-hand side is
  nonnegative. ``η > 0`` also keeps ``A`` positive definite when a free
  pixel or region has no path to any scribble (its ``y`` is then ``σ``
  smoothed within the region), so every image has a unique solution.

  Args:
    logits: ``[B, H, W, K]`` network logits.
    image: ``[B, H, W, C]`` RGB in 0..255.
    labels: ``[B, H, W]`` int: class ``0..K-1``, 255 unlabeled, 254 padding.
    eta: weight ``η > 0`` of the quadratic cross-entropy.
    lam: weight ``λ ≥ 0`` of the quadratic Potts term.
    sigma_rgb: colour bandwidth of the affinities.
    neighborhood: ``nn4`` or ``nn8``.
    dtype: output dtype; float32 by default, float64 for tight checks.

  Returns:
    ``[B, H, W, K]`` numpy array: the optimum on free pixels, the scribble's
    one-hot on scribbled pixels and ``σ_i`` on padding pixels.

  Raises:
    ValueError: bad shapes or label values (as in
      :func:`potts_jax.solver.validate_inputs`), ``η ≤ 0``, ``λ < 0`` or an
      unknown neighbourhood.
  """
  neighborhoods.check_name(neighborhood)
  solver.validate_inputs(logits, image, labels)
  if not np.isfinite(eta) or eta <= 0:
    raise ValueError(
        f"eta must be > 0 (it keeps the system positive definite); got {eta!r}"
    )
  if not np.isfinite(lam) or lam < 0:
    raise ValueError(f"lam must be >= 0; got {lam!r}")
  labels = np.asarray(labels).astype(np.int64)
  sigma = scipy.special.softmax(np.asarray(logits, np.float64), axis=-1)
  weights = np.asarray(
      neighborhoods.affinities(
          np.asarray(image, np.float32), labels.astype(np.int32),
          neighborhood=neighborhood, sigma_rgb=sigma_rgb,
      ),
      np.float64,
  )
  offsets = neighborhoods.OFFSETS[neighborhood]
  y = np.stack([
      _solve_image(sigma[b], labels[b], weights[b], offsets, float(eta),
                   float(lam))
      for b in range(sigma.shape[0])
  ])
  return y.astype(dtype)


def soft_jaccard(y: Any, y_ref: Any, mask: Any) -> float:
  """Soft Jaccard index ``Σ min(y, y_ref) / Σ max(y, y_ref)``.

  Sums run over the pixels selected by ``mask`` and all classes; 1 means
  identical, 0 disjoint supports.

  Args:
    y: ``[B, H, W, K]`` soft labels.
    y_ref: ``[B, H, W, K]`` reference soft labels.
    mask: ``[B, H, W]`` bool (or 0/1), e.g. ``labels == 255``.

  Returns:
    Python float in ``[0, 1]``.

  Raises:
    ValueError: shapes disagree, or the mask selects nothing with mass.
  """
  y = np.asarray(y, np.float64)
  y_ref = np.asarray(y_ref, np.float64)
  mask = np.asarray(mask)
  if y.ndim != 4 or y.shape != y_ref.shape:
    raise ValueError(
        f"y and y_ref must both be [B, H, W, K]; got {y.shape} and "
        f"{y_ref.shape}"
    )
  if mask.shape != y.shape[:-1]:
    raise ValueError(
        f"mask must be [B, H, W] = {list(y.shape[:-1])}; got {mask.shape}"
    )
  mask = mask.astype(bool)
  denominator = np.maximum(y[mask], y_ref[mask]).sum()
  if not denominator > 0:
    raise ValueError("soft_jaccard: the mask selects no pixel with mass")
  return float(np.minimum(y[mask], y_ref[mask]).sum() / denominator)
