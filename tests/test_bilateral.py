"""Permutohedral filtering and dense Potts energies against brute force.

Reference: the exact O(N²) sums in float64 numpy on crops of real GrabCut
photos (``../shared/data/grabcut``). Measured with this file's crops and
``y = softmax`` of smooth random logits (K = 3), VOC bandwidths σ_xy = 100,
σ_rgb = 9, relative error of the energy ``E_lattice / E_exact - 1``:

* 32 crops (16 photos at long side 96, 40x40 and 48x48 crops): ``q`` mean
  +0.4 %, range -8.3 % .. +7.6 %; ``bl`` mean +3.3 %, range -4.4 % .. +12.7 %
  (``bl`` also carries the lattice's error on the pixel degrees Σ_j w_ij,
  which ``q`` cancels); gradient cosine ≥ 0.985.
* Whole photos shrunk to 40 px (first 12): ``q`` -2 % .. +13 % (mean +4 %),
  ``bl`` +1 % .. +14 %, cosine ≥ 0.989 (tests/test_dense.py).
* Smaller spatial bandwidths are less accurate (the lattice truncates more of
  the thin 2-D image manifold in 5-D): σ_xy = 10 or 5 gives ``q`` errors of
  -7 % .. -22 % with cosines ≥ 0.985.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import bilateral
from potts_jax.data import folder
from potts_jax.data import synthetic

SIGMA_XY, SIGMA_RGB, SIDE = 100.0, 9.0, 40


def exact_weights(image, sigma_xy, sigma_rgb, valid=None):
  """``[N, N]`` float64 w_ij, zero diagonal and zero on padding pairs."""
  h, w, _ = image.shape
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  xy = np.stack([xx, yy], -1).reshape(-1, 2).astype(np.float64)
  rgb = image.reshape(-1, 3).astype(np.float64)
  d2 = (((xy[:, None] - xy[None]) ** 2).sum(-1) / sigma_xy ** 2
        + ((rgb[:, None] - rgb[None]) ** 2).sum(-1) / sigma_rgb ** 2)
  weights = np.exp(-0.5 * d2)
  np.fill_diagonal(weights, 0.0)
  if valid is not None:
    v = valid.reshape(-1).astype(np.float64)
    weights *= v[:, None] * v[None]
  return weights


def exact_energy(y, weights, relaxation):
  """Σ_{i≠j} w_ij P(y_i, y_j) and its gradient, float64 numpy."""
  y = y.reshape(-1, y.shape[-1]).astype(np.float64)
  s = y @ y.T
  a = (y * y).sum(-1)
  if relaxation == "bl":
    pair, grad = 1.0 - s, -2.0 * weights @ y
  else:
    pair = 0.5 * (a[:, None] + a[None]) - s
    grad = 2.0 * (weights.sum(1)[:, None] * y - weights @ y)
  return float((weights * pair).sum()), grad


@pytest.fixture(scope="module")
def crops(shared_data):
  """Six 40x40 crops of real photos (one per image) and soft labels."""
  root = shared_data / "grabcut"
  out = []
  for b, name in enumerate(folder.names(root)[:6]):
    image = folder.load_example(root, name, long_side=96).image
    image = image[20:20 + SIDE, 20:20 + SIDE].astype(np.float32)
    logits = synthetic.smooth_logits(SIDE, SIDE, 3, seed=b, std=2.0)
    out.append((image, np.asarray(jax.nn.softmax(logits), np.float32)))
  return out


def _energy_and_grad(y, image, labels, relaxation, **options):
  graph = bilateral.prepare(image[None], labels[None], **options)
  e, g = jax.value_and_grad(
      lambda y: bilateral.dense_energy(y, graph, relaxation)[0])(
          jnp.asarray(y[None]))
  return float(e), np.asarray(g[0], np.float64)


def _cosine(a, b):
  a, b = a.ravel(), b.ravel()
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("relaxation", ["q", "bl"])
def test_energy_and_gradient_match_brute_force_on_real_photos(crops,
                                                              relaxation):
  labels = np.full((SIDE, SIDE), 255, np.int32)
  errors = []
  for image, y in crops:
    weights = exact_weights(image, SIGMA_XY, SIGMA_RGB)
    e_ref, g_ref = exact_energy(y, weights, relaxation)
    e, g = _energy_and_grad(y, image, labels, relaxation, sigma_xy=SIGMA_XY,
                            sigma_rgb=SIGMA_RGB)
    errors.append(e / e_ref - 1.0)
    assert _cosine(g, g_ref.reshape(g.shape)) >= 0.95
  errors = np.abs(errors)
  assert errors.mean() < 0.05, errors
  assert errors.max() < 0.10, errors


def test_filter_matches_exact_gaussian_sum(crops):
  image, y = crops[0]
  feats = bilateral.features(image[None], SIGMA_XY, SIGMA_RGB)
  out = np.asarray(bilateral.bilateral_filter(
      jnp.asarray(y.reshape(1, -1, 3)), bilateral.build_lattice(feats)))[0]
  weights = exact_weights(image, SIGMA_XY, SIGMA_RGB)
  np.fill_diagonal(weights, 1.0)  # the filter includes j = i
  ref = weights @ y.reshape(-1, 3).astype(np.float64)
  assert np.abs(out - ref).sum() / np.abs(ref).sum() < 0.15


def test_filter_is_linear_symmetric_and_its_own_vjp(crops):
  image, _ = crops[1]
  lattice = bilateral.build_lattice(
      bilateral.features(image[None], SIGMA_XY, SIGMA_RGB))
  n = SIDE * SIDE
  a, b = np.random.default_rng(0).normal(size=(2, 1, n, 4)).astype(np.float32)
  f = lambda v: np.asarray(bilateral.bilateral_filter(jnp.asarray(v), lattice),
                           np.float64)
  fa, fb = f(a), f(b)
  scale = np.abs(fa).max()
  np.testing.assert_allclose(f(2.0 * a - 3.0 * b), 2.0 * fa - 3.0 * fb,
                             atol=1e-5 * scale)
  np.testing.assert_allclose(np.sum(a * fb), np.sum(fa * b), rtol=1e-5)
  _, vjp = jax.vjp(lambda v: bilateral.bilateral_filter(v, lattice),
                   jnp.asarray(a))
  np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(b))[0]), fb,
                             atol=1e-5 * scale)


def test_constant_image_and_single_colour_edge_are_finite():
  """Finite everywhere; the gradient direction stays right.

  Measured (32x32, σ_rgb = 9, q): the edge image is off by -1 % at
  σ_xy = 100 and -18 % / -20 % at σ_xy = 10 / 5. A constant image puts
  every pixel in one lattice cell at σ_xy = 100 (0.32 feature units), where
  the lattice kernel is not shift-invariant: its value at distance 0 is
  0.9-2.4 depending on where the cell is hit, and the energy comes out
  +86 % (+16 % at σ_xy = 10 or 5), a pure scale error (cosine 0.999).
  """
  side = 32
  constant = np.full((side, side, 3), 128.0, np.float32)
  edge = constant.copy()
  edge[:, side // 2:] = (20.0, 200.0, 90.0)
  labels = np.full((side, side), 255, np.int32)
  y = np.asarray(jax.nn.softmax(synthetic.smooth_logits(side, side, 2, seed=3,
                                                        std=2.0)))
  for image, bound in ((constant, 1.0), (edge, 0.25)):
    for sigma_xy in (100.0, 5.0):
      weights = exact_weights(image, sigma_xy, SIGMA_RGB)
      e_ref, g_ref = exact_energy(y, weights, "q")
      for relaxation in ("q", "bl"):
        e, g = _energy_and_grad(y, image, labels, relaxation,
                                sigma_xy=sigma_xy, sigma_rgb=SIGMA_RGB)
        assert np.isfinite(e) and np.all(np.isfinite(g))
      e, g = _energy_and_grad(y, image, labels, "q", sigma_xy=sigma_xy,
                              sigma_rgb=SIGMA_RGB)
      assert abs(e / e_ref - 1.0) < bound, (sigma_xy, e, e_ref)
      assert _cosine(g, g_ref.reshape(g.shape)) >= 0.95
  # One-hot labels on either side of the edge: finite, and the exact zero of
  # q where y is constant on the whole image.
  onehot = np.zeros((side, side, 2), np.float32)
  onehot[..., 0] = 1.0
  e, g = _energy_and_grad(onehot, edge, labels, "q", sigma_xy=100.0)
  assert abs(e) < 1e-3 * side ** 4 and np.all(np.isfinite(g))


def test_padding_takes_part_in_no_pair(crops):
  image, y = crops[2]
  labels = np.full((SIDE, SIDE), 255, np.int32)
  e, g = _energy_and_grad(y, image, labels, "q", sigma_xy=SIGMA_XY)
  padded_image = np.pad(image, ((0, 8), (0, 5), (0, 0)), constant_values=255)
  padded_labels = np.pad(labels, ((0, 8), (0, 5)), constant_values=254)
  padded_y = np.pad(y, ((0, 8), (0, 5), (0, 0)), constant_values=0.5)
  e_pad, g_pad = _energy_and_grad(padded_y, padded_image, padded_labels, "q",
                                  sigma_xy=SIGMA_XY)
  np.testing.assert_allclose(e_pad, e, rtol=1e-5)
  np.testing.assert_allclose(g_pad[:SIDE, :SIDE], g, atol=1e-4 * np.abs(g).max())
  assert np.all(g_pad[SIDE:] == 0) and np.all(g_pad[:, SIDE:] == 0)


def test_downscaling_estimates_the_full_resolution_energy(crops):
  labels = np.full((SIDE, SIDE), 255, np.int32)
  for image, y in crops[:2]:
    e_ref, _ = exact_energy(y, exact_weights(image, SIGMA_XY, SIGMA_RGB), "q")
    e, g = _energy_and_grad(y, image, labels, "q", sigma_xy=SIGMA_XY,
                            scale_factor=0.5)
    assert g.shape == y.shape
    assert abs(e / e_ref - 1.0) < 0.25, (e, e_ref)


def test_capacity_bound_and_overflow_error(crops):
  image, _ = crops[0]
  labels = np.full((1, SIDE, SIDE), 255, np.int32)
  needed = int(bilateral.count_lattice_points(image[None], labels)[0])
  assert 0 < needed <= 6 * SIDE * SIDE
  bilateral.prepare(image[None], labels, capacity=needed)  # fits exactly
  with pytest.raises(ValueError, match=f"overflow.*needs {needed}.*capacity "
                     f"is {needed - 1}"):
    bilateral.prepare(image[None], labels, capacity=needed - 1)
  # Inside jit no error can be raised: the count comes back instead.
  points = jax.jit(lambda im: bilateral.prepare(
      im, labels, capacity=8).lattice.num_points)(image[None])
  assert int(points[0]) == needed


@pytest.mark.parametrize("name", ["cd", "cce", "nq", "lq", "xx"])
def test_unsupported_relaxations_are_named(name):
  with pytest.raises(ValueError, match=f"'{name}'.*'bl', 'q'"):
    bilateral.check_relaxation(name)
  image = np.zeros((1, 4, 4, 3), np.float32)
  graph = bilateral.prepare(image, np.zeros((1, 4, 4), np.int32))
  with pytest.raises(ValueError, match=f"'{name}'"):
    bilateral.dense_energy(np.full((1, 4, 4, 2), 0.5), graph, name)


def test_jit_vmap_and_no_retrace(crops):
  (im0, y0), (im1, y1) = crops[:2]
  labels = np.full((2, SIDE, SIDE), 255, np.int32)
  traces = []

  @jax.jit
  def energy(y, image, sigma_xy, sigma_rgb):
    traces.append(1)
    graph = bilateral.prepare(image, labels, sigma_xy=sigma_xy,
                              sigma_rgb=sigma_rgb)
    return bilateral.dense_energy(y, graph, "q")

  y, image = np.stack([y0, y1]), np.stack([im0, im1])
  eager = np.asarray(bilateral.dense_energy(
      y, bilateral.prepare(image, labels, sigma_xy=SIGMA_XY,
                           sigma_rgb=SIGMA_RGB), "q"))
  np.testing.assert_allclose(energy(y, image, SIGMA_XY, SIGMA_RGB), eager,
                             rtol=1e-5)
  other = energy(y[::-1], image[::-1], 50.0, 5.0)  # new values: no retrace
  assert len(traces) == 1
  chex.assert_shape(other, (2,))
  # vmap over a leading axis of batches (each a batch of one image).
  mapped = jax.vmap(lambda y, im: bilateral.dense_energy(
      y, bilateral.prepare(im, labels[:1], sigma_xy=SIGMA_XY,
                           sigma_rgb=SIGMA_RGB), "q"))(y[:, None],
                                                       image[:, None])
  np.testing.assert_allclose(mapped[:, 0], eager, rtol=1e-5)
