"""Tests of potts_jax.neighborhoods: grid affinities and grid Potts energies.

The references (tests/references.py) are brute force: explicit Python loops
over all pairs of pixels of each image, keeping the 4- or 8-neighbours, with
``w_ij = exp(-‖I_i - I_j‖² / (2 σ²))``, diagonals divided by √2 and pairs
touching a padding pixel (label 254) dropped. Relaxations
are float64 numpy written from the formulas of the paper.
"""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import neighborhoods
from potts_jax import potts
from tests import references

PADDING = references.PADDING
UNLABELED = references.UNLABELED
RELAXATIONS = references.RELAXATIONS
EXPECTED_OFFSETS = references.OFFSETS
# Image shape [B, H, W] and classes of every test (one shape, few compilations).
SHAPE = (2, 5, 7)
K = 3


def _labels(rng):
  """Classes, 255 and 254 (a padding band on the right and bottom, plus one)."""
  labels = references.random_labels(rng, SHAPE, K, p_padding=0.0)
  return references.add_padding(labels, (1, 2))


def _image(rng, dtype=np.float32):
  """RGB in 0..255: small neighbour differences, an edge, a flat patch."""
  return references.smooth_image(
      rng, SHAPE, noise=10, right=50, flat_patch=True, dtype=dtype
  )


# ----------------------------------------------------------------------------
# Names and offsets.


def test_offsets_are_the_documented_ones():
  assert neighborhoods.OFFSETS == EXPECTED_OFFSETS
  assert neighborhoods.offsets_for(2) == EXPECTED_OFFSETS["nn4"]
  assert neighborhoods.offsets_for(4) == EXPECTED_OFFSETS["nn8"]
  with pytest.raises(ValueError, match="3 offsets"):
    neighborhoods.offsets_for(3)


def test_check_name():
  assert neighborhoods.check_name("nn4") == "nn4"
  assert neighborhoods.check_name("nn8") == "nn8"
  with pytest.raises(NotImplementedError):
    neighborhoods.check_name("dense")


@pytest.mark.parametrize("bad", ["", "NN4", "nn6", "grid", "4"])
def test_unknown_neighborhood_raises_value_error_naming_it(bad):
  image = jnp.zeros((1, 3, 3, 3))
  labels = jnp.zeros((1, 3, 3), jnp.int32)
  pattern = re.escape(repr(bad))
  with pytest.raises(ValueError, match=pattern):
    neighborhoods.check_name(bad)
  with pytest.raises(ValueError, match=pattern):
    neighborhoods.pair_mask(labels, bad)
  with pytest.raises(ValueError, match=pattern):
    neighborhoods.affinities(image, labels, neighborhood=bad)


def test_dense_is_not_implemented_for_grid_functions():
  image = jnp.zeros((1, 3, 3, 3))
  labels = jnp.zeros((1, 3, 3), jnp.int32)
  with pytest.raises(NotImplementedError):
    neighborhoods.pair_mask(labels, "dense")
  with pytest.raises(NotImplementedError):
    neighborhoods.affinities(image, labels, neighborhood="dense")


# ----------------------------------------------------------------------------
# shift and pair_mask.


def _ref_shift(x, dy, dx, axes):
  out = np.zeros_like(x)
  x_rows = np.moveaxis(x, axes, (0, 1))
  out_rows = np.moveaxis(out, axes, (0, 1))  # a view: writes go to ``out``
  height, width = x_rows.shape[:2]
  for r in range(height):
    for c in range(width):
      if 0 <= r + dy < height and 0 <= c + dx < width:
        out_rows[r, c] = x_rows[r + dy, c + dx]
  return out


def _small_offsets():
  """Every offset a grid neighbourhood may use, both signs: |dy|, |dx| <= 1."""
  halo = getattr(neighborhoods, "HALO", 1)
  return [
      (dy, dx) for dy in range(-halo, halo + 1) for dx in range(-halo, halo + 1)
  ]


def test_shift_matches_loops_for_both_signs_of_offsets():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(SHAPE + (K,)).astype(np.float32)
  x_first = np.moveaxis(x, -1, 1)  # [B, K, H, W]
  labels = rng.integers(0, 256, SHAPE).astype(np.int32)  # [B, H, W], ints
  for dy, dx in _small_offsets():
    out = neighborhoods.shift(jnp.asarray(x), dy, dx)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(out, _ref_shift(x, dy, dx, (1, 2)))
    np.testing.assert_array_equal(
        neighborhoods.shift(jnp.asarray(x_first), dy, dx, (2, 3)),
        _ref_shift(x_first, dy, dx, (2, 3)),
    )
    np.testing.assert_array_equal(
        neighborhoods.shift(jnp.asarray(labels), dy, dx),
        _ref_shift(labels, dy, dx, (1, 2)),
    )


