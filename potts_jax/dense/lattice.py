"""The permutohedral lattice of Adams, Baek and Davis (2010) in pure JAX.

``(F v)_i ≈ Σ_j exp(-½‖f_i - f_j‖²) v_j`` for points ``f`` in R^5 in O(N):
*splat* each point onto the d+1 vertices of its enclosing simplex
(barycentric weights), *blur* the lattice along its d+1 axes, *slice* back
with the same weights (Krähenbühl's densecrf and the rloss DenseCRFLoss use
the same construction). :mod:`potts_jax.dense.bilateral` builds the dense Potts
energies on it, and :mod:`potts_jax.dense.lattice_points` counts the lattice
points of a batch on the host.

Static shapes:

* :func:`build_lattice` finds the vertices by sorting: every vertex key (five
  integer coordinates, packed into three int32 words) of every point is
  sorted, equal keys share one slot, and each axis neighbour is found by a
  binary search in the sorted keys. **Capacity bound**: N points touch at
  most ``N (d+1) = 6N`` lattice points, the default capacity, which is never
  exceeded. Real photos need far fewer (benchmarks/RESULTS.md has the
  counts; :func:`potts_jax.dense.lattice_points.count_points` counts them on
  the host). Points beyond a smaller capacity are dropped and
  ``Lattice.num_points`` records how many there were
  (:func:`potts_jax.dense.bilateral.check_capacity` raises).
* **Key range bound**: each key coordinate must span less than
  :data:`MAX_KEY_RANGE`, i.e. the features less than about 3,700 kernel
  widths along every axis (:func:`check_key_range` raises; inside ``jit``
  from a host callback).
* The blur is the palindrome :data:`BLUR` of per-axis 3-tap blurs
  (``[1/8, 3/4, 1/8]`` on axes 0..d-1 twice, ``[1/4, 1/2, 1/4]`` on axis d
  once): variance ½ lattice step² per axis as in Adams et al., and ``F = Sᵀ
  B S`` is exactly symmetric, so the VJP of :func:`bilateral_filter` is the
  filter itself. Lattice points that no input touches are not stored, so
  blur paths through them are dropped (the sparse lattice of Adams et al.).
* Output scale: :data:`SCALE` makes the kernel's mass that of the unit
  Gaussian for a uniform density of points.
* ``Lattice.self_weight`` is ``k(f_i, f_i)`` of every point on the full
  (closed) lattice, exact and cheap (the blur's kernel between the vertices
  of one simplex, :data:`KAPPA`): 0.8-2.6 depending on where the point sits
  in its cell, against 1 for the Gaussian. :mod:`potts_jax.dense.bilateral`
  normalises the kernel by it.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from potts_jax import platforms

Array = jnp.ndarray

#: Feature dimensions (x, y, r, g, b for the dense CRF).
DIM = 5
_D1 = DIM + 1
_INV_STD = math.sqrt(2.0 / 3.0) * _D1  # Adams et al.: unit Gaussian.
#: Volume per lattice point in feature units: the lattice {x ∈ Z^{d+1}:
#: Σx = 0, all x_i equal mod d+1} has covolume √(d+1)(d+1)^{d-1} in the
#: elevated space, which is the feature space scaled by _INV_STD.
CELL_VOLUME = math.sqrt(_D1) * _D1 ** (DIM - 1) / _INV_STD ** DIM
#: Output scale of the filter: ``(2π)^{d/2} / CELL_VOLUME``.
SCALE = (2.0 * math.pi) ** (DIM / 2) / CELL_VOLUME
#: The blur: ``(axis, s)`` passes of ``[s, 1 - 2s, s]``, a palindrome.
BLUR = tuple([(a, 0.125) for a in range(DIM)] + [(DIM, 0.25)]
             + [(a, 0.125) for a in range(DIM - 1, -1, -1)])
#: Packed key coordinates must span less than this (16-bit fields, one sign).
MAX_KEY_RANGE = 2 ** 15 - 1
_SENTINEL = np.iinfo(np.int32).max


def _elevation() -> np.ndarray:
  """``[d, d+1]``: features to the hyperplane Σ = 0, scaled by _INV_STD."""
  m = np.zeros((DIM, _D1))
  for k in range(DIM):
    s = _INV_STD / math.sqrt((k + 1) * (k + 2))
    m[k, :k + 1] = s
    m[k, k + 1] = -(k + 1) * s
  return m


def _canonical() -> np.ndarray:
  """``[d+1, d+1]``: vertex r of the canonical simplex, by coordinate rank."""
  return np.array([[r if j <= DIM - r else r - _D1 for j in range(_D1)]
                   for r in range(_D1)], np.int32)


def _kappa() -> np.ndarray:
  """``[2^(d+1)]``: the closed-lattice blur between vertices ``Σ_{j∈S} u_j``
  apart (u_j the axis steps, S a bit set), ``Σ_c Π_j k_j(1[j∈S] + c)`` with
  k_j the blur's 1-D kernel along axis j (the axes sum to zero)."""
  kernels = []
  for axis in range(_D1):
    k = {0: 1.0}
    for a, s in BLUR:
      if a == axis:
        new = {}
        for o, v in k.items():
          for step, w in ((-1, s), (0, 1.0 - 2.0 * s), (1, s)):
            new[o + step] = new.get(o + step, 0.0) + v * w
        k = new
    kernels.append(k)
  reach = len(BLUR)
  table = np.zeros(2 ** _D1)
  for bits in range(2 ** _D1):
    for c in range(-reach, reach + 1):
      table[bits] += np.prod([kernels[j].get(((bits >> j) & 1) + c, 0.0)
                              for j in range(_D1)])
  return table


