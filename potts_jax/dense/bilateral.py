"""Dense Potts energies by permutohedral-lattice filtering.

The dense neighbourhood pairs every two valid pixels of an image with

  ``w_ij = exp(-‖x_i - x_j‖²/(2σ_xy²) - ‖I_i - I_j‖²/(2σ_rgb²))``,

a unit Gaussian of the 5-D features ``f_i = (x/σ_xy, y/σ_xy, r/σ_rgb,
g/σ_rgb, b/σ_rgb)`` (x the column, y the row, RGB in 0..255). Sums
``Σ_{j≠i} w_ij v_j`` cost O(N) with the lattice filter ``F`` of
:mod:`potts_jax.dense.lattice` (splat, blur, slice), corrected as follows.

**Why the plain filter is not enough.** On real photos the plain Adams
filter misses the exact dense energy by -11 % .. +42 % per 40-48 px crop
(σ_xy = 100, σ_rgb = 9; +87 % on a constant image), and the error moves by
±15 % when the lattice is shifted against the image, so it is not a scale
constant (Adams' feature scale √(2/3)(d+1) is right: blur variance ¾ plus
splat and slice ⅛ each make exactly 1 per axis). Two effects, measured with
the exact ``[N, N]`` lattice matrix: (1) the lattice kernel depends on where
a point sits in its cell: ``k(f, f)`` ranges 0.8-2.6 (the Gaussian's is 1)
and a photo's many near-identical colours all sit at the same place;
(2) the sparse lattice drops blur paths through unoccupied points, which
thins the kernel's tails by a data-dependent amount. The pixel's own term
``w_ii`` is not the cause (< 1 % of the energy).

**The corrected affinity** (:func:`affinity`), symmetric and linear:

  ``A v = α (n ⊙ F(n ⊙ v)) - v``,  ``n_i = k(f_i, f_i)^{-1/2}``,

(1) normalises the kernel to unit self-affinity with the closed-lattice
``k(f_i, f_i)``, which is exact and cheap (``Lattice.self_weight``);
(2) calibrates its scale per image with ``α = Σ_{i∈R} (W m + m)_i /
Σ_{i∈R} (n ⊙ F(n ⊙ m))_i``, a ratio estimator from the exact Gaussian sums
of :data:`NUM_CALIBRATION` = 128 fixed pixels R (O(128 N), once per image);
and builds the lattice on ``0.9 f`` (:data:`LATTICE_SCALE`: a 10 % wider
lattice kernel offsets the thinned tails; measured, not derived).
``-v`` removes the diagonal ``w_ii = 1``.

Accuracy (relative error of the energy against float64 brute force,
σ_xy = 100, σ_rgb = 9, K = 3 soft labels; benchmarks/RESULTS.md has the
table): 100 crops (40 and 48 px) of the 50 GrabCut photos: ``q`` -3.3 % ..
+8.7 % (mean |error| 1.3 %), ``bl`` -2.3 % .. +3.4 % (0.9 %); the 50 whole
photos shrunk to 40 px: ``q`` -6.4 % .. +7.3 % (2.0 %), ``bl`` -3.4 % ..
+1.7 % (1.1 %); gradient cosine ≥ 0.993. The plain filter on the same sets:
``q`` -11 % .. +42 % and -8 % .. +80 %, ``bl`` -8 % .. +43 % and -3 % ..
+74 %. At σ_xy = 10 (16 photos) ``q`` is within -6 % .. +13 %, ``bl``
-3 % .. +6 % (plain: -39 % .. -2 %, -17 % .. +3 %).

Dense Potts energies (quadratic relaxations only). The pair convention is
that of the grid neighbourhoods (:mod:`potts_jax.neighborhoods`), so that
λ means the same on ``nn4``, ``nn8`` and ``dense``: a sum over **unordered**
pairs ``{i, j}``, ``i ≠ j``, of valid pixels, each pair counted once (half
the sum over ordered pairs that the rloss DenseCRF loss computes):

* ``bl``: ``Σ_{i<j} w_ij (1 - y_iᵀy_j) = ½ Σ_{i≠j} ...``, gradient
  ``-Σ_{j≠i} w_ij y_j``;
* ``q``: ``Σ_{i<j} w_ij ½‖y_i - y_j‖²``, gradient ``Σ_{j≠i} w_ij (y_i - y_j)``;

both from one filtering of ``[m y, m]`` (m the valid-pixel mask; padding,
label 254, takes part in no pair). With a spatial bandwidth so small that
only the 4 nearest neighbours carry weight, the dense energy is the ``nn4``
grid energy with the dense weights (tests/test_bilateral.py). ``scale_factor < 1`` downscales as the
rloss DenseCRFLoss does (``y`` bilinearly with antialiasing, image and mask
nearest) and multiplies the energy by ``(HW / hw)²`` so that it estimates
the full-resolution sum.

**Capacity.** ``capacity=None`` is the safe static bound 6N lattice slots;
real photos need 2-13 % of N at 513² (60-100 % of N at 40 px), and the
filter's cost grows with the capacity. :func:`choose_capacity` counts the
points of a concrete batch on the host and rounds up to a bucket; pass the
result as ``capacity`` (``lattice_capacity`` of :func:`potts_jax.solver.solve`).
A training run fixes one value for its crops
(``config.energy.lattice_capacity``: the largest count over a few batches,
with headroom). An overflow raises ValueError outside ``jit``; inside,
:func:`prepare` drops the extra points (``Lattice.num_points`` tells), and
the solver and the GD loss check that count on the host
(:func:`check_num_points`), failing the computation with the same message.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from potts_jax import labels as label_codes
from potts_jax.dense.lattice import (  # noqa: F401  (the public lattice API)
    CELL_VOLUME, DIM, SCALE, Lattice, bilateral_filter, build_lattice,
    check_key_range)
from potts_jax.dense.lattice_points import count_points

Array = jnp.ndarray

#: Relaxations whose dense energy the filter computes (quadratic in y).
SUPPORTED = ("bl", "q")
_NOT_QUADRATIC = ("nq", "cce", "cd", "lq")
#: The lattice is built on ``LATTICE_SCALE * f`` (module docstring).
LATTICE_SCALE = 0.9
#: Pixels per image whose exact Gaussian sums calibrate the scale α.
NUM_CALIBRATION = 128


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


def check_capacity(lattice: Lattice) -> None:
  """Raises ValueError if a lattice overflowed (no-op on tracers; inside
  ``jit`` the caller checks ``num_points`` with :func:`check_num_points`)."""
  if isinstance(lattice.num_points, jax.core.Tracer):
    return
  check_key_range(lattice.key_range)
  check_num_points(lattice.num_points, lattice.plus.shape[-1] - 1,
                   lattice.index.shape[1])


def check_num_points(num_points: Array, capacity: int, num_pixels: int
                     ) -> None:
  """Raises ValueError if any of ``num_points`` ``[B]`` exceeds ``capacity``.

  Inside ``jit`` (``num_points`` a tracer) and with ``capacity`` below the
  bound ``6 * num_pixels``, the check runs on the host once the values are
  known (``jax.debug.callback``): the computation then fails with a
  ``JaxRuntimeError`` that carries this message, instead of returning a
  filter with dropped points.
  """
  if isinstance(num_points, jax.core.Tracer):
    if capacity < 6 * num_pixels:
      jax.debug.callback(functools.partial(
          check_num_points, capacity=capacity, num_pixels=num_pixels),
          num_points)
    return
  needed = int(np.max(np.asarray(num_points)))
  if needed > capacity:
    raise ValueError(
        f"permutohedral lattice overflow: an image needs {needed} lattice "
        f"points but capacity is {capacity}; pass capacity >= {needed}, or "
        f"None for the bound 6N = {6 * num_pixels} (N = {num_pixels} pixels "
        "at the working resolution); in training, "
        "config.energy.lattice_capacity"
    )


def round_capacity(points, num_points_bound: int, headroom: float = 1.25
                   ) -> int:
  """A static capacity for lattices of up to ``max(points)`` points.

  ``headroom × max(points)`` rounded up to the next bucket ``2^e × {1, 1.25,
  1.5, 1.75}`` (steps of at most 25 %, so a training run sees few distinct
  capacities and recompiles rarely), at most ``num_points_bound`` (6N).
  """
  if headroom < 1.0:
    raise ValueError(f"headroom must be >= 1; got {headroom}")
  need = max(1.0, headroom * float(np.max(np.asarray(points))))
  e = 2 ** max(0, math.floor(math.log2(need)) - 2)
  bucket = int(math.ceil(need / e) * e)
  return int(min(bucket, num_points_bound))


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

  # Built on LATTICE_SCALE * features; its weights are multiplied by
  # n_i = k(f_i, f_i)^{-1/2}, so that bilateral_filter(v, lattice) = n⊙F(n⊙v).
  lattice: Lattice
  mask: Array  # [B, h, w] float32: 1 on valid (non-padding) pixels.
  pair_scale: Array  # scalar: (HW / hw)², 1 without downscaling.
  alpha: Array  # [B] float32: the calibrated scale α.


def _small_shape(h: int, w: int, scale_factor: float) -> tuple[int, int]:
  if not 0.0 < scale_factor <= 1.0:
    raise ValueError(f"scale_factor must be in (0, 1]; got {scale_factor!r}")
  return max(1, round(h * scale_factor)), max(1, round(w * scale_factor))


def _working(image, labels, sigma_xy, sigma_rgb, scale_factor):
  """Features ``[B, n, 5]`` (padding moved far away), mask, full/small sizes."""
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
  return jnp.where(valid, feats, far), mask, (h, w), (sh, sw)


def _sample(mask: Array, size: int) -> Array:
  """``[B, size]`` fixed, spread-out pixel indices, valid pixels first.

  A hash of (row, column), so that padding added below or to the right of
  an image leaves the chosen pixels unchanged.
  """
  h, w = mask.shape[1:]
  rows = jnp.arange(h, dtype=jnp.uint32)[:, None] * jnp.uint32(2654435761)
  cols = jnp.arange(w, dtype=jnp.uint32)[None, :] * jnp.uint32(2246822519)
  spread = ((rows ^ cols) * jnp.uint32(2654435761)) >> 8
  score = mask + (spread.astype(jnp.float32) / 2.0 ** 24)[None]  # in [0, 1)
  return jax.lax.top_k(score.reshape(mask.shape[0], h * w), size)[1]


def _exact_sums(feats: Array, mask: Array, rows: Array) -> Array:
  """``[B, R]`` exact ``Σ_j m_j w_ij`` (``j = i`` included) for pixels ``rows``."""
  def one(args):
    f, m, r = args
    f = f - jnp.sum(f * m[:, None], 0) / jnp.maximum(jnp.sum(m), 1.0)
    fr = f[r]
    d2 = (jnp.sum(fr * fr, -1)[:, None] + jnp.sum(f * f, -1)[None]
          - 2.0 * jnp.matmul(fr, f.T, precision=jax.lax.Precision.HIGHEST))
    return jnp.exp(-0.5 * jnp.maximum(d2, 0.0)) @ m
  return jax.lax.map(one, (feats, mask, rows))


def prepare(image: Array, labels: Array, *, sigma_xy: float = 100.0,
            sigma_rgb: float = 9.0, scale_factor: float = 1.0,
            capacity: int | None = None) -> DenseGraph:
  """Builds the lattice and calibration of a batch (once per image; reuse it
  across solver steps).

  Args:
    image: ``[B, H, W, 3]`` RGB in 0..255.
    labels: ``[B, H, W]`` int; 254 (padding) pixels are dropped from all pairs.
    sigma_xy, sigma_rgb: bandwidths in full-resolution pixels and levels.
    scale_factor: static, in (0, 1]; < 1 filters at ``round(H s) x round(W s)``.
    capacity: static lattice slots per image; None = the bound 6N (module
      docstring, :func:`choose_capacity`).

  Raises:
    ValueError: outside ``jit``, when the lattice overflows ``capacity``.
  """
  feats, mask, (h, w), (sh, sw) = _working(image, labels, sigma_xy,
                                           sigma_rgb, scale_factor)
  feats = jax.lax.stop_gradient(feats)
  lattice = build_lattice(LATTICE_SCALE * feats, capacity)
  check_capacity(lattice)
  lattice = lattice._replace(weight=lattice.weight * jax.lax.rsqrt(
      lattice.self_weight)[..., None])
  m = mask.reshape(mask.shape[0], -1)
  rows = _sample(mask, min(NUM_CALIBRATION, m.shape[1]))
  exact = jnp.sum(jnp.take_along_axis(m, rows, 1)
                  * _exact_sums(feats, m, rows), 1)
  ours = bilateral_filter(m[..., None], lattice)[..., 0]
  ours = jnp.sum(jnp.take_along_axis(m * ours, rows, 1), 1)
  alpha = jnp.where(ours > 0, exact / jnp.where(ours > 0, ours, 1.0), 1.0)
  return DenseGraph(lattice, mask,
                    jnp.asarray(((h * w) / (sh * sw)) ** 2, jnp.float32),
                    alpha)


def affinity(values: Array, graph: DenseGraph) -> Array:
  """``[B, N, C]`` ≈ ``Σ_{j≠i} w_ij v_j``: ``α n ⊙ F(n ⊙ v) - v``.

  Symmetric and linear in ``values`` ``[B, N, C]`` (N the working-resolution
  pixels); mask padding in ``values`` yourself.
  """
  values = jnp.asarray(values, jnp.float32)
  out = bilateral_filter(values, graph.lattice)
  return graph.alpha[:, None, None] * out - values


def _energy_and_grad(y, graph, relaxation):
  """Energy ``[B]`` and its gradient ``[B, h, w, K]`` from one filtering."""
  b, h, w, k = y.shape
  yf = y.reshape(b, h * w, k)
  m = graph.mask.reshape(b, h * w, 1)
  out = affinity(jnp.concatenate([m * yf, m], -1), graph)
  fy, fm = out[..., :k], out[..., k:]
  s = jnp.sum(yf * fy, -1, keepdims=True)
  # Unordered pairs: half of the sums over ordered pairs i ≠ j.
  if relaxation == "q":  # the diagonal cancels.
    a = jnp.sum(yf * yf, -1, keepdims=True)
    e = 0.5 * m * (a * fm - s)
    g = m * (fm * yf - fy)
  else:
    e = 0.5 * m * (fm - s)
    g = -m * fy
  return jnp.sum(e, axis=(1, 2)), g.reshape(b, h, w, k)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _energy(y, graph, relaxation):
  return _energy_and_grad(y, graph, relaxation)[0]


def _energy_fwd(y, graph, relaxation):
  return _energy_and_grad(y, graph, relaxation)


def _energy_bwd(relaxation, g, cotangent):
  del relaxation
  return cotangent[:, None, None, None] * g, None


_energy.defvjp(_energy_fwd, _energy_bwd)


def dense_energy(y: Array, graph: DenseGraph, relaxation: str = "q") -> Array:
  """``Σ_{i<j valid} w_ij P(y_i, y_j)`` per image (module docstring).

  Each unordered pair of valid pixels counts once, as on the grid.

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
  return graph.pair_scale * _energy(y, graph, relaxation)


def count_lattice_points(image: Array, labels: Array, *,
                         sigma_xy: float = 100.0, sigma_rgb: float = 9.0,
                         scale_factor: float = 1.0, **unused) -> np.ndarray:
  """``[B]`` lattice points each image needs (host side, concrete inputs).

  Same options as :func:`prepare` (``capacity`` is ignored).
  """
  unused.pop("capacity", None)
  if unused:
    raise TypeError(f"unknown option(s) {sorted(unused)}")
  feats, _, _, _ = _working(image, labels, sigma_xy, sigma_rgb, scale_factor)
  return count_points(LATTICE_SCALE * feats)


def choose_capacity(image: Array, labels: Array, *, headroom: float = 1.25,
                    **options) -> int:
  """A bucketed static ``capacity`` for this batch (host side).

  ``headroom × max(count_lattice_points)`` rounded up to the next of
  ``2^e × {1, 1.25, 1.5, 1.75}`` (:func:`round_capacity`),
  at most the bound 6N. Same options as :func:`prepare`.
  """
  points = count_lattice_points(image, labels, **options)
  h, w = np.shape(labels)[1:]
  sh, sw = _small_shape(h, w, options.get("scale_factor", 1.0))
  return round_capacity(points, 6 * sh * sw, headroom)