def test_shift_of_a_single_pixel_is_zero():
  x = jnp.ones((2, 1, 1, 3))
  for dy, dx in _small_offsets():
    expected = 1.0 if (dy, dx) == (0, 0) else 0.0
    np.testing.assert_array_equal(neighborhoods.shift(x, dy, dx), expected)


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
def test_pair_mask_matches_brute_force(neighborhood):
  rng = np.random.default_rng(1)
  labels = _labels(rng)
  mask = neighborhoods.pair_mask(jnp.asarray(labels), neighborhood)
  # With a constant image every existing pair has a non-zero weight.
  expected = (
      references.grid_weights(
          np.zeros(SHAPE + (3,)), labels, neighborhood, sigma_rgb=1.0
      )
      != 0.0
  )
  assert mask.shape == SHAPE + (len(EXPECTED_OFFSETS[neighborhood]),)
  assert mask.dtype == jnp.float32
  np.testing.assert_array_equal(mask, expected)


# ----------------------------------------------------------------------------
# Affinities.


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
def test_affinities_match_brute_force(neighborhood):
  rng = np.random.default_rng(2)
  labels = _labels(rng)
  for sigma_rgb in (3.0, 9.0, 25.0):
    image = _image(rng)
    out = neighborhoods.affinities(
        jnp.asarray(image),
        jnp.asarray(labels),
        neighborhood=neighborhood,
        sigma_rgb=sigma_rgb,
    )
    assert out.shape == SHAPE + (len(EXPECTED_OFFSETS[neighborhood]),)
    assert out.dtype == jnp.float32
    expected = references.grid_weights(image, labels, neighborhood, sigma_rgb)
    assert np.any(
        (expected > 1e-3) & (expected < 0.5)
    )  # the test is not vacuous
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    # Missing pairs (padding, outside the image) are exactly zero.
    np.testing.assert_array_equal(np.asarray(out)[expected == 0.0], 0.0)


def test_affinities_default_sigma_and_uint8_image():
  rng = np.random.default_rng(3)
  labels = _labels(rng)
  image = _image(rng, np.uint8)
  out = neighborhoods.affinities(jnp.asarray(image), jnp.asarray(labels))
  # uint8 must not wrap around in the differences.
  expected = references.grid_weights(
      image.astype(np.float64), labels, "nn4", 9.0
  )
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_affinities_every_pair_exactly_once():
  """Each unordered neighbour pair owns exactly one non-zero slot."""
  labels = np.full(SHAPE, UNLABELED, np.int32)
  image = np.zeros(SHAPE + (3,), np.float32)
  for neighborhood, num_pairs in (
      ("nn4", 5 * 6 + 4 * 7),
      ("nn8", 5 * 6 + 4 * 7 + 2 * 4 * 6),
  ):
    out = np.asarray(
        neighborhoods.affinities(
            jnp.asarray(image), jnp.asarray(labels), neighborhood=neighborhood
        )
    )
    assert np.count_nonzero(out) == SHAPE[0] * num_pairs
    assert (
        len(references.grid_pairs(image, labels, neighborhood, 9.0))
        == SHAPE[0] * num_pairs
    )
    np.testing.assert_allclose(out[..., :2][out[..., :2] > 0], 1.0)
    np.testing.assert_allclose(
        out[..., 2:][out[..., 2:] > 0], 1 / math.sqrt(2.0), rtol=1e-6
    )


# ----------------------------------------------------------------------------
# Grid energies.


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_grid_energy_matches_brute_force(relaxation, neighborhood):
  rng = np.random.default_rng(4)
  labels = _labels(rng)
  image = _image(rng)
  # Peaked and flat distributions; padding pixels hold arbitrary values.
  y = np.where(
      rng.random(SHAPE + (1,)) < 0.5,
      references.simplex(rng, SHAPE, K, alpha=0.3),
      references.simplex(rng, SHAPE, K),
  )
  pairs = references.grid_pairs(image, labels, neighborhood, 9.0)
  weights = references.grid_weights(image, labels, neighborhood, 9.0)
  weights = weights.astype(np.float32)
  out = neighborhoods.grid_energy(
      jnp.asarray(y), jnp.asarray(weights), potts.relaxation(relaxation)
  )
  assert out.shape == (SHAPE[0],)
  np.testing.assert_allclose(
      out,
      references.pair_energy(y, pairs, relaxation),
      rtol=1e-5,
      atol=1e-5,
  )
  # Library affinities give the same energy (integration with affinities()).
  lib_weights = neighborhoods.affinities(
      jnp.asarray(image), jnp.asarray(labels), neighborhood=neighborhood
  )
  np.testing.assert_allclose(
      neighborhoods.grid_energy(
          jnp.asarray(y), lib_weights, potts.relaxation(relaxation)
      ),
      out,
      rtol=1e-5,
      atol=1e-5,
  )


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
def test_grid_energy_of_hard_labelings_is_the_potts_model(neighborhood):
  """One-hot y: P = [l_i != l_j] (bl, q, nq), -ln EPS · [l_i != l_j] (logs)."""
  rng = np.random.default_rng(5)
  labels = _labels(rng)
  image = _image(rng)
  hard = rng.integers(0, K, SHAPE)
  y = np.eye(K, dtype=np.float32)[hard]
  y[labels == PADDING] = 0.0  # even all-zero vectors on padding are ignored
  pairs = references.grid_pairs(image, labels, neighborhood, 9.0)
  cut = np.zeros(SHAPE[0])
  for (b, i, j), w in pairs.items():
    cut[b] += w * (hard[(b, *i)] != hard[(b, *j)])
  assert np.all(cut > 0)
  weights = jnp.asarray(
      references.grid_weights(image, labels, neighborhood, 9.0), jnp.float32
  )
  for relaxation in RELAXATIONS:
    energy = neighborhoods.grid_energy(
        jnp.asarray(y), weights, potts.relaxation(relaxation)
    )
    scale = references.CAP if relaxation in references.LOG_RELAXATIONS else 1.0
    np.testing.assert_allclose(energy, scale * cut, rtol=1e-5)
  # Finite gradient there, for the relaxation with the most guards.
  grad = jax.grad(
      lambda y: jnp.sum(
          neighborhoods.grid_energy(y, weights, potts.relaxation("cd"))
      )
  )(jnp.asarray(y))
  chex.assert_tree_all_finite(grad)
  np.testing.assert_array_equal(np.asarray(grad)[labels == PADDING], 0.0)