#: Closed-lattice blur between two vertices of one simplex, by axis bit set.
KAPPA = _kappa()


class Lattice(NamedTuple):
  """One lattice per point set (leading axis B); M = capacity."""

  index: Array  # [B, N, d+1] int32 vertex slot of each point (M if dropped).
  weight: Array  # [B, N, d+1] float32 barycentric weights.
  plus: Array  # [B, d+1, M+1] int32 neighbour slot along +axis (M if none).
  minus: Array  # [B, d+1, M+1] int32 neighbour slot along -axis.
  num_points: Array  # [B] int32 distinct lattice points (may exceed M).
  self_weight: Array  # [B, N] float32 closed-lattice k(f_i, f_i).
  key_range: Array  # [B] int32 largest span of a key coordinate.


def _simplex(f: Array) -> tuple[Array, Array, Array]:
  """Vertex keys ``[N, d+1, d]``, weights ``[N, d+1]``, ranks ``[N, d+1]``."""
  e = jnp.matmul(f, jnp.asarray(_elevation(), jnp.float32),
                 precision=jax.lax.Precision.HIGHEST)  # [N, d+1]
  down = jnp.round(e / _D1)
  rem0 = (down * _D1).astype(jnp.int32)
  total = jnp.sum(down, axis=-1).astype(jnp.int32)
  diff = e - rem0
  i = jnp.arange(_D1)
  greater = diff[:, None, :] > diff[:, :, None]  # [N, i, j]: diff_j > diff_i
  ge = diff[:, None, :] >= diff[:, :, None]
  rank = jnp.sum(jnp.where(i[None, :] > i[:, None], greater, ge)
                 & (i[None, :] != i[:, None]), axis=-1).astype(jnp.int32)
  rank = rank + total[:, None]
  rem0 = jnp.where(rank < 0, rem0 + _D1, jnp.where(rank > DIM, rem0 - _D1, rem0))
  rank = jnp.where(rank < 0, rank + _D1, jnp.where(rank > DIM, rank - _D1, rank))
  v = (e - rem0) / _D1
  bary = (jnp.einsum("ni,nic->nc", v, jax.nn.one_hot(DIM - rank, _D1 + 1))
          - jnp.einsum("ni,nic->nc", v, jax.nn.one_hot(DIM - rank + 1, _D1 + 1)))
  bary = bary.at[:, 0].add(1.0 + bary[:, _D1])[:, :_D1]
  canonical = jnp.asarray(_canonical())
  keys = rem0[:, None, :] + canonical[:, rank].transpose(1, 0, 2)  # [N, r, i]
  return keys[..., :DIM], bary, rank


def _self_weight(bary: Array, rank: Array) -> Array:
  """``[N]`` closed-lattice ``k(f, f) = SCALE Σ_{r,r'} b_r b_r' KAPPA[S]``.

  Vertices r < r' of a simplex differ by the axis steps of the coordinates
  whose rank is in ``(d - r', d - r]``.
  """
  kappa = jnp.asarray(KAPPA, jnp.float32)
  bits = 2 ** jnp.arange(_D1, dtype=jnp.int32)
  total = jnp.zeros(bary.shape[:1], jnp.float32)
  for r in range(_D1):
    for r2 in range(r, _D1):
      inside = (rank > DIM - r2) & (rank <= DIM - r)
      code = jnp.sum(jnp.where(inside, bits, 0), axis=-1)
      total += (1.0 if r == r2 else 2.0) * bary[:, r] * bary[:, r2] * kappa[code]
  return SCALE * total


def _pack(c: list[Array]) -> tuple[Array, Array, Array]:
  """Five coordinates in ``[0, 2^15)`` to three order-preserving int32 words."""
  return c[0] * 65536 + c[1], c[2] * 65536 + c[3], c[4]


