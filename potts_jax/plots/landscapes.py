"""Loss landscapes: the numbers behind the notebook's figures.

Every value here comes from the library's own functions
(:func:`potts_jax.potts.relaxation`, :func:`potts_jax.losses.cross_entropy`,
:func:`potts_jax.solver.solve`, :func:`potts_jax.solver.solve_with_energies`);
this module only lays out the points where they are evaluated. Drawing is in
:mod:`potts_jax.plots.viz`. Results are float64 numpy arrays (evaluated in float32).

* Two classes (paper Figure 1): a distribution is ``(x, 1 - x)``; a relaxation
  is a function of the pair ``(x_i, x_j) ∈ [0, 1]²``
  (:func:`binary_pair_grid`); the paper's logit axis is
  ``x = 1 / (1 + e^{-2l})`` (:func:`binary_from_logit`).
* Three classes (paper Figure 2): ``P(p, q)`` for a fixed ``p`` over a
  lattice of the simplex ``Δ³`` (:func:`simplex_lattice`,
  :func:`simplex_values`), and along the two "moves" of Figure 2
  (:func:`move_curves`).
* Cross-entropies (paper Figure 3): ``H((x, 1-x), (u, 1-u))`` and its partial
  derivatives in the prediction ``x`` and the label ``u``
  (:func:`cross_entropy_grid`).
* One image: pseudo-labels per solver configuration (:func:`pseudo_labels`)
  and energy per step per solver option (:func:`energy_curves`).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from potts_jax import losses
from potts_jax import potts
from potts_jax import solver
def _vector(name: str, x: Any) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array; got shape "
                     f"{x.shape}")
  return x


def _unit_interval(name: str, x: Any) -> np.ndarray:
  x = _vector(name, x)
  if np.any((x < 0) | (x > 1)) or not np.all(np.isfinite(x)):
    raise ValueError(f"{name} must lie in [0, 1]; got values from "
                     f"{x.min()} to {x.max()}")
  return x


def binary_from_logit(logit: Any) -> np.ndarray:
  """The paper's Figure 1 parametrisation ``x = 1 / (1 + e^{-2l})``.

  Args:
    logit: ``[N]`` scalar logits ``l`` (``(x, 1-x) = softmax(l, -l)``).

  Returns:
    ``[N]`` float64 in ``(0, 1)``.
  """
  return 1.0 / (1.0 + np.exp(-2.0 * _vector("logit", logit)))


def binary_pair_grid(name: str, x: Any) -> np.ndarray:
  """``P((x_a, 1-x_a), (x_b, 1-x_b))`` for every pair of grid values.

  Args:
    name: relaxation name (:data:`potts_jax.potts.NAMES`).
    x: ``[N]`` values in ``[0, 1]``.

  Returns:
    ``[N, N]`` float64, entry ``[a, b]`` the relaxation of pixel ``i`` at
    ``x[a]`` and pixel ``j`` at ``x[b]`` (infinite values are the guarded
    ``-ln EPS``).
  """
  fn = potts.relaxation(name)
  x = _unit_interval("x", x)
  dist = np.stack([x, 1.0 - x], -1).astype(np.float32)  # [N, 2]
  return np.asarray(fn(dist[:, None, :], dist[None, :, :]), np.float64)


def simplex_lattice(n: int) -> np.ndarray:
  """Points ``(a, b, c) / n`` with ``a + b + c = n``: a lattice of ``Δ³``.

  Args:
    n: subdivisions per edge (≥ 1).

  Returns:
    ``[(n + 1)(n + 2) / 2, 3]`` float64 barycentric points.
  """
  if not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"n must be an integer >= 1; got {n!r}")
  points = [(a, b, n - a - b) for a in range(n + 1) for b in range(n + 1 - a)]
  return np.asarray(points, np.float64) / n


def _simplex_points(name: str, points: Any, k: int | None = None
                    ) -> np.ndarray:
  points = np.asarray(points, np.float64)
  if points.ndim < 1 or (k is not None and points.shape[-1] != k):
    raise ValueError(f"{name} must be [..., {k or 'K'}]; got shape "
                     f"{points.shape}")
  if np.any(points < -1e-9) or np.any(np.abs(points.sum(-1) - 1) > 1e-6):
    raise ValueError(f"{name} must lie on the simplex (entries >= 0, summing "
                     "to 1)")
  return points


def simplex_values(name: str, anchor: Any, points: Any) -> np.ndarray:
  """``P(anchor, q)`` for every ``q`` in ``points`` (level sets over ``Δ^K``).

  Args:
    name: relaxation name.
    anchor: ``[K]`` the fixed distribution ``p``.
    points: ``[M, K]`` distributions ``q`` (e.g. :func:`simplex_lattice`).

  Returns:
    ``[M]`` float64.
  """
  fn = potts.relaxation(name)
  points = _simplex_points("points", points)
  anchor = _simplex_points("anchor", anchor, points.shape[-1])
  return np.asarray(fn(anchor.astype(np.float32)[None],
                       points.astype(np.float32)), np.float64)


def move_paths(t: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The two moves of paper Figure 2 on ``Δ³`` (classes A, B, C).

  ``inside``: both pixels of a region move together from A to B,
  ``y_i = y_j = (1 - t, t, 0)``. ``boundary``: ``y_i = (1, 0, 0)`` stays A
  while its neighbour moves from C to B, ``y_j = (0, t, 1 - t)``.

  Args:
    t: ``[T]`` path parameters in ``[0, 1]``.

  Returns:
    ``{"inside": (y_i, y_j), "boundary": (y_i, y_j)}``, each ``[T, 3]``.
  """
  t = _unit_interval("t", t)
  zero, one = np.zeros_like(t), np.ones_like(t)
  a_to_b = np.stack([1 - t, t, zero], -1)
  return {"inside": (a_to_b, a_to_b),
          "boundary": (np.stack([one, zero, zero], -1),
                       np.stack([zero, t, 1 - t], -1))}


