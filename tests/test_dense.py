"""The dense neighbourhood in the solver, its energy and the GD loss.

References are brute force: the dense affinity matrix in float64 numpy
(tests/test_bilateral.py) and a jnp O(N²) textbook solver loop on it.
"""

import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from potts_jax.dense import bilateral
from potts_jax import losses
from potts_jax import solver
from potts_jax.solver import loop as solver_loop
from potts_jax import steps
from potts_jax.data import folder
from potts_jax.data import synthetic
from tests.conftest import REPO
from tests.test_bilateral import exact_weights


def _gd(logits, image, labels, axis_name=None, **energy):
  """:func:`losses.regularized_loss` with ``energy``'s fields as keywords."""
  return losses.regularized_loss(logits, image, labels,
                                 solver.EnergyParams(**energy),
                                 axis_name=axis_name)


ETA, LAM, SIGMA_XY, SIGMA_RGB = 0.3, 0.01, 100.0, 9.0


@pytest.fixture(scope="module")
def grabcut(shared_data):
  """Two real photos (landscape, portrait) at long side 40, padded to one
  shape (label 254), with their real set-1 scribbles."""
  root = shared_data / "grabcut"
  examples = [folder.load_example(root, name, long_side=40)
              for name in ("106024", "181079")]
  image, labels, _ = folder.pad_batch(examples)
  _, h, w = labels.shape
  logits = np.stack([synthetic.smooth_logits(h, w, 2, seed=b, std=2.0)
                     for b in range(len(examples))])
  assert (labels == 254).any() and (labels < 2).any()
  return logits, image, labels


def _brute_force(logits, image, labels, num_steps, step_size):
  """Textbook loop with E = η Σ H_CCE + λ Σ_{i<j} w_ij P_Q, dense matrix."""
  b, h, w, k = logits.shape
  weights = jnp.asarray(np.stack([
      exact_weights(image[i], SIGMA_XY, SIGMA_RGB, labels[i] != 254)
      for i in range(b)]), jnp.float32)
  labeled = (labels < 254)[..., None]
  onehot = np.eye(k, dtype=np.float32)[np.where(labels < 254, labels, 0)]
  sigma = jax.nn.softmax(jnp.asarray(logits))
  free = jnp.asarray(labels == 255, jnp.float32)

  def energy(y):
    unary = -jnp.log(jnp.maximum(jnp.sum(sigma * y, -1), 1e-30))
    flat = y.reshape(b, h * w, k)
    sq = jnp.sum(flat * flat, -1)
    gram = jnp.einsum("bik,bjk->bij", flat, flat)
    pair = 0.5 * (sq[:, :, None] + sq[:, None, :]) - gram
    # Each unordered pair once: half the symmetric sum over i ≠ j.
    return (ETA * jnp.sum(free * unary, (1, 2))
            + LAM * 0.5 * jnp.sum(weights * pair, (1, 2)))

  to_y = lambda l: jnp.where(labeled, onehot, jax.nn.softmax(l))
  grad = jax.grad(lambda l: jnp.sum(energy(to_y(l))))
  l = jax.lax.fori_loop(0, num_steps, lambda _, l: l - step_size * grad(l),
                        jnp.asarray(logits))
  return np.asarray(to_y(l)), energy


def test_dense_solve_lowers_the_energy_and_matches_brute_force(grabcut):
  logits, image, labels = grabcut
  options = dict(relaxation="q", cross_entropy="cce", neighborhood="dense",
                 eta=ETA, lam=LAM, sigma_xy=SIGMA_XY, sigma_rgb=SIGMA_RGB,
                 num_steps=100, step_size=0.075)
  y, energies = solver.solve_with_energies(logits, image, labels, **options)
  y, energies = np.asarray(y), np.asarray(energies)
  assert np.all(energies[-1] < 0.95 * energies[0]), energies[[0, -1]]
  assert np.all(energies[1:] <= energies[:-1] * (1 + 1e-5)), "not monotone"
  scribbled = labels < 254
  np.testing.assert_array_equal(y[scribbled], np.eye(2)[labels[scribbled]])
  np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(
      np.asarray(solver.energy(y, logits, image, labels, **options)),
      energies[-1], rtol=1e-5)

  y_ref, energy_ref = _brute_force(logits, image, labels, 100, 0.075)
  free = labels == 255
  # Exact energies of both solutions, and of the start, per image.
  e_ours, e_ref = (np.asarray(energy_ref(jnp.asarray(v))) for v in (y, y_ref))
  e_start = np.asarray(energy_ref(jnp.where(
      (labels < 254)[..., None], np.eye(2, dtype=np.float32)[
          np.where(labels < 254, labels, 0)], jax.nn.softmax(logits))))
  assert np.all(np.abs(e_ours / e_ref - 1.0) < 0.10), (e_ours, e_ref)
  assert np.all(e_ours < e_start)
  assert np.abs(y - y_ref)[free].mean() < 0.05
  agree = (y.argmax(-1) == y_ref.argmax(-1))[free].mean()
  assert agree > 0.95, agree


