"""Permutohedral-lattice Gaussian filtering and the dense Potts energies.

The dense neighbourhood pairs every two valid pixels of an image with

  ``w_ij = exp(-‖x_i - x_j‖²/(2σ_xy²) - ‖I_i - I_j‖²/(2σ_rgb²))``,

i.e. a unit Gaussian of the 5-D features ``f_i = (x/σ_xy, y/σ_xy, r/σ_rgb,
g/σ_rgb, b/σ_rgb)`` (x the column, y the row, RGB in 0..255). Sums
``Σ_j w_ij v_j`` over all pixels cost O(N) with the permutohedral lattice of
Adams, Baek and Davis (2010), as in Krähenbühl's densecrf and the DenseCRF
loss of the rloss lineage: *splat* each pixel onto the d+1 vertices of its
enclosing simplex (barycentric weights), *blur* the lattice along its d+1
axes, *slice* back with the same weights.

Pure JAX, static shapes:

* :func:`build_lattice` finds the vertices with sort-based deduplication:
  the N(d+1) vertex keys are sorted, equal keys get one slot, and each axis
  neighbour is found by sorting the keys together with the keys moved one
  step along that axis. **Capacity bound**: an image of N pixels touches at
  most ``N (d+1) = 6N`` lattice points, the default capacity, which is never
  exceeded. A smaller ``capacity`` saves memory (the lattice values are
  ``[capacity, C]``; real photos use 5-30 % of 6N, see
  :func:`count_lattice_points`); points beyond it are dropped,
  ``Lattice.num_points`` records how many there were, and
  :func:`check_capacity` (called by :func:`prepare` outside ``jit``) raises.
* The blur is a palindrome of per-axis 3-tap blurs, ``[1/8, 3/4, 1/8]`` on
  axes 0..d-1, ``[1/4, 1/2, 1/4]`` on axis d, then axes d-1..0 again: the
  same variance per axis as the usual ``[1/4, 1/2, 1/4]`` pass, and the
  filter ``F = Sᵀ B S`` is exactly symmetric (a palindromic product of
  symmetric matrices), so its VJP is the filter itself
  (:func:`bilateral_filter` is a ``custom_vjp``; no gradient reaches the
  lattice construction).
* Output scale: with unit-mass blurs, a uniform point density ρ gives
  ``F1 = ρ V`` (V the volume per lattice point in feature units) while the
  exact sum is ``ρ (2π)^{d/2}``; :data:`SCALE` is their ratio.

The filter approximates ``W`` *including* its diagonal ``w_ii = 1``; the
energies remove the diagonal exactly (``Σ_{j≠i} w_ij v_j ≈ (Fv)_i - v_i``).
Accuracy on real photos (tests/test_bilateral.py, 40x40 GrabCut crops,
σ_xy = 100, σ_rgb = 9): see the module docstring of that test.

Dense Potts energies (quadratic relaxations only; a sum over **ordered**
pairs ``i ≠ j`` of valid pixels, so each unordered pair counts twice, as in
the rloss lineage):

* ``bl``: ``Σ_{i≠j} w_ij (1 - y_iᵀy_j)``, gradient ``-2 Σ_{j≠i} w_ij y_j``;
* ``q``: ``Σ_{i≠j} w_ij ½‖y_i - y_j‖²``, gradient
  ``2 Σ_{j≠i} w_ij (y_i - y_j)``;

both from one filtering of ``[m y, m]`` (m the valid-pixel mask; padding,
label 254, takes part in no pair). ``scale_factor < 1`` downscales as the
rloss DenseCRFLoss does (``y`` bilinearly with antialiasing, image and mask
nearest) and multiplies the energy by ``(HW / hw)²`` so that it estimates
the full-resolution sum.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from potts_jax import labels as label_codes

Array = jnp.ndarray

#: Feature dimensions: x, y, r, g, b.
DIM = 5
#: Relaxations whose dense energy the filter computes (quadratic in y).
SUPPORTED = ("bl", "q")
_NOT_QUADRATIC = ("nq", "cce", "cd", "lq")

_INV_STD = math.sqrt(2.0 / 3.0) * (DIM + 1)  # Adams et al.: unit Gaussian.
#: Volume per lattice point in feature units: the lattice {x ∈ Z^{d+1}:
#: Σx = 0, all x_i equal mod d+1} has covolume √(d+1)(d+1)^{d-1} in the
#: elevated space, which is the feature space scaled by _INV_STD.
CELL_VOLUME = math.sqrt(DIM + 1) * (DIM + 1) ** (DIM - 1) / _INV_STD ** DIM
#: Output scale of the filter: ``(2π)^{d/2} / CELL_VOLUME``.
SCALE = (2.0 * math.pi) ** (DIM / 2) / CELL_VOLUME
_SENTINEL = np.iinfo(np.int32).max


def check_relaxation(name: str) -> str:
  """Returns ``name`` if the dense energy supports it, else raises ValueError."""
  if name in SUPPORTED:
    return name
  why = ("is not quadratic in y, so the dense sum has no filtering form"
         if name in _NOT_QUADRATIC else "is not a relaxation")
  raise ValueError(
      f"relaxation {name!r} {why}; the dense neighbourhood supports "
      f"{list(SUPPORTED)} only (not {list(_NOT_QUADRATIC)})"
  )


def _elevation() -> np.ndarray:
  """``[d, d+1]``: features to the hyperplane Σ = 0, scaled by _INV_STD."""
  m = np.zeros((DIM, DIM + 1))
  for k in range(DIM):
    s = _INV_STD / math.sqrt((k + 1) * (k + 2))
    m[k, :k + 1] = s
    m[k, k + 1] = -(k + 1) * s
  return m


def _canonical() -> np.ndarray:
  """``[d+1, d+1]``: vertex r of the canonical simplex, by coordinate rank."""
  d1 = DIM + 1
  return np.array([[r if j <= DIM - r else r - d1 for j in range(d1)]
                   for r in range(d1)], np.int32)


class Lattice(NamedTuple):
  """One lattice per image (leading axis B); M = capacity."""

  index: Array  # [B, N, d+1] int32 vertex slot of each pixel (M if dropped).
  weight: Array  # [B, N, d+1] float32 barycentric weights.
  plus: Array  # [B, d+1, M+1] int32 neighbour slot along +axis (M if none).
  minus: Array  # [B, d+1, M+1] int32 neighbour slot along -axis.
  num_points: Array  # [B] int32 distinct lattice points (may exceed M).


def _simplex(f: Array) -> tuple[Array, Array]:
  """Vertex keys ``[N, d+1, d]`` int32 and weights ``[N, d+1]`` of points."""
  d1 = DIM + 1
  e = jnp.matmul(f, jnp.asarray(_elevation(), jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)  # [N, d+1]
  down = jnp.round(e / d1)
  rem0 = (down * d1).astype(jnp.int32)
  total = jnp.sum(down, axis=-1).astype(jnp.int32)
  diff = e - rem0
  i = jnp.arange(d1)
  greater = diff[:, None, :] > diff[:, :, None]  # [N, i, j]: diff_j > diff_i
  ge = diff[:, None, :] >= diff[:, :, None]
  rank = jnp.sum(jnp.where(i[None, :] > i[:, None], greater, ge)
                 & (i[None, :] != i[:, None]), axis=-1).astype(jnp.int32)
  rank = rank + total[:, None]
  rem0 = jnp.where(rank < 0, rem0 + d1, jnp.where(rank > DIM, rem0 - d1, rem0))
  rank = jnp.where(rank < 0, rank + d1, jnp.where(rank > DIM, rank - d1, rank))
  v = (e - rem0) / d1
  bary = (jnp.einsum("ni,nic->nc", v, jax.nn.one_hot(DIM - rank, d1 + 1))
          - jnp.einsum("ni,nic->nc", v, jax.nn.one_hot(DIM - rank + 1, d1 + 1)))
  bary = bary.at[:, 0].add(1.0 + bary[:, d1])[:, :d1]
  canonical = jnp.asarray(_canonical())
  keys = rem0[:, None, :] + canonical[:, rank].transpose(1, 0, 2)  # [N, r, i]
  return keys[..., :DIM], bary


def _sort(columns, num_keys):
  return jax.lax.sort(tuple(columns), dimension=0, num_keys=num_keys)


def _neighbours(keys: Array, valid: Array, step: np.ndarray) -> Array:
  """Slot of ``keys[m] + step`` for every slot m, M where absent.

  Sorts the keys together with the moved keys (entries before queries on
  ties) and reads, for each query, the last entry at or before it.
  """
  m = keys.shape[0]
  query = keys + jnp.asarray(step, jnp.int32)
  both = jnp.concatenate([keys, query], axis=0)
  tag = jnp.repeat(jnp.arange(2, dtype=jnp.int32), m)
  cols = _sort([both[:, c] for c in range(DIM)]
               + [tag, jnp.arange(2 * m, dtype=jnp.int32)], DIM + 1)
  skeys, stag, payload = jnp.stack(cols[:DIM], -1), cols[DIM], cols[DIM + 1]
  pos = jnp.arange(2 * m)
  last = jax.lax.cummax(jnp.where(stag == 0, pos, -1))
  safe = jnp.maximum(last, 0)
  match = (last >= 0) & jnp.all(skeys[safe] == skeys, axis=-1)
  found = jnp.where(match, payload[safe], m)
  target = jnp.where(stag == 1, payload - m, m)
  out = jnp.full((m + 1,), m, jnp.int32).at[target].set(found, mode="drop")
  return jnp.where(jnp.append(valid, False), out, m)


def _build_one(f: Array, capacity: int):
  n = f.shape[0]
  keys, bary = _simplex(f - jnp.min(f, axis=0))
  flat = keys.reshape(n * (DIM + 1), DIM)
  cols = _sort([flat[:, c] for c in range(DIM)]
               + [jnp.arange(flat.shape[0], dtype=jnp.int32)], DIM)
  skeys, perm = jnp.stack(cols[:DIM], -1), cols[DIM]
  new = jnp.concatenate([jnp.ones((1,), bool),
                         jnp.any(skeys[1:] != skeys[:-1], axis=-1)])
  seg = jnp.cumsum(new.astype(jnp.int32)) - 1
  num_points = seg[-1] + 1
  slot = jnp.where(seg < capacity, seg, capacity)
  index = jnp.zeros_like(perm).at[perm].set(slot).reshape(n, DIM + 1)
  ukeys = jnp.full((capacity, DIM), _SENTINEL, jnp.int32).at[seg].set(
      skeys, mode="drop")
  valid = jnp.arange(capacity) < num_points
  plus = []
  for axis in range(DIM + 1):
    step = np.ones(DIM, np.int32)
    if axis < DIM:
      step[axis] = -DIM
    plus.append(_neighbours(ukeys, valid, step))
  plus = jnp.stack(plus)  # [d+1, M+1]
  rows = jnp.broadcast_to(jnp.arange(capacity + 1, dtype=jnp.int32),
                          plus.shape)
  minus = jnp.full_like(plus, capacity).at[
      jnp.arange(DIM + 1)[:, None], plus].set(rows)
  minus = minus.at[:, capacity].set(capacity)
  return index, bary, plus, minus, num_points


def build_lattice(features: Array, capacity: int | None = None) -> Lattice:
  """The permutohedral lattice of each image's points.

  Args:
    features: ``[B, N, 5]`` positions already divided by the bandwidths.
    capacity: static number of lattice slots; ``None`` = ``6N``, the bound
      that is never exceeded (module docstring).

  Returns:
    :class:`Lattice`; nothing in it carries a gradient.
  """
  features = jax.lax.stop_gradient(jnp.asarray(features, jnp.float32))
  if features.ndim != 3 or features.shape[-1] != DIM:
    raise ValueError(f"features must be [B, N, {DIM}]; got {features.shape}")
  n = features.shape[1]
  capacity = n * (DIM + 1) if capacity is None else int(capacity)
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1; got {capacity}")
  return Lattice(*_build(features, capacity))


@functools.partial(jax.jit, static_argnums=1)
def _build(features, capacity):
  return jax.vmap(lambda f: _build_one(f, capacity))(features)


def check_capacity(lattice: Lattice) -> None:
  """Raises ValueError if a lattice overflowed (no-op on tracers)."""
  check_num_points(lattice.num_points, lattice.plus.shape[-1] - 1,
                   lattice.index.shape[1])


def check_num_points(num_points: Array, capacity: int, num_pixels: int
                     ) -> None:
  """Raises ValueError if any of ``num_points`` ``[B]`` exceeds ``capacity``.

  A no-op when ``num_points`` is a tracer (inside ``jit``).
  """
  if isinstance(num_points, jax.core.Tracer):
    return
  needed = int(np.max(np.asarray(num_points)))
  if needed > capacity:
    raise ValueError(
        f"permutohedral lattice overflow: an image needs {needed} lattice "
        f"points but capacity is {capacity}; pass capacity >= {needed}, or "
        f"None for the bound 6N = {6 * num_pixels} (N = {num_pixels} pixels "
        "at the working resolution)"
    )


def _filter_one(values, index, weight, plus, minus):
  m = plus.shape[-1] - 1
  c = values.shape[-1]
  contrib = (weight[..., None] * values[:, None, :]).reshape(-1, c)
  lat = jax.ops.segment_sum(contrib, index.reshape(-1), num_segments=m + 1)
  lat = lat.at[m].set(0.0)
  order = list(range(DIM)) + [DIM] + list(range(DIM - 1, -1, -1))
  for j, axis in enumerate(order):
    side = 0.25 if axis == DIM else 0.125
    lat = (1.0 - 2.0 * side) * lat + side * (lat[plus[axis]] + lat[minus[axis]])
  del j
  out = jnp.sum(weight[..., None] * lat[index], axis=1)
  return SCALE * out


@jax.custom_vjp
def bilateral_filter(values: Array, lattice: Lattice) -> Array:
  """``(F v)_i ≈ Σ_j exp(-½‖f_i - f_j‖²) v_j`` (``j = i`` included).

  Linear in ``values`` and symmetric; its VJP is the same filter.

  Args:
    values: ``[B, N, C]``.
    lattice: from :func:`build_lattice` on ``[B, N, 5]`` features.

  Returns:
    ``[B, N, C]`` float32.
  """
  values = jnp.asarray(values, jnp.float32)
  return jax.vmap(_filter_one)(values, lattice.index, lattice.weight,
                               lattice.plus, lattice.minus)


def _filter_fwd(values, lattice):
  return bilateral_filter(values, lattice), lattice


def _filter_bwd(lattice, cotangent):
  return bilateral_filter(cotangent, lattice), None


bilateral_filter.defvjp(_filter_fwd, _filter_bwd)


def features(image: Array, sigma_xy: float, sigma_rgb: float,
             pixel_size: tuple[float, float] = (1.0, 1.0)) -> Array:
  """``[B, H*W, 5]`` = (x/σ_xy, y/σ_xy, r/σ_rgb, g/σ_rgb, b/σ_rgb).

  Args:
    image: ``[B, H, W, 3]`` RGB in 0..255.
    sigma_xy, sigma_rgb: bandwidths in pixels and colour levels.
    pixel_size: ``(rows, cols)`` size of one pixel of ``image`` in
      full-resolution pixels (> 1 after downscaling).
  """
  image = jnp.asarray(image, jnp.float32)
  b, h, w, _ = image.shape
  rows = (jnp.arange(h, dtype=jnp.float32) + 0.5) * pixel_size[0]
  cols = (jnp.arange(w, dtype=jnp.float32) + 0.5) * pixel_size[1]
  yy, xx = jnp.meshgrid(rows, cols, indexing="ij")
  xy = jnp.stack([xx, yy], -1) / sigma_xy
  xy = jnp.broadcast_to(xy, (b, h, w, 2))
  return jnp.concatenate([xy, image / sigma_rgb], -1).reshape(b, h * w, DIM)


class DenseGraph(NamedTuple):
  """The dense neighbourhood of a batch at its working resolution."""

  lattice: Lattice
  mask: Array  # [B, h, w] float32: 1 on valid (non-padding) pixels.
  pair_scale: Array  # scalar: (HW / hw)², 1 without downscaling.


def _small_shape(h: int, w: int, scale_factor: float) -> tuple[int, int]:
  if not 0.0 < scale_factor <= 1.0:
    raise ValueError(f"scale_factor must be in (0, 1]; got {scale_factor!r}")
  return max(1, round(h * scale_factor)), max(1, round(w * scale_factor))


def prepare(image: Array, labels: Array, *, sigma_xy: float = 100.0,
            sigma_rgb: float = 9.0, scale_factor: float = 1.0,
            capacity: int | None = None) -> DenseGraph:
  """Builds the lattice of a batch (once per image; reuse it across steps).

  Args:
    image: ``[B, H, W, 3]`` RGB in 0..255.
    labels: ``[B, H, W]`` int; 254 (padding) pixels are dropped from all pairs.
    sigma_xy, sigma_rgb: bandwidths in full-resolution pixels and levels.
    scale_factor: static, in (0, 1]; < 1 filters at ``round(H s) x round(W s)``.
    capacity: lattice slots per image, see :func:`build_lattice`.

  Raises:
    ValueError: outside ``jit``, when the lattice overflows ``capacity``.
  """
  image = jnp.asarray(image, jnp.float32)
  b, h, w, c = image.shape
  mask = label_codes.valid(jnp.asarray(labels)).astype(jnp.float32)
  sh, sw = _small_shape(h, w, scale_factor)
  if (sh, sw) != (h, w):
    image = jax.image.resize(image, (b, sh, sw, c), "nearest")
    mask = jax.image.resize(mask, (b, sh, sw), "nearest")
  feats = features(image, sigma_xy, sigma_rgb, (h / sh, w / sw))
  # Padding pixels go to one far corner (zero values there anyway), so that
  # the lattice of the valid pixels is exactly that of the image without them.
  valid = mask.reshape(b, sh * sw, 1) > 0
  far = jnp.max(jnp.where(valid, feats, 0.0), axis=1, keepdims=True) + 100.0
  lattice = build_lattice(jnp.where(valid, feats, far), capacity)
  check_capacity(lattice)
  return DenseGraph(lattice, mask,
                    jnp.asarray(((h * w) / (sh * sw)) ** 2, jnp.float32))


def _energy_and_grad(y, mask, lattice, relaxation):
  """Energy ``[B]`` and its gradient ``[B, h, w, K]`` from one filtering."""
  b, h, w, k = y.shape
  yf = y.reshape(b, h * w, k)
  m = mask.reshape(b, h * w, 1)
  out = bilateral_filter(jnp.concatenate([m * yf, m], -1), lattice)
  fy, fm = out[..., :k], out[..., k:]
  a = jnp.sum(yf * yf, -1, keepdims=True)
  s = jnp.sum(yf * fy, -1, keepdims=True)
  if relaxation == "q":  # the diagonal w_ii cancels.
    e = m * (a * fm - s)
    g = 2.0 * m * (fm * yf - fy)
  else:  # bl: Σ_{j≠i} w_ij v_j = (F v)_i - v_i.
    e = m * (fm - m - s + m * a)
    g = -2.0 * m * (fy - m * yf)
  return jnp.sum(e, axis=(1, 2)), g.reshape(b, h, w, k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _energy(y, mask, lattice, relaxation):
  return _energy_and_grad(y, mask, lattice, relaxation)[0]


def _energy_fwd(y, mask, lattice, relaxation):
  return _energy_and_grad(y, mask, lattice, relaxation)


def _energy_bwd(relaxation, g, cotangent):
  del relaxation
  return cotangent[:, None, None, None] * g, None, None


_energy.defvjp(_energy_fwd, _energy_bwd)


def dense_energy(y: Array, graph: DenseGraph, relaxation: str = "q") -> Array:
  """``Σ_{i≠j valid} w_ij P(y_i, y_j)`` per image (module docstring).

  Differentiable in ``y`` (one filtering for value and gradient).

  Args:
    y: ``[B, H, W, K]`` distributions at full resolution.
    graph: from :func:`prepare` on the same batch.
    relaxation: ``bl`` or ``q``.

  Returns:
    ``[B]`` float32.
  """
  check_relaxation(relaxation)
  y = jnp.asarray(y, jnp.float32)
  b, h, w, k = y.shape
  sh, sw = graph.mask.shape[1:]
  if (sh, sw) != (h, w):
    y = jax.image.resize(y, (b, sh, sw, k), "linear")
  return graph.pair_scale * _energy(y, graph.mask, graph.lattice, relaxation)


def count_lattice_points(image: Array, labels: Array, **options) -> np.ndarray:
  """``[B]`` lattice points each image needs (to choose a ``capacity``)."""
  graph = prepare(image, labels, **options)
  return np.asarray(graph.lattice.num_points)