def move_curves(name: str, t: Any) -> dict[str, np.ndarray]:
  """``P(y_i, y_j)`` along each move of :func:`move_paths`.

  Args:
    name: relaxation name.
    t: ``[T]`` path parameters in ``[0, 1]``.

  Returns:
    ``{"inside": [T], "boundary": [T]}`` float64.
  """
  fn = potts.relaxation(name)
  return {move: np.asarray(fn(yi.astype(np.float32), yj.astype(np.float32)),
                           np.float64)
          for move, (yi, yj) in move_paths(t).items()}


def cross_entropy_grid(name: str, x: Any, u: Any) -> dict[str, np.ndarray]:
  """``H(σ, y)`` for two classes and its derivatives, by ``jax.grad``.

  ``σ = (x, 1 - x)`` is the prediction and ``y = (u, 1 - u)`` the (soft)
  label. The derivatives are along the simplex: ``d_sigma = ∂H/∂x`` with
  ``y`` fixed (how training moves the network; it vanishes where σ settles)
  and ``d_y = ∂H/∂u`` with ``σ`` fixed (how the solver moves the label).

  Args:
    name: cross-entropy name (:data:`potts_jax.losses.NAMES`).
    x: ``[N]`` predictions ``σ¹`` in ``[0, 1]``.
    u: ``[M]`` labels ``y¹`` in ``[0, 1]``.

  Returns:
    ``{"value", "d_sigma", "d_y"}``, each ``[N, M]`` float64 (entry
    ``[a, b]`` at ``x[a]``, ``u[b]``).
  """
  h = losses.cross_entropy(name)
  x = _unit_interval("x", x).astype(np.float32)
  u = _unit_interval("u", u).astype(np.float32)

  def f(xa, ub):
    return h(jnp.stack([xa, 1.0 - xa]), jnp.stack([ub, 1.0 - ub]))

  fn = jax.value_and_grad(f, argnums=(0, 1))
  over_u = jax.vmap(fn, in_axes=(None, 0))
  value, (d_sigma, d_y) = jax.jit(jax.vmap(over_u, in_axes=(0, None)))(x, u)
  return {"value": np.asarray(value, np.float64),
          "d_sigma": np.asarray(d_sigma, np.float64),
          "d_y": np.asarray(d_y, np.float64)}


def _one_image(logits: Any, image: Any, labels: Any):
  logits, image = np.asarray(logits, np.float32), np.asarray(image, np.float32)
  labels = np.asarray(labels, np.int32)
  if logits.ndim != 3 or image.shape != logits.shape[:2] + (3,) or (
      labels.shape != logits.shape[:2]):
    raise ValueError(
        "expected logits [H, W, K], image [H, W, 3] and labels [H, W]; got "
        f"{logits.shape}, {image.shape} and {labels.shape}")
  return logits[None], image[None], labels[None]


def pseudo_labels(logits: Any, image: Any, labels: Any,
                  runs: Mapping[str, Mapping[str, Any]],
                  **common: Any) -> dict[str, np.ndarray]:
  """:func:`potts_jax.solver.solve` on one image, once per configuration.

  Args:
    logits: ``[H, W, K]`` unary logits (the "network" σ).
    image: ``[H, W, 3]`` RGB in 0..255.
    labels: ``[H, W]`` int: class, 255 unlabeled, 254 padding.
    runs: name -> solver options of that run (override ``common``).
    **common: solver options shared by every run.

  Returns:
    name -> ``[H, W, K]`` float64 pseudo-labels, in the order of ``runs``.
  """
  args = _one_image(logits, image, labels)
  return {name: np.asarray(solver.solve(*args, **{**common, **options})[0],
                           np.float64)
          for name, options in runs.items()}


def energy_curves(logits: Any, image: Any, labels: Any,
                  methods: Mapping[str, Mapping[str, Any]],
                  **common: Any) -> dict[str, np.ndarray]:
  """Energy after every step (:func:`potts_jax.solver.solve_with_energies`).

  Args:
    logits: ``[H, W, K]`` unary logits.
    image: ``[H, W, 3]`` RGB in 0..255.
    labels: ``[H, W]`` int.
    methods: name -> solver options of that run (override ``common``).
    **common: options shared by every run (``num_steps``, the problem).

  Returns:
    name -> ``[num_steps + 1]`` float64, entry ``t`` the energy after ``t``
    steps.
  """
  args = _one_image(logits, image, labels)
  out = {}
  for name, options in methods.items():
    _, energies = solver.solve_with_energies(*args, **{**common, **options})
    out[name] = np.asarray(energies, np.float64)[:, 0]
  return out
