"""Grid neighbourhoods: affinities ``w_ij`` and grid Potts energies.

A grid neighbourhood is a tuple of offsets ``(dy, dx)``; pixel ``i = (r, c)``
is paired with ``i + o = (r + dy, c + dx)`` for every offset ``o``, so each
unordered pair appears once:

* ``nn4``: ``(0, 1), (1, 0)``, the right and lower neighbours;
* ``nn8``: ``nn4`` plus the diagonals ``(1, 1), (1, -1)``.

Weights are stored per pixel and offset, ``[B, H, W, D]`` (``D`` = 2 or 4):
``weights[b, r, c, d]`` belongs to the pair ``(r, c) - (r, c) + offsets[d]``
and is zero where that pair does not exist (partner outside the image, or
either pixel is padding, label 254). No pair list is ever built: energies and
gradients use shifted copies of whole arrays (:func:`shift`), which XLA fuses.

**Pair convention (every neighbourhood, grid and dense).** The Potts term is
a sum over unordered pairs, each counted once::

    λ Σ_{{i,j}∈N} w_ij P(y_i, y_j)

so on ``nn4`` a pixel takes part in up to 4 pairs (its right, lower, left
and upper neighbours; the last two are the pairs of the pixels to its left
and above) and its Potts gradient is ``λ Σ_{j∈N(i)} w_ij ∂P/∂y_i`` over
those 4 neighbours. The dense neighbourhood (:mod:`potts_jax.dense.bilateral`)
follows the same convention: ``Σ_{i<j}``, half of the sum over ordered
pairs ``i ≠ j``. λ therefore means the same on ``nn4``, ``nn8`` and
``dense``. The configs read the paper's λ = 6 (4-NN) in this convention
(the paper's ``Σ_{ij∈N}`` does not say whether a pair counts once or twice).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from potts_jax import labels as label_codes
Array = jnp.ndarray

#: Largest offset a grid neighbourhood uses (the zero border of shifts).
HALO = 1

OFFSETS: dict[str, tuple[tuple[int, int], ...]] = {
    "nn4": ((0, 1), (1, 0)),
    "nn8": ((0, 1), (1, 0), (1, 1), (1, -1)),
}


#: Every neighbourhood the solver and the losses accept.
NAMES = ("nn4", "nn8", "dense")


def check_neighborhood(name: str) -> str:
  """Returns ``name`` if it is ``nn4``, ``nn8`` or ``dense``, else raises."""
  if name not in NAMES:
    raise ValueError(
        f"unknown neighborhood {name!r}; expected one of {list(NAMES)}"
    )
  return name


def check_name(name: str) -> str:
  """Returns ``name`` if it names a grid neighbourhood, else raises.

  Raises:
    NotImplementedError: for ``dense``, which has no grid offsets (it lives
      in :mod:`potts_jax.dense.bilateral`; the solver and the losses accept it).
    ValueError: for an unknown name.
  """
  if name == "dense":
    raise NotImplementedError(
        "neighborhood='dense' is not a grid neighbourhood: the grid "
        "functions (affinities, pair_mask, grid_energy, quadratic.solve_exact) "
        "take 'nn4' or 'nn8'; dense Potts energies are in "
        "potts_jax/dense/bilateral.py (solver.solve, solver.energy and "
        "losses.regularized_loss accept neighborhood='dense')"
    )
  check_neighborhood(name)
  return name


def offsets_for(num_offsets: int) -> tuple[tuple[int, int], ...]:
  """The offsets of the grid neighbourhood with ``num_offsets`` offsets."""
  for offsets in OFFSETS.values():
    if len(offsets) == num_offsets:
      return offsets
  raise ValueError(
      f"weights have {num_offsets} offsets in their last axis; expected 2 "
      "(nn4) or 4 (nn8)"
  )


def shift(x: Array, dy: int, dx: int, axes: tuple[int, int] = (1, 2)) -> Array:
  """``out[.., r, c, ..] = x[.., r + dy, c + dx, ..]``, zero outside ``x``.

  Implemented as a static slice of ``x`` zero-padded by ``HALO`` on every
  side. All shifts of one array share that padded copy (XLA merges the
  identical pads), so a step that needs four neighbours of ``y`` writes one
  padded ``y`` and reads it through four slices, which fuse into their
  consumers; a pad per shift would materialise every shifted copy on CPU.

  Args:
    x: array whose ``axes`` are the image rows and columns.
    dy, dx: static offsets with ``|dy|, |dx| <= HALO``.
    axes: positions of the row and column axes.

  Returns:
    Array of the shape of ``x``.
  """
  if max(abs(dy), abs(dx)) > HALO:
    raise ValueError(f"shift ({dy}, {dx}) exceeds the halo {HALO}")
  widths = [(0, 0)] * x.ndim
  widths[axes[0]] = widths[axes[1]] = (HALO, HALO)
  padded = jnp.pad(x, widths)
  start = [0] * x.ndim
  start[axes[0]], start[axes[1]] = HALO + dy, HALO + dx
  return jax.lax.slice(padded, start, [b + n for b, n in zip(start, x.shape)])


def pair_mask(labels: Array, neighborhood: str = "nn4") -> Array:
  """``[B, H, W, D]`` float32: 1 where the pair exists, else 0.

  Args:
    labels: ``[B, H, W]`` int; 254 marks padding.
    neighborhood: ``nn4`` or ``nn8``.
  """
  valid = label_codes.valid(labels).astype(jnp.float32)
  # Shifting with zero fill also drops partners outside the image.
  return jnp.stack(
      [valid * shift(valid, dy, dx) for dy, dx in OFFSETS[check_name(neighborhood)]],
      axis=-1,
  )


def affinities(
    image: Array,
    labels: Array,
    *,
    neighborhood: str = "nn4",
    sigma_rgb: float = 9.0,
) -> Array:
  """Grid affinities ``w_ij = exp(-‖I_i - I_j‖² / (2 σ_rgb²))``.

  Diagonal pairs (``nn8``) are divided by √2; pairs touching padding or leaving
  the image get 0.

  Args:
    image: ``[B, H, W, C]`` colour image in 0..255 (not normalised).
    labels: ``[B, H, W]`` int; 254 marks padding.
    neighborhood: ``nn4`` or ``nn8``.
    sigma_rgb: colour bandwidth (9 on VOC, 3 on Cityscapes/ADE20k).

  Returns:
    ``[B, H, W, D]`` float32 weights, see the module docstring.
  """
  offsets = OFFSETS[check_name(neighborhood)]
  image = jnp.asarray(image, jnp.float32)
  mask = pair_mask(labels, neighborhood)
  inv = 1.0 / (2.0 * jnp.square(jnp.asarray(sigma_rgb, jnp.float32)))
  weights = []
  for d, (dy, dx) in enumerate(offsets):
    diff = jnp.sum(jnp.square(image - shift(image, dy, dx)), axis=-1)
    scale = 1.0 / math.sqrt(2.0) if dy and dx else 1.0
    weights.append(scale * jnp.exp(-diff * inv) * mask[..., d])
  return jnp.stack(weights, axis=-1)


def grid_energy(
    y: Array, weights: Array, relaxation: Callable[[Array, Array], Array]
) -> Array:
  """``Σ_{(i,j)} w_ij P(y_i, y_j)`` per image.

  Args:
    y: ``[B, H, W, K]`` distributions.
    weights: ``[B, H, W, D]`` from :func:`affinities`.
    relaxation: ``fn(p, q) -> [...]``, e.g. ``potts.relaxation("cd")``.

  Returns:
    ``[B]`` energies.
  """
  total = 0.0
  for d, (dy, dx) in enumerate(offsets_for(weights.shape[-1])):
    pair = relaxation(y, shift(y, dy, dx))
    total = total + jnp.sum(weights[..., d] * pair, axis=(1, 2))
  return total


def channel_sums(terms: Sequence[Array]) -> tuple[Array, ...]:
  """``Σ_k`` over the last axis of every array in ``terms``, in one pass.

  One variadic ``lax.reduce`` instead of one reduction per term: XLA then
  reads each input once per step, with the products that make the terms
  fused into the same loop.

  Args:
    terms: arrays ``[..., K]`` of one shape.

  Returns:
    One ``[...]`` array per term.
  """
  zeros = tuple(jnp.zeros((), t.dtype) for t in terms)
  return tuple(jax.lax.reduce(
      tuple(terms), zeros,
      lambda x, y: tuple(a + b for a, b in zip(x, y)),
      (terms[0].ndim - 1,),
  ))


class PairStats(NamedTuple):
  """Per-pixel reductions over ``K`` that the grid Potts terms need."""

  a: Array  # [B, H, W] ‖y_i‖².
  s: tuple  # per offset, [B, H, W] y_iᵀy_{i+o}.


def potts_coefficients(
    r: Array,
    stats: PairStats,
    weights: Sequence[Array],
    offsets: Sequence[tuple[int, int]],
    stats_fn: Callable[[Array, Array, Array], Array],
) -> tuple[tuple, Array, Array]:
  """Per-pixel coefficients of the gradient of ``P = Σ w_ij P(y_i, y_j)``.

  With ``P = f(s, a, b)``, ``s = y_iᵀy_j``, ``a = ‖y_i‖²``, ``b = ‖y_j‖²``:
  ``∂P/∂y_i = f_s y_j + 2 f_a y_i`` and ``∂P/∂y_j = f_s y_i + 2 f_b y_j``.
  The scalar partials come from one ``jax.vjp`` of ``f`` per offset on
  ``[B, H, W]`` planes. For ``y = r v`` (``v`` unnormalised, ``r`` a per-pixel
  scale) the gradient at pixel ``i`` is

  ``g_i = Σ_d c_d[i] v_{i+d} + 2 diag[i] r[i] v_i``

  over the directions ``d`` (each offset and its opposite), and ``y_iᵀg_i``
  follows from the same scalars without another reduction over ``K``.

  Args:
    r: ``[B, H, W]`` scale, ``y = r[..., None] * v``.
    stats: :class:`PairStats` of ``y``.
    weights: per offset, ``[B, H, W]`` weights (0 where no pair).
    offsets: the ``(dy, dx)`` of each weight plane.
    stats_fn: the ``(s, a, b)`` form of the relaxation (``potts.STATS``).

  Returns:
    ``(coefficients, diag, ydotg)``: ``coefficients`` a tuple of
    ``((dy, dx), c_d [B, H, W])``, ``diag`` and ``ydotg = y_iᵀg_i``
    ``[B, H, W]``.
  """
  diag = jnp.zeros_like(stats.a)
  ydotg = jnp.zeros_like(stats.a)
  coefficients = []
  for w, s, (dy, dx) in zip(weights, stats.s, offsets):
    _, vjp = jax.vjp(stats_fn, s, stats.a, shift(stats.a, dy, dx))
    f_s, f_a, f_b = vjp(w)
    f_s_back = shift(f_s, -dy, -dx)  # f_s of the pair (i - o, i)
    coefficients.append(((dy, dx), f_s * shift(r, dy, dx)))
    coefficients.append(((-dy, -dx), f_s_back * shift(r, -dy, -dx)))
    diag = diag + f_a + shift(f_b, -dy, -dx)
    ydotg = ydotg + f_s * s + f_s_back * shift(s, -dy, -dx)
  ydotg = ydotg + 2.0 * diag * stats.a
  return tuple(coefficients), diag, ydotg


def pair_pass(
    v: Array,
    weights: Sequence[Array],
    stats_fn: Callable[[Array, Array, Array], Array],
    extra: Sequence[Array] = (),
) -> tuple[Array, PairStats, tuple, Array, Array, tuple[Array, ...]]:
  """One reduction pass over ``K`` for the grid Potts terms of ``y = r v``.

  Sums ``v``, ``v²``, ``v ⊙ shift(v)`` per offset and the caller's ``extra``
  terms over classes in one :func:`channel_sums`, then
  :func:`potts_coefficients`. Shared by the solver's updates.

  Args:
    v: ``[B, H, W, K]`` nonnegative, unnormalised iterate.
    weights: per offset, ``[B, H, W]`` weights (:func:`offsets_for` order).
    stats_fn: the ``(s, a, b)`` form of the relaxation (``potts.STATS``).
    extra: more ``[B, H, W, K]`` terms to sum over ``K`` in the same pass.

  Returns:
    ``(r, stats, coefficients, diag, ydotg, extra_sums)``: ``r = 1/Σ_k v``,
    the :class:`PairStats` of ``y``, :func:`potts_coefficients`' outputs and
    the ``[B, H, W]`` sums of ``extra``.
  """
  offsets = offsets_for(len(weights))
  sums = channel_sums([v, v * v]
                      + [v * shift(v, dy, dx) for dy, dx in offsets]
                      + list(extra))
  r = 1.0 / sums[0]
  stats = PairStats(
      a=sums[1] * r * r,
      s=tuple(s * r * shift(r, dy, dx)
              for s, (dy, dx) in zip(sums[2:], offsets)),
  )
  coefficients, diag, ydotg = potts_coefficients(r, stats, weights, offsets,
                                                 stats_fn)
  return r, stats, coefficients, diag, ydotg, sums[2 + len(offsets):]


def apply_coefficients(
    v: Array, r: Array, coefficients: Sequence, diag: Array
) -> Array:
  """``g`` of :func:`potts_coefficients`: ``[B, H, W, K]`` from ``v``."""
  g = (2.0 * diag * r)[..., None] * v
  for (dy, dx), c in coefficients:
    g = g + c[..., None] * shift(v, dy, dx)
  return g


def potts_terms(
    v: Array,
    r: Array,
    stats: PairStats,
    weights: Sequence[Array],
    offsets: Sequence[tuple[int, int]],
    stats_fn: Callable[[Array, Array, Array], Array],
) -> tuple[Array, Array]:
  """``y ⊙ ∂P/∂y`` ``[B, H, W, K]`` and ``yᵀ∂P/∂y`` ``[B, H, W]``, ``y = r v``.

  See :func:`potts_coefficients` for the arguments.
  """
  coefficients, diag, ydotg = potts_coefficients(
      r, stats, weights, offsets, stats_fn
  )
  g = apply_coefficients(v, r, coefficients, diag)
  return r[..., None] * v * g, ydotg
