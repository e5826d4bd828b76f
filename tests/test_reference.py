"""Tests of potts_jax.solver.reference, the textbook loop of Appendix B.

The reference is the definition the fast loops are tested against, so it is
itself checked against computations that share nothing with the library: a
float64 numpy energy over a brute-force list of pixel pairs
(``tests/references.py``), and a step ``l - t ∂E/∂l`` whose gradient is taken
by central differences of that energy. Then the XLA loop (``kernel="xla"``)
must compute its iterates, for every relaxation × cross-entropy the grid
solver accepts on ``nn4`` and ``nn8`` (48 cases each).
"""

import chex
import numpy as np
import pytest

from potts_jax import solver
from potts_jax.data import synthetic
from potts_jax.solver import reference
from tests import references as ref

ETA, LAM, SIGMA_RGB = 0.7, 2.0, 20.0
_CASES = [(r, c, n) for r in ref.RELAXATIONS for c in ref.CROSS_ENTROPIES
          for n in ("nn4", "nn8")]


def _params(relaxation, cross_entropy, neighborhood):
  return solver.EnergyParams(relaxation=relaxation,
                             cross_entropy=cross_entropy,
                             neighborhood=neighborhood, eta=ETA, lam=LAM,
                             sigma_rgb=SIGMA_RGB)


def _problem():
  # Scribbles of three classes, padding (254), unlabeled pixels (255).
  return synthetic.grid_problem(b=2, h=6, w=7, k=4, seed=3)


class BruteForceEnergy:
  """E(y) in float64 numpy over an explicit list of pixel pairs, per image.

  ``η Σ_{labels = 255} H(σ_i, y_i) + λ Σ_{pairs} w_ij P(y_i, y_j)`` with the
  pairs and weights of :func:`tests.references.grid_pairs` (a double loop
  over all pixel pairs) and the float64 P and H of ``tests/references.py``;
  names and numbers from an :class:`potts_jax.solver.EnergyParams`.
  """

  def __init__(self, logits, image, labels, params):
    self.sigma = ref.softmax(logits)
    self.labels = np.asarray(labels)
    self.params = params
    pairs = ref.grid_pairs(image, self.labels, params.neighborhood,
                           params.sigma_rgb)
    self.b = np.array([b for b, _, _ in pairs])
    self.i = tuple(np.array([i for _, i, _ in pairs]).T)
    self.j = tuple(np.array([j for _, _, j in pairs]).T)
    self.w = np.array(list(pairs.values()))

  def __call__(self, y):
    y = np.asarray(y, np.float64)
    e = self.params
    h = ref.cross_entropy(e.cross_entropy, self.sigma, y)
    unary = np.sum(np.where(self.labels == ref.UNLABELED, h, 0.0), axis=(1, 2))
    p = ref.relaxation(e.relaxation, y[(self.b, *self.i)],
                       y[(self.b, *self.j)])
    pairs = np.bincount(self.b, weights=self.w * p, minlength=y.shape[0])
    return e.eta * unary + e.lam * pairs

  def of_logits(self, l):
    """E(reset(softmax(l))) ``[B]``."""
    y = ref.softmax(l)
    scribbled = (self.labels != ref.UNLABELED) & (self.labels != ref.PADDING)
    y[scribbled] = np.eye(l.shape[-1])[self.labels[scribbled]]
    return self(y)


def _numerical_step(energy, logits, step_size, h=1e-6):
  """``l - t ∂E/∂l`` in float64, the gradient by central differences."""
  l = np.asarray(logits, np.float64)
  grad = np.zeros_like(l)
  b = np.arange(l.shape[0])
  for index in np.ndindex(*l.shape[1:]):  # all images at once
    plus, minus = l.copy(), l.copy()
    plus[(slice(None), *index)] += h
    minus[(slice(None), *index)] -= h
    grad[(slice(None), *index)] = (energy.of_logits(plus)[b]
                                   - energy.of_logits(minus)[b]) / (2 * h)
  return l - step_size * grad


@pytest.mark.parametrize("relaxation, cross_entropy, neighborhood", _CASES)
def test_energy_equals_float64_brute_force(relaxation, cross_entropy,
                                           neighborhood):
  logits, image, labels = _problem()
  rng = np.random.default_rng(4)
  y = ref.floor_simplex(ref.simplex(rng, labels.shape, logits.shape[-1]))
  params = _params(relaxation, cross_entropy, neighborhood)
  got = reference.energy(y, logits, image, labels, params)
  want = BruteForceEnergy(logits, image, labels, params)(y)
  chex.assert_shape(got, (2,))
  np.testing.assert_allclose(got, want, rtol=2e-6)


@pytest.mark.parametrize("relaxation, cross_entropy, neighborhood", _CASES)
def test_one_step_equals_float64_finite_differences(relaxation, cross_entropy,
                                                    neighborhood):
  logits, image, labels = _problem()
  params = _params(relaxation, cross_entropy, neighborhood)
  l1 = _numerical_step(BruteForceEnergy(logits, image, labels, params),
                       logits, 0.3)
  y1 = reference.solve(logits, image, labels, params, num_steps=1,
                       step_size=0.3)
  y0 = ref.softmax(logits)
  expected = ref.softmax(l1)
  scribbled = labels < ref.PADDING
  expected[scribbled] = np.eye(logits.shape[-1])[labels[scribbled]]
  y0[scribbled] = expected[scribbled]
  assert np.max(np.abs(expected - y0)) > 5e-3, "the step must move y"
  np.testing.assert_allclose(y1, expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("relaxation, cross_entropy, neighborhood", _CASES)
def test_xla_loop_equals_reference(relaxation, cross_entropy, neighborhood):
  logits, image, labels = _problem()
  params = _params(relaxation, cross_entropy, neighborhood)
  want = reference.solve(logits, image, labels, params, num_steps=8,
                         step_size=0.05)
  got = solver.solve(logits, image, labels, params, num_steps=8,
                     step_size=0.05, kernel="xla")
  chex.assert_trees_all_close(got, want, atol=5e-6, rtol=0)


def test_reference_keeps_scribbles_and_padding():
  logits, image, labels = _problem()
  y = np.asarray(reference.solve(logits, image, labels, _params(
      "cd", "cce", "nn4"), num_steps=5))
  scribbled = labels < ref.PADDING
  np.testing.assert_array_equal(
      y[scribbled], np.eye(logits.shape[-1])[labels[scribbled]])
  # Padding takes part in no term: its y stays the network's softmax.
  padding = labels == ref.PADDING
  np.testing.assert_allclose(y[padding], ref.softmax(logits)[padding],
                             atol=1e-6)


def test_reference_rejects_the_dense_neighborhood():
  logits, image, labels = _problem()
  with pytest.raises(NotImplementedError, match="not a grid neighbourhood"):
    reference.solve(logits, image, labels, _params("q", "cce", "dense"),
                    num_steps=1)