def _unpack(words) -> list[Array]:
  w0, w1, w2 = words
  return [w0 // 65536, w0 % 65536, w1 // 65536, w1 % 65536, w2]


def _lower_bound(table, query) -> Array:
  """First slot whose packed key is >= ``query`` (lexicographic)."""
  size = table[0].shape[0]
  lo = jnp.zeros(query[0].shape, jnp.int32)
  hi = jnp.full(query[0].shape, size, jnp.int32)
  for _ in range(max(1, math.ceil(math.log2(size + 1)))):
    mid = (lo + hi) // 2
    at = jnp.minimum(mid, size - 1)
    t = [w[at] for w in table]
    less = (t[0] < query[0]) | ((t[0] == query[0]) & (
        (t[1] < query[1]) | ((t[1] == query[1]) & (t[2] < query[2]))))
    active = lo < hi
    lo = jnp.where(active & less, mid + 1, lo)
    hi = jnp.where(active & ~less, mid, hi)
  return lo


def sorted_keys(f: Array):
  """The sorted vertex keys of one point set ``f`` ``[N, 5]``.

  Returns:
    The packed key words (sorted), their source rows in the ``[N (d+1)]``
    vertex list, the flags of keys that differ from the previous one, the
    barycentric weights ``[N, d+1]``, the ranks ``[N, d+1]`` and the largest
    span of a key coordinate.
  """
  n = f.shape[0]
  keys, bary, rank = _simplex(f - jnp.min(f, axis=0))
  flat = keys.reshape(n * _D1, DIM)
  rel = flat - jnp.min(flat, axis=0)
  key_range = jnp.max(rel)
  words = _pack([rel[:, c] for c in range(DIM)])
  cols = jax.lax.sort(tuple(words) + (jnp.arange(n * _D1, dtype=jnp.int32),),
                      num_keys=3)
  words, perm = cols[:3], cols[3]
  new = jnp.ones((n * _D1,), bool).at[1:].set(
      (words[0][1:] != words[0][:-1]) | (words[1][1:] != words[1][:-1])
      | (words[2][1:] != words[2][:-1]))
  return words, perm, new, bary, rank, key_range


def _build_one(f: Array, capacity: int):
  n = f.shape[0]
  words, perm, new, bary, rank, key_range = sorted_keys(f)
  seg = jnp.cumsum(new.astype(jnp.int32)) - 1
  num_points = seg[-1] + 1
  slot = jnp.where(seg < capacity, seg, capacity)
  index = jnp.zeros_like(perm).at[perm].set(slot).reshape(n, _D1)
  table = tuple(jnp.full((capacity,), _SENTINEL, jnp.int32).at[seg].set(
      w, mode="drop") for w in words)
  valid = jnp.arange(capacity) < num_points
  coords = _unpack(table)
  plus = []
  for axis in range(_D1):
    step = [1] * DIM
    if axis < DIM:
      step[axis] = -DIM
    query = [c + s for c, s in zip(coords, step)]
    inside = valid
    for q in query:
      inside &= q >= 0
    query = _pack(query)
    found = jnp.minimum(_lower_bound(table, query), capacity - 1)
    match = inside & (table[0][found] == query[0]) & (
        table[1][found] == query[1]) & (table[2][found] == query[2])
    plus.append(jnp.append(jnp.where(match, found, capacity), capacity))
  plus = jnp.stack(plus)  # [d+1, M+1]
  rows = jnp.broadcast_to(jnp.arange(capacity + 1, dtype=jnp.int32),
                          plus.shape)
  minus = jnp.full_like(plus, capacity).at[
      jnp.arange(_D1)[:, None], plus].set(rows)
  minus = minus.at[:, capacity].set(capacity)
  return (index, bary, plus, minus, num_points, _self_weight(bary, rank),
          key_range)


def check_features(features) -> Array:
  """``[B, N, 5]`` float32 features without a gradient; else ValueError."""
  features = jax.lax.stop_gradient(jnp.asarray(features, jnp.float32))
  if features.ndim != 3 or features.shape[-1] != DIM:
    raise ValueError(f"features must be [B, N, {DIM}]; got {features.shape}")
  return features


def build_lattice(features: Array, capacity: int | None = None) -> Lattice:
  """The permutohedral lattice of each point set.

  Args:
    features: ``[B, N, 5]`` positions in units of the kernel's std.
    capacity: static number of lattice slots; ``None`` = ``6N``, the bound
      that is never exceeded (module docstring).

  Returns:
    :class:`Lattice`; nothing in it carries a gradient. Overflowing points
    are dropped (:func:`potts_jax.dense.bilateral.check_capacity` raises).

  Raises:
    ValueError: outside ``jit``, if the features span too wide a range.
  """
  features = check_features(features)
  n = features.shape[1]
  capacity = n * _D1 if capacity is None else int(capacity)
  if capacity < 1:
    raise ValueError(f"capacity must be >= 1; got {capacity}")
  lattice = Lattice(*_build(features, capacity))
  check_key_range(lattice.key_range)
  return lattice


@functools.partial(jax.jit, static_argnums=1)
def _build(features, capacity):
  return jax.vmap(lambda f: _build_one(f, capacity))(features)


def check_key_range(key_range) -> None:
  """Raises ValueError if ``Lattice.key_range`` is too wide.

  Inside ``jit`` the check runs on the host once the value is known
  (``jax.debug.callback``): the computation fails with this message instead
  of filtering with aliased keys.
  """
  if isinstance(key_range, jax.core.Tracer):
    jax.debug.callback(check_key_range, key_range)
    return
  widest = int(np.max(np.asarray(key_range)))
  if widest > MAX_KEY_RANGE - 2:
    raise ValueError(
        f"permutohedral lattice keys span {widest}, expected <= "
        f"{MAX_KEY_RANGE - 2}: the features span more than ~3,700 kernel "
        "widths; use larger bandwidths or a smaller image")


_CHUNK = 1024  # points per splat chunk on XLA:CPU


def _splat_scatter(v, index, weight, rows):
  lat = jnp.zeros((rows, v.shape[-1]), jnp.float32)
  for r in range(_D1):
    lat = lat.at[index[:, r]].add(weight[:, r:r + 1] * v,
                                  mode="promise_in_bounds")
  return lat


def _splat_chunked(v, index, weight, rows):
  """XLA:CPU: a loop over chunks of points, so that the N(d+1) weighted rows
  stay in cache (faster than one scatter of them all; benchmarks/RESULTS.md)."""
  total, c = v.shape
  size = min(_CHUNK, total)
  chunks = -(-total // size)
  pad = ((0, chunks * size - total), (0, 0))
  v = jnp.pad(v, pad).reshape(chunks, size, c)
  index = jnp.pad(index, pad, constant_values=rows - 1).reshape(
      chunks, size, _D1)  # the last row is an empty slot M
  weight = jnp.pad(weight, pad).reshape(chunks, size, _D1)

  def body(lat, xs):
    vv, ii, ww = xs
    rows_in = (ww[..., None] * vv[:, None]).reshape(-1, c)
    return lat.at[ii.reshape(-1)].add(rows_in, mode="promise_in_bounds"), None

  return jax.lax.scan(body, jnp.zeros((rows, c), jnp.float32),
                      (v, index, weight))[0]


def _filter(values: Array, lattice: Lattice) -> Array:
  """Splat, blur, slice with the batch folded into one lattice of B(M+1)
  rows (unbatched row gathers and scatters: the fast ones on XLA:CPU)."""
  b, n, c = values.shape
  m1 = lattice.plus.shape[-1]
  offset = jnp.arange(b, dtype=jnp.int32) * m1
  index = (lattice.index + offset[:, None, None]).reshape(b * n, _D1)
  weight = lattice.weight.reshape(b * n, _D1)
  plus = (lattice.plus + offset[:, None, None]).transpose(1, 0, 2).reshape(
      _D1, b * m1)
  minus = (lattice.minus + offset[:, None, None]).transpose(1, 0, 2).reshape(
      _D1, b * m1)
  lat = platforms.on_cpu(functools.partial(_splat_chunked, rows=b * m1),
                         functools.partial(_splat_scatter, rows=b * m1),
                         values.reshape(b * n, c), index, weight)
  real = (jnp.arange(b * m1) % m1 != m1 - 1)[:, None]
  lat = jnp.where(real, lat, 0.0)  # the empty slot M of each image
  take = lambda x, i: x.at[i].get(mode="promise_in_bounds")
  for axis, s in BLUR:
    lat = (1.0 - 2.0 * s) * lat + s * (take(lat, plus[axis])
                                       + take(lat, minus[axis]))
  out = weight[:, :1] * take(lat, index[:, 0])
  for r in range(1, _D1):
    out = out + weight[:, r:r + 1] * take(lat, index[:, r])
  return SCALE * out.reshape(b, n, c)


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
  return _filter(jnp.asarray(values, jnp.float32), lattice)


def _filter_fwd(values, lattice):
  return bilateral_filter(values, lattice), lattice


def _filter_bwd(lattice, cotangent):
  return bilateral_filter(cotangent, lattice), None


bilateral_filter.defvjp(_filter_fwd, _filter_bwd)
