"""Permutohedral filtering and dense Potts energies against brute force.

Reference: the exact O(N²) sums in float64 numpy on crops of real GrabCut
photos (``../shared/data/grabcut``), ``y = softmax`` of smooth random logits
(K = 3), VOC bandwidths σ_xy = 100, σ_rgb = 9. Relative error of the energy
``E_lattice / E_exact - 1`` measured on 100 crops (40 and 48 px) of all 50
photos (benchmarks/RESULTS.md, dense section, has the table):

* corrected affinity (potts_jax/dense/bilateral.py): ``q`` -3.3 % .. +8.7 %
  (mean |error| 1.3 %), ``bl`` -2.3 % .. +3.4 % (0.9 %); gradient cosine
  ≥ 0.993;
* the plain lattice filter (before the correction): ``q`` -11 % .. +42 %,
  ``bl`` -8 % .. +43 %, cosine ≥ 0.982.

The bounds below hold the crops used here (8 photos, 16 crops: ``q`` and
``bl`` within ±3.2 %) with a margin; the plain filter fails them (``q``
up to 6.8 %, ``bl`` up to 9.1 %).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax.dense import bilateral
from potts_jax.dense import lattice as lattice_lib
from potts_jax.dense import lattice_points
from potts_jax import solver
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
  """Σ_{i<j} w_ij P(y_i, y_j) (each unordered pair once) and its gradient,
  float64 numpy."""
  y = y.reshape(-1, y.shape[-1]).astype(np.float64)
  s = y @ y.T
  a = (y * y).sum(-1)
  if relaxation == "bl":
    pair, grad = 1.0 - s, -weights @ y
  else:
    pair = 0.5 * (a[:, None] + a[None]) - s
    grad = weights.sum(1)[:, None] * y - weights @ y
  return float(np.triu(weights * pair, 1).sum()), grad


@pytest.fixture(scope="module")
def crops(shared_data):
  """16 crops of real photos (40x40 and 48x48 or less, two per photo) and
  soft labels."""
  root = shared_data / "grabcut"
  out = []
  for b, name in enumerate(folder.names(root)[:8]):
    image = folder.load_example(root, name, long_side=96).image
    for side, offset in ((SIDE, 20), (48, 30)):
      crop = image[offset:offset + side, offset:offset + side]
      h, w, _ = crop.shape
      logits = synthetic.smooth_logits(h, w, 3, seed=b, std=2.0)
      out.append((crop.astype(np.float32),
                  np.asarray(jax.nn.softmax(logits), np.float32)))
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


def _unlabeled(image):
  return np.full(image.shape[:2], 255, np.int32)


@pytest.mark.parametrize("relaxation,bound", [("q", 0.05), ("bl", 0.04)])
def test_energy_and_gradient_match_brute_force_on_real_photos(
    crops, relaxation, bound):
  errors = []
  for image, y in crops:
    weights = exact_weights(image, SIGMA_XY, SIGMA_RGB)
    e_ref, g_ref = exact_energy(y, weights, relaxation)
    e, g = _energy_and_grad(y, image, _unlabeled(image), relaxation,
                            sigma_xy=SIGMA_XY, sigma_rgb=SIGMA_RGB)
    errors.append(e / e_ref - 1.0)
    assert _cosine(g, g_ref.reshape(g.shape)) >= 0.99
  errors = np.abs(errors)
  assert errors.max() < bound, errors
  assert errors.mean() < bound / 2, errors


@pytest.mark.parametrize("relaxation", ["q", "bl"])
def test_grid_and_dense_count_pairs_the_same_way(relaxation):
  """One pair convention for λ: each unordered pair once, grid and dense.

  The dense brute force (the reference of every dense test) restricted to
  the 4-NN pairs equals the solver's ``nn4`` Potts term with the same
  weights (the dense weights of a 4-NN pair are the grid's times
  ``exp(-1/(2σ_xy²))``); and on images of two pixels, whose only pair is a
  4-NN pair, the lattice's dense energy is that grid energy (within its
  few-% approximation; counting ordered pairs would double it).
  """
  rng = np.random.default_rng(0)
  h, w, k, sigma_xy = 5, 6, 3, 2.0
  image = rng.uniform(0.0, 255.0, (h, w, 3)).astype(np.float32)
  y = np.asarray(jax.nn.softmax(rng.normal(size=(h, w, k)) * 2.0), np.float32)
  rows, cols = np.divmod(np.arange(h * w), w)
  nn4 = (np.abs(rows[:, None] - rows[None])
         + np.abs(cols[:, None] - cols[None])) == 1
  dense = exact_weights(image, sigma_xy, SIGMA_RGB) * nn4
  spatial = np.exp(-0.5 / sigma_xy ** 2)

  def grid(image, y):
    h, w, _ = image.shape
    return float(solver.energy(
        y[None], np.zeros_like(y)[None], image[None],
        np.full((1, h, w), 255, np.int32), relaxation=relaxation,
        cross_entropy="ce", neighborhood="nn4", eta=0.0, lam=1.0,
        sigma_rgb=SIGMA_RGB)[0])

  e_dense, _ = exact_energy(y, dense, relaxation)
  np.testing.assert_allclose(e_dense, spatial * grid(image, y), rtol=1e-5)
  # The pair sum of the brute force is once per unordered pair.
  pair = {"q": lambda p, q: 0.5 * np.sum((p - q) ** 2),
          "bl": lambda p, q: 1.0 - p @ q}[relaxation]
  flat = y.reshape(-1, k).astype(np.float64)
  loop = sum(dense[i, j] * pair(flat[i], flat[j])
             for i in range(h * w) for j in range(i + 1, h * w))
  np.testing.assert_allclose(e_dense, loop, rtol=1e-10)

  for shape, colours in (((1, 2), [[120, 80, 40], [126, 84, 37]]),
                         ((2, 1), [[30, 200, 90], [34, 196, 94]])):
    two = np.asarray(colours, np.float32).reshape(shape + (3,))
    y_two = np.asarray([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]],
                       np.float32).reshape(shape + (k,))
    graph = bilateral.prepare(two[None], np.full((1,) + shape, 255),
                              sigma_xy=5.0, sigma_rgb=SIGMA_RGB)
    e = float(bilateral.dense_energy(y_two[None], graph, relaxation)[0])
    want = np.exp(-0.5 / 25.0) * grid(two, y_two)
    assert abs(e / want - 1.0) < 0.1, (shape, e, want)


def test_affinity_matches_exact_sums(crops):
  """Per pixel: ``Σ_{j≠i} w_ij v_j``, relative L1 error."""
  for image, y in crops[:4]:
    graph = bilateral.prepare(image[None], _unlabeled(image)[None],
                              sigma_xy=SIGMA_XY, sigma_rgb=SIGMA_RGB)
    v = np.concatenate([y.reshape(-1, 3), np.ones((y.size // 3, 1))], -1)
    out = np.asarray(bilateral.affinity(jnp.asarray(v[None]), graph))[0]
    ref = exact_weights(image, SIGMA_XY, SIGMA_RGB) @ v
    assert np.abs(out - ref).sum() / np.abs(ref).sum() < 0.10


def test_plain_filter_approximates_the_gaussian_sum(crops):
  image, y = crops[0]
  feats = bilateral.features(image[None], SIGMA_XY, SIGMA_RGB)
  out = np.asarray(bilateral.bilateral_filter(
      jnp.asarray(y.reshape(1, -1, 3)), bilateral.build_lattice(feats)))[0]
  weights = exact_weights(image, SIGMA_XY, SIGMA_RGB)
  np.fill_diagonal(weights, 1.0)  # the filter includes j = i
  ref = weights @ y.reshape(-1, 3).astype(np.float64)
  assert np.abs(out - ref).sum() / np.abs(ref).sum() < 0.15


def test_filter_and_affinity_are_linear_symmetric_and_own_vjp(crops):
  image, _ = crops[2]
  n = image.shape[0] * image.shape[1]
  graph = bilateral.prepare(image[None], _unlabeled(image)[None])
  a, b = np.random.default_rng(0).normal(size=(2, 1, n, 4)).astype(np.float32)
  for op in (lambda v: bilateral.bilateral_filter(v, graph.lattice),
             lambda v: bilateral.affinity(v, graph)):
    f = lambda v, op=op: np.asarray(op(jnp.asarray(v)), np.float64)
    fa, fb = f(a), f(b)
    scale = np.abs(fa).max()
    np.testing.assert_allclose(f(2.0 * a - 3.0 * b), 2.0 * fa - 3.0 * fb,
                               atol=1e-5 * scale)
    np.testing.assert_allclose(np.sum(a * fb), np.sum(fa * b), rtol=1e-5)
    _, vjp = jax.vjp(op, jnp.asarray(a))
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(b))[0]), fb,
                               atol=1e-5 * scale)


def _closed_lattice_self_weight(f):
  """numpy: ``k(f_i, f_i)`` of the plain filter on a lattice holding every
  point its blur reaches (so that no blur path is dropped)."""
  keys, bary, _ = lattice_lib._simplex(jnp.asarray(f, jnp.float32))
  keys, bary = np.asarray(keys, np.int64), np.asarray(bary, np.float64)
  steps = [np.where(np.arange(lattice_lib.DIM) == a, -lattice_lib.DIM, 1)
           for a in range(lattice_lib.DIM + 1)]
  points = np.unique(keys.reshape(-1, lattice_lib.DIM), axis=0)
  for axis, _ in lattice_lib.BLUR:
    points = np.unique(np.concatenate(
        [points, points + steps[axis], points - steps[axis]]), axis=0)
  slot = {tuple(p): k for k, p in enumerate(points)}
  find = lambda p: np.array([slot.get(tuple(q), len(points)) for q in p])
  out = []
  for i in range(len(f)):
    lat = np.zeros(len(points) + 1)
    np.add.at(lat, find(keys[i]), bary[i])
    for axis, s in lattice_lib.BLUR:
      lat[-1] = 0.0
      up, down = find(points + steps[axis]), find(points - steps[axis])
      lat[:-1] = (1 - 2 * s) * lat[:-1] + s * (lat[up] + lat[down])
    out.append(lattice_lib.SCALE * bary[i] @ lat[find(keys[i])])
  return np.array(out)


def test_self_weight_is_the_closed_lattice_diagonal():
  f = np.random.default_rng(1).uniform(0, 2, size=(3, lattice_lib.DIM))
  f -= f.min(0)
  lat = lattice_lib.build_lattice(f[None].astype(np.float32))
  np.testing.assert_allclose(np.asarray(lat.self_weight[0]),
                             _closed_lattice_self_weight(f), rtol=1e-5)


def test_constant_image_and_single_colour_edge():
  """Finite everywhere, and accurate.

  Measured (32x32, σ_rgb = 9, q / bl) at σ_xy = 100 / 5: constant image
  +0.3 % / +0.2 % and +13.0 % / +4.3 % (the plain filter: +87 % / +91 % and
  +16 % / +20 %: all pixels sit at one place in a lattice cell, where the
  kernel's value at distance 0 is anything in 0.8-2.6); edge image -2.6 % /
  -1.5 % and +5.9 % / +2.3 % (plain: -1.2 % / -1.2 % and -20 % / -15 %).
  """
  side = 32
  constant = np.full((side, side, 3), 128.0, np.float32)
  edge = constant.copy()
  edge[:, side // 2:] = (20.0, 200.0, 90.0)
  labels = np.full((side, side), 255, np.int32)
  y = np.asarray(jax.nn.softmax(synthetic.smooth_logits(side, side, 2, seed=3,
                                                        std=2.0)))
  bounds = {(0, 100.0): 0.01, (0, 5.0): 0.15, (1, 100.0): 0.04,
            (1, 5.0): 0.08}
  for which, image in enumerate((constant, edge)):
    for sigma_xy in (100.0, 5.0):
      bound = bounds[which, sigma_xy]
      weights = exact_weights(image, sigma_xy, SIGMA_RGB)
      for relaxation in ("q", "bl"):
        e_ref, g_ref = exact_energy(y, weights, relaxation)
        e, g = _energy_and_grad(y, image, labels, relaxation,
                                sigma_xy=sigma_xy, sigma_rgb=SIGMA_RGB)
        assert np.isfinite(e) and np.all(np.isfinite(g))
        assert abs(e / e_ref - 1.0) < bound, (sigma_xy, relaxation, e, e_ref)
        assert _cosine(g, g_ref.reshape(g.shape)) >= 0.95
  # One-hot labels on either side of the edge: finite, and the exact zero of
  # q where y is constant on the whole image.
  onehot = np.zeros((side, side, 2), np.float32)
  onehot[..., 0] = 1.0
  e, g = _energy_and_grad(onehot, edge, labels, "q", sigma_xy=100.0)
  assert abs(e) < 1e-3 * side ** 4 and np.all(np.isfinite(g))


def test_padding_takes_part_in_no_pair(crops):
  image, y = crops[4]
  labels = _unlabeled(image)
  e, g = _energy_and_grad(y, image, labels, "q", sigma_xy=SIGMA_XY)
  padded_image = np.pad(image, ((0, 8), (0, 5), (0, 0)), constant_values=255)
  padded_labels = np.pad(labels, ((0, 8), (0, 5)), constant_values=254)
  padded_y = np.pad(y, ((0, 8), (0, 5), (0, 0)), constant_values=0.5)
  e_pad, g_pad = _energy_and_grad(padded_y, padded_image, padded_labels, "q",
                                  sigma_xy=SIGMA_XY)
  h, w, _ = image.shape
  np.testing.assert_allclose(e_pad, e, rtol=1e-5)
  np.testing.assert_allclose(g_pad[:h, :w], g, atol=1e-4 * np.abs(g).max())
  assert np.all(g_pad[h:] == 0) and np.all(g_pad[:, w:] == 0)


def test_downscaling_estimates_the_full_resolution_energy(crops):
  """Measured at scale 0.5 on the 40 px crops of the first 8 photos: ``q``
  -10.6 % .. +4.6 % (-10.6 % and -1.8 % for these two; the plain filter:
  -16.6 % .. +1.5 %)."""
  for image, y in crops[:4:2]:
    e_ref, _ = exact_energy(y, exact_weights(image, SIGMA_XY, SIGMA_RGB), "q")
    e, g = _energy_and_grad(y, image, _unlabeled(image), "q",
                            sigma_xy=SIGMA_XY, scale_factor=0.5)
    assert g.shape == y.shape
    assert abs(e / e_ref - 1.0) < 0.15, (e, e_ref)


def test_capacity_count_bucket_and_overflow_error(crops):
  image, _ = crops[0]
  labels = _unlabeled(image)[None]
  n = image.shape[0] * image.shape[1]
  needed = int(bilateral.count_lattice_points(image[None], labels)[0])
  assert 0 < needed <= 6 * n
  graph = bilateral.prepare(image[None], labels, capacity=needed)  # fits
  assert int(graph.lattice.num_points[0]) == needed
  with pytest.raises(ValueError, match=f"overflow.*needs {needed}.*capacity "
                     f"is {needed - 1}"):
    bilateral.prepare(image[None], labels, capacity=needed - 1)
  # Inside jit no error can be raised: the count comes back instead.
  points = jax.jit(lambda im: bilateral.prepare(
      im, labels, capacity=8).lattice.num_points)(image[None])
  assert int(points[0]) == needed
  # A bucketed capacity: >= 1.25x the count, few distinct values, <= 6N.
  capacity = bilateral.choose_capacity(image[None], labels)
  assert 1.25 * needed <= capacity <= 1.25 * 1.25 * needed
  assert [bilateral.round_capacity([p], 10 ** 6) for p in (800, 820, 1000)
          ] == [1024, 1280, 1280]
  assert bilateral.round_capacity([10 ** 6], 6 * 1000) == 6000
  # The same energies as with the bound 6N.
  y = np.full((1,) + image.shape[:2] + (2,), 0.5, np.float32)
  y[..., : image.shape[1] // 2, 0] = 0.9
  y[..., : image.shape[1] // 2, 1] = 0.1
  full = bilateral.prepare(image[None], labels)
  small = bilateral.prepare(image[None], labels, capacity=capacity)
  np.testing.assert_allclose(bilateral.dense_energy(y, small, "q"),
                             bilateral.dense_energy(y, full, "q"), rtol=1e-5)


def test_features_too_wide_for_the_keys_are_an_error():
  f = np.zeros((1, 2, lattice_lib.DIM), np.float32)
  f[0, 1, 2] = 10000.0  # 10,000 kernel widths apart
  with pytest.raises(ValueError, match="keys span"):
    lattice_lib.build_lattice(f)
  with pytest.raises(ValueError, match="keys span"):
    lattice_points.count_points(f)
  # Inside jit the host check fails the computation with the same message.
  build = jax.jit(lambda f: lattice_lib.build_lattice(f).num_points)
  with pytest.raises(Exception, match="keys span"):
    jax.block_until_ready(build(f))
  f[0, 1, 2] = 100.0  # in range: no error
  assert int(jax.block_until_ready(build(f))[0]) > 0


@pytest.mark.parametrize("name", ["cd", "cce", "nq", "lq", "xx"])
def test_unsupported_relaxations_are_named(name):
  with pytest.raises(ValueError, match=f"'{name}'.*'bl', 'q'"):
    bilateral.check_relaxation(name)
  image = np.zeros((1, 4, 4, 3), np.float32)
  graph = bilateral.prepare(image, np.zeros((1, 4, 4), np.int32))
  with pytest.raises(ValueError, match=f"'{name}'"):
    bilateral.dense_energy(np.full((1, 4, 4, 2), 0.5), graph, name)


def test_jit_vmap_and_no_retrace(crops):
  (im0, y0), (im1, y1) = crops[0], crops[2]
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