# ----------------------------------------------------------------------------
# Analytic Potts terms (used by the solver).


def _flat_pairs(pairs):
  """Index arrays (b, ri, ci, rj, cj) and weights, for vectorised evaluation."""
  keys = list(pairs)
  idx = np.array([(b, *i, *j) for b, i, j in keys])
  return idx, np.array([pairs[key] for key in keys])


def _vector_energy(y, idx, w, relaxation):
  """Σ_pairs w P(y_i, y_j) over all images, vectorised in numpy."""
  p = y[idx[:, 0], idx[:, 1], idx[:, 2]]
  q = y[idx[:, 0], idx[:, 3], idx[:, 4]]
  return float(np.sum(w * references.relaxation(relaxation, p, q)))


def _fd_gradient(y64, idx, w, relaxation, h=1e-6):
  fd = np.zeros_like(y64)
  for index in np.ndindex(*y64.shape):
    plus, minus = y64.copy(), y64.copy()
    plus[index] += h
    minus[index] -= h
    fd[index] = (
        _vector_energy(plus, idx, w, relaxation)
        - _vector_energy(minus, idx, w, relaxation)
    ) / (2 * h)
  return fd


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
def test_potts_terms_match_finite_differences(neighborhood):
  """``y ⊙ ∂P/∂y`` and ``yᵀ∂P/∂y`` of the grid energy vs central differences."""
  rng = np.random.default_rng(6)
  labels = _labels(rng)
  image = _image(rng)
  y = references.simplex(rng, SHAPE, K, alpha=2.0)
  pairs = references.grid_pairs(image, labels, neighborhood, 9.0)
  idx, w = _flat_pairs(pairs)
  weights = references.grid_weights(image, labels, neighborhood, 9.0)
  weights = weights.astype(np.float32)
  offsets = EXPECTED_OFFSETS[neighborhood]
  planes = [jnp.asarray(weights[..., d]) for d in range(len(offsets))]
  y64 = y.astype(np.float64)
  for relaxation in RELAXATIONS:
    assert math.isclose(
        _vector_energy(y64, idx, w, relaxation),
        float(np.sum(references.pair_energy(y64, pairs, relaxation))),
        rel_tol=1e-12,
    )
    fd = _fd_gradient(y64, idx, w, relaxation)
    # y given as r·v with an arbitrary positive per-pixel scale, as the
    # solver passes its unnormalised iterate.
    for scale in (np.ones(SHAPE), rng.uniform(0.5, 2.0, SHAPE)):
      v = jnp.asarray(y * scale[..., None], jnp.float32)
      r = jnp.asarray(1.0 / scale, jnp.float32)
      y_in = jnp.asarray(y)
      sums = neighborhoods.channel_sums(
          [y_in * y_in]
          + [y_in * neighborhoods.shift(y_in, dy, dx) for dy, dx in offsets])
      stats = neighborhoods.PairStats(a=sums[0], s=sums[1:])
      ydg, ydotg = neighborhoods.potts_terms(
          v, r, stats, planes, offsets, potts.STATS[relaxation])
      assert ydg.shape == y.shape and ydotg.shape == SHAPE
      ydg = np.asarray(ydg, np.float64)
      msg = f"{relaxation} scaled={scale.std() > 0}"
      np.testing.assert_allclose(
          ydg, y64 * fd, rtol=1e-4, atol=1e-5, err_msg=msg
      )
      np.testing.assert_allclose(
          ydotg, np.sum(y64 * fd, -1), rtol=1e-4, atol=1e-5, err_msg=msg
      )
      np.testing.assert_array_equal(ydg[labels == PADDING], 0.0)