@pytest.mark.parametrize("relaxation", ["q", "bl"])
def test_dense_energy_matches_brute_force(grabcut, relaxation):
  """Whole photos shrunk to 40 px: on the first 12 GrabCut photos the pair
  sum is off by -3.7 % .. +1.8 % (q) and -1.6 % .. +1.3 % (bl), on all 50
  by -6.4 % .. +7.3 % and -3.4 % .. +1.7 % (potts_jax/dense/bilateral.py), on
  these two (padded to one shape) by under 1 %; the plain lattice filter
  was off by +14 % / +11 % on the first. Hence 5 %."""
  bound = 0.05
  logits, image, labels = grabcut
  y = np.asarray(jax.nn.softmax(logits[:, ::-1] * 0.5))
  ours = np.asarray(solver.energy(
      y, logits, image, labels, relaxation=relaxation, cross_entropy="ce",
      neighborhood="dense", eta=ETA, lam=1.0, sigma_xy=SIGMA_XY,
      sigma_rgb=SIGMA_RGB))
  sigma = np.asarray(jax.nn.softmax(logits), np.float64)
  for b in range(len(labels)):
    weights = exact_weights(image[b], SIGMA_XY, SIGMA_RGB, labels[b] != 254)
    flat = y[b].reshape(-1, 2).astype(np.float64)
    sq = (flat * flat).sum(-1)
    pair = (1.0 - flat @ flat.T if relaxation == "bl"
            else 0.5 * (sq[:, None] + sq[None]) - flat @ flat.T)
    pairs = np.sum(np.triu(weights * pair, 1))  # each pair {i, j} once
    unary = -np.sum((y[b] * np.log(sigma[b])).sum(-1) * (labels[b] == 255))
    assert abs((ours[b] - ETA * unary) / pairs - 1.0) < bound


def test_regularized_loss_dense_matches_brute_force(grabcut):
  logits, image, labels = grabcut
  loss = lambda l: _gd(
      l, image, labels, relaxation="q", neighborhood="dense", eta=ETA,
      lam=100.0, sigma_rgb=SIGMA_RGB, sigma_xy=SIGMA_XY)
  value, grad = jax.value_and_grad(loss)(jnp.asarray(logits))

  b, h, w, k = logits.shape
  weights = jnp.asarray(np.stack([
      exact_weights(image[i], SIGMA_XY, SIGMA_RGB, labels[i] != 254)
      for i in range(b)]), jnp.float32)

  def reference(l):
    s = jax.nn.softmax(l).reshape(b, h * w, k)
    sq = jnp.sum(s * s, -1)
    pair = 0.5 * (sq[:, :, None] + sq[:, None, :]) - jnp.einsum(
        "bik,bjk->bij", s, s)
    # Each unordered pair once: half the symmetric sum over i ≠ j.
    potts = 0.5 * jnp.sum(weights * pair) / np.sum(labels == 255)
    return (losses.partial_cross_entropy(l, labels)
            + ETA * jnp.sum(losses.entropy(l) * (labels == 255))
            / np.sum(labels == 255) + 100.0 * potts)

  ref_value, ref_grad = jax.value_and_grad(reference)(jnp.asarray(logits))
  potts_part = float(ref_value - losses.partial_cross_entropy(logits, labels))
  assert abs(float(value - ref_value)) < 0.10 * potts_part
  g, r = np.asarray(grad).ravel(), np.asarray(ref_grad).ravel()
  assert g @ r / np.linalg.norm(g) / np.linalg.norm(r) >= 0.95


