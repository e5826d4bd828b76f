"""Tests of potts_jax.solver: iterates, energy, constraints, transforms, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from potts_jax import solver
from potts_jax.solver import loop as solver_loop
from potts_jax.solver import reference
from potts_jax.data import folder
from potts_jax.data import synthetic
from tests.test_reference import BruteForceEnergy
RELAXATIONS = ("bl", "q", "nq", "cce", "cd", "lq")
CROSS_ENTROPIES = ("ce", "rce", "cce", "q")


_problem = synthetic.grid_problem


# Every relaxation on both grids with H_CCE, every cross-entropy with P_CD.
_COMBOS = ([(r, "cce", n) for r in RELAXATIONS for n in ("nn4", "nn8")]
           + [("cd", c, "nn4") for c in CROSS_ENTROPIES if c != "cce"])


@pytest.mark.parametrize("kernel", solver.KERNELS)
@pytest.mark.parametrize("relaxation, cross_entropy, neighborhood", _COMBOS)
def test_iterates_match_the_reference_loop(relaxation, cross_entropy, neighborhood,
                                 kernel):
  logits, image, labels = _problem()
  y = solver.solve(logits, image, labels, relaxation=relaxation,
                   cross_entropy=cross_entropy, neighborhood=neighborhood,
                   num_steps=3, kernel=kernel)
  expected = reference.solve(logits, image, labels, solver.EnergyParams(
      relaxation=relaxation, cross_entropy=cross_entropy,
      neighborhood=neighborhood), num_steps=3)
  chex.assert_trees_all_close(y, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_energy_equals_reference(relaxation):
  logits, image, labels = _problem(seed=1)
  y = jax.nn.softmax(np.random.default_rng(2).normal(size=logits.shape), -1)
  for cross_entropy in CROSS_ENTROPIES:
    for neighborhood in ("nn4", "nn8"):
      params = solver.EnergyParams(
          relaxation=relaxation, cross_entropy=cross_entropy,
          neighborhood=neighborhood, eta=0.7, lam=2.0, sigma_rgb=20.0)
      got = solver.energy(y, logits, image, labels, params)
      want = BruteForceEnergy(logits, image, labels, params)(y)
      chex.assert_shape(got, (2,))
      np.testing.assert_allclose(got, want, rtol=2e-5)


def test_output_constraints():
  logits, image, labels = _problem()
  y = solver.solve(logits, image, labels, num_steps=30)
  chex.assert_shape(y, logits.shape)
  chex.assert_tree_all_finite(y)
  assert np.all(np.asarray(y) >= 0)
  np.testing.assert_allclose(np.sum(y, -1), 1.0, atol=1e-5)
  labeled = labels < 254
  onehot = np.eye(logits.shape[-1])[labels[labeled]]
  np.testing.assert_array_equal(np.asarray(y)[labeled], onehot)
  # Padding takes part in no term: its labels stay the network's softmax.
  padding = labels == 254
  np.testing.assert_allclose(np.asarray(y)[padding],
                             np.asarray(jax.nn.softmax(logits))[padding],
                             atol=1e-6)


def test_solve_with_energies_matches_energy_of_solve():
  logits, image, labels = _problem()
  y, energies = solver.solve_with_energies(logits, image, labels, num_steps=12)
  chex.assert_shape(energies, (13, 2))
  for t in (0, 5, 12):
    y_t = solver.solve(logits, image, labels, num_steps=t)
    chex.assert_trees_all_close(
        energies[t], solver.energy(y_t, logits, image, labels), rtol=1e-5)
  chex.assert_trees_all_close(y, y_t)
  assert np.all(np.diff(np.asarray(energies), axis=0) < 0)


def test_optax_sgd_equals_plain_descent_and_adam_descends():
  logits, image, labels = _problem()
  plain = solver.solve(logits, image, labels, num_steps=20)
  sgd = solver.solve(logits, image, labels, num_steps=20,
                     optimizer=optax.sgd(0.075))
  chex.assert_trees_all_close(plain, sgd, atol=2e-6)
  adam = optax.adam(0.05)
  _, energies = solver.solve_with_energies(logits, image, labels,
                                           num_steps=40, optimizer=adam)
  assert np.all(energies[-1] < energies[0])


class JitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_no_jit_agree(self):
    logits, image, labels = _problem()
    fn = self.variant(functools.partial(solver.solve, num_steps=10))
    chex.assert_trees_all_close(
        fn(logits, image, labels),
        solver.solve(logits, image, labels, num_steps=10), atol=1e-6)


def test_changing_values_does_not_retrace():
  logits, image, labels = _problem()
  solver.solve(logits, image, labels, num_steps=3)
  size = solver_loop.solve_batch._cache_size()
  for eta, lam, step in ((0.1, 1.0, 0.01), (0.9, 3.0, 0.2)):
    solver.solve(logits * 2, image, labels, num_steps=3, eta=eta, lam=lam,
                 sigma_rgb=5.0, step_size=step)
  assert solver_loop.solve_batch._cache_size() == size


def test_vmap_over_an_outer_axis():
  logits, image, labels = _problem()
  stacked = jax.tree.map(lambda x: np.stack([x, x[::-1]]),
                         (logits, image, labels))
  fn = functools.partial(solver.solve, num_steps=6)
  got = jax.vmap(fn)(*stacked)
  chex.assert_trees_all_close(got[0], fn(logits, image, labels), atol=1e-6)
  chex.assert_trees_all_close(
      got[1], fn(logits[::-1], image[::-1], labels[::-1]), atol=1e-6)


def test_inside_shard_map_equals_unsharded():
  devices = np.array(jax.devices()[:2])
  assert len(devices) == 2, "conftest.py sets fake CPU devices"
  mesh = jax.sharding.Mesh(devices, ("data",))
  spec = jax.sharding.PartitionSpec("data")
  logits, image, labels = _problem(b=4)
  fn = functools.partial(solver.solve, num_steps=6)
  shard_map = getattr(jax, "shard_map", None)
  if shard_map is None:  # jax < 0.7 kept it in experimental.
    from jax.experimental.shard_map import shard_map
  sharded = jax.jit(shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec),
                              out_specs=spec))
  chex.assert_trees_all_close(sharded(logits, image, labels),
                              fn(logits, image, labels), atol=1e-6)


def test_gradient_does_not_flow_into_logits():
  logits, image, labels = _problem()
  grad = jax.grad(lambda l: jnp.sum(
      solver.solve(l, image, labels, num_steps=3) ** 2))(jnp.asarray(logits))
  np.testing.assert_array_equal(grad, 0.0)


def test_hard_labels():
  y = jax.nn.softmax(np.random.default_rng(0).normal(size=(2, 3, 4, 5)), -1)
  hard = solver.hard_labels(y)
  chex.assert_shape(hard, y.shape)
  np.testing.assert_array_equal(np.argmax(hard, -1), np.argmax(y, -1))
  np.testing.assert_array_equal(np.sum(hard, -1), 1.0)


def test_extreme_logits_stay_finite():
  logits, image, labels = _problem()
  logits = np.where(np.random.default_rng(0).random(logits.shape) > 0.5,
                    1e4, -1e4).astype(np.float32)
  for relaxation in RELAXATIONS:
    y = solver.solve(logits, image, labels, relaxation=relaxation,
                     num_steps=5)
    chex.assert_tree_all_finite(y)
    chex.assert_tree_all_finite(solver.energy(y, logits, image, labels,
                                              relaxation=relaxation))


@pytest.mark.parametrize("bad, match", [
    (lambda l, i, s: (l, i, np.where(s == 0, 7, s)), r"\[7\].*0\.\.3"),
    (lambda l, i, s: (l, i, np.where(s == 0, -1, s)), r"\[-1\]"),
    (lambda l, i, s: (l, i, np.where(s == 0, 253, s)), r"\[253\]"),
    (lambda l, i, s: (l[..., 0], i, s), r"logits must be \[B, H, W, K\]"),
    (lambda l, i, s: (l, i[:, :-1], s), r"image must be"),
    (lambda l, i, s: (l, i, s[:1]), r"labels must be \[B, H, W\]"),
    (lambda l, i, s: (l, i, s.astype(np.float32)), r"labels must be integers"),
])
def test_bad_inputs_name_the_problem(bad, match):
  args = bad(*_problem())
  with pytest.raises(ValueError, match=match):
    solver.solve(*args, num_steps=1)


def test_bad_options_name_the_problem():
  logits, image, labels = _problem()
  with pytest.raises(ValueError, match="'xx'.*bl"):
    solver.solve(logits, image, labels, relaxation="xx")
  with pytest.raises(ValueError, match="'kl'.*cce"):
    solver.solve(logits, image, labels, cross_entropy="kl")
  with pytest.raises(ValueError, match="'nn6'"):
    solver.solve(logits, image, labels, neighborhood="nn6")
  with pytest.raises(ValueError, match="'cd'.*dense neighbourhood supports"):
    solver.solve(logits, image, labels, neighborhood="dense")  # relaxation cd
  with pytest.raises(ValueError, match="num_steps"):
    solver.solve(logits, image, labels, num_steps=-1)
  with pytest.raises(ValueError, match="'cuda'.*auto"):
    solver.solve(logits, image, labels, kernel="cuda")
  with pytest.raises(TypeError, match="stepsize"):
    solver.solve_with_energies(logits, image, labels, stepsize=0.1)
  with pytest.raises(ValueError, match="y must have the shape"):
    solver.energy(logits[..., :2], logits, image, labels)


def test_default_solver_lowers_the_energy_on_real_photos(shared_data):
  """Paper defaults (H_CCE + P_CD, 4-NN, 200 steps) on GrabCut, real strokes."""
  root = shared_data / "grabcut"
  examples = [folder.load_example(root, name, long_side=96)
              for name in folder.names(root)[:4]]
  image, labels, _ = folder.pad_batch(examples)
  _, h, w = labels.shape
  logits = np.stack([synthetic.smooth_logits(h, w, 2, seed=b, std=2.0)
                     for b in range(len(examples))])
  y, energies = solver.solve_with_energies(logits, image, labels)
  energies = np.asarray(energies)
  chex.assert_shape(energies, (201, 4))
  assert np.all(energies[-1] < energies[0])
  assert np.all(energies[1:] <= energies[:-1] * (1 + 1e-6)), "not monotone"
  y = np.asarray(y)
  assert np.all(y >= 0)
  np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
  scribbled = labels < 254
  np.testing.assert_array_equal(y[scribbled], np.eye(2)[labels[scribbled]])


def test_float32_inputs_under_x64_stay_float32():
  logits, image, labels = _problem()
  expected = solver.solve(logits, image, labels, num_steps=5)
  with jax.enable_x64(True):
    y = solver.solve(logits, image, labels, num_steps=5)
    e = solver.energy(y, logits, image, labels)
  assert y.dtype == jnp.float32 and e.dtype == jnp.float32
  chex.assert_trees_all_close(y, expected, atol=1e-6)