def test_dense_options_are_checked_and_values_do_not_retrace(grabcut):
  logits, image, labels = grabcut
  for name in ("cd", "cce", "nq", "lq"):
    with pytest.raises(ValueError, match=f"'{name}'.*'bl', 'q'"):
      solver.solve(logits, image, labels, neighborhood="dense",
                   relaxation=name)
    with pytest.raises(ValueError, match=f"'{name}'"):
      solver.energy(logits, logits, image, labels, neighborhood="dense",
                    relaxation=name)
    with pytest.raises(ValueError, match=f"'{name}'"):
      _gd(logits, image, labels, relaxation=name,
                                   neighborhood="dense")
  with pytest.raises(ValueError, match="overflow"):
    solver.solve(logits, image, labels, neighborhood="dense",
                 relaxation="q", num_steps=1, lattice_capacity=4)
  options = dict(neighborhood="dense", relaxation="q", num_steps=3)
  solver.solve(logits, image, labels, **options)
  before = solver_loop.solve_batch._cache_size()
  y = solver.solve(logits, image, labels, eta=0.5, lam=0.01, sigma_xy=50.0,
                   sigma_rgb=5.0, step_size=0.1, **options)
  assert solver_loop.solve_batch._cache_size() == before
  # Inside an outer jit as well.
  jitted = jax.jit(lambda l: solver.solve(l, image, labels, eta=0.5, lam=0.01,
                                          sigma_xy=50.0, sigma_rgb=5.0,
                                          step_size=0.1, **options))
  np.testing.assert_allclose(np.asarray(jitted(logits)), np.asarray(y),
                             atol=1e-5)


def _config(**energy):
  """The default config with ``energy`` overrides."""
  sys.path.insert(0, str(REPO))
  from configs import common  # pylint: disable=g-import-not-at-top
  config = common.get_config()
  config.lock()
  config.energy.update(energy)
  return config


def test_the_config_energy_reaches_the_solver_for_dense():
  energy, _ = steps.energy_and_options(_config(
      relaxation="q", neighborhood="dense", sigma_xy=80.0))
  assert (energy.sigma_xy, energy.neighborhood) == (80.0, "dense")


def test_lattice_capacity_in_the_gd_loss_and_its_overflow_inside_jit(grabcut):
  logits, image, labels = grabcut
  options = dict(relaxation="q", neighborhood="dense", sigma_xy=SIGMA_XY,
                 sigma_rgb=SIGMA_RGB)
  loss = jax.jit(lambda l, capacity=None: _gd(
      l, image, labels, lattice_capacity=capacity, **options),
      static_argnums=1)
  capacity = bilateral.choose_capacity(image, labels, sigma_xy=SIGMA_XY,
                                       sigma_rgb=SIGMA_RGB)
  assert capacity < 6 * labels[0].size
  # A capacity that holds every point filters exactly as the 6N bound.
  np.testing.assert_allclose(float(loss(logits, capacity)),
                             float(loss(logits)), rtol=1e-6)
  with pytest.raises(ValueError, match="overflow"):
    _gd(logits, image, labels, lattice_capacity=4,
                                 **options)
  # Inside jit the host check fails the computation, naming the config key.
  with pytest.raises(Exception,
                     match="overflow.*config.energy.lattice_capacity"):
    jax.block_until_ready(loss(logits, 4))


def test_dense_options_from_the_config():
  config = _config(relaxation="q", neighborhood="dense", sigma_xy=80.0,
                   scale_factor=0.5)
  config.loss.method = "soft_sl"
  energy, _ = steps.energy_and_options(config)
  assert (energy.sigma_xy, energy.scale_factor, energy.lattice_capacity) == (
      80.0, 0.5, 0)
  # 0 is the bound, as None is.
  assert solver.checks.check_energy(energy).lattice_capacity is None
  config.energy.lattice_capacity = 4096
  assert steps.energy_and_options(config)[0].lattice_capacity == 4096
  steps.check_config(config)
  for bad in (-1, 2.5):
    bad_config = ml_collections.ConfigDict(config.to_dict())
    bad_config.energy = ml_collections.ConfigDict(
        dict(config.energy, lattice_capacity=bad))
    with pytest.raises(ValueError,
                       match=f"config.energy.lattice_capacity.*{bad}"):
      steps.check_config(bad_config)
