"""Tests of potts_jax.plots.landscapes against closed forms and float64 numpy."""

import numpy as np
import pytest

from potts_jax.plots import landscapes
from potts_jax import solver
from tests import references

RELAXATIONS = references.RELAXATIONS


@pytest.mark.parametrize("name", RELAXATIONS)
def test_binary_pair_grid_matches_numpy(name):
  x = np.linspace(0.0, 1.0, 21)
  got = landscapes.binary_pair_grid(name, x)
  dist = np.stack([x, 1 - x], -1)
  want = references.relaxation(name, dist[:, None], dist[None, :])
  assert got.shape == (21, 21)
  finite = np.isfinite(want)
  np.testing.assert_allclose(got[finite], want[finite], rtol=2e-5, atol=2e-6)
  # Opposite one-hots of the log relaxations: the documented cap -ln EPS.
  np.testing.assert_allclose(got[~finite], references.CAP, rtol=1e-6)
  assert (~finite).sum() == (2 if name in references.LOG_RELAXATIONS else 0)


def test_binary_from_logit_is_the_softmax_of_l_and_minus_l():
  logit = np.linspace(-4, 4, 17)
  z = np.exp(np.stack([logit, -logit], -1))
  np.testing.assert_allclose(landscapes.binary_from_logit(logit),
                             z[:, 0] / z.sum(-1), rtol=1e-12)


def test_simplex_lattice():
  points = landscapes.simplex_lattice(6)
  assert points.shape == (28, 3)
  np.testing.assert_allclose(points.sum(-1), 1.0)
  assert points.min() >= 0
  assert len({tuple(np.round(p * 6).astype(int)) for p in points}) == 28
  for vertex in np.eye(3):
    assert np.any(np.all(np.isclose(points, vertex), -1))


@pytest.mark.parametrize("name", RELAXATIONS)
def test_simplex_values_matches_numpy(name):
  points = landscapes.simplex_lattice(12)
  anchor = np.array([0.6, 0.3, 0.1])
  np.testing.assert_allclose(landscapes.simplex_values(name, anchor, points),
                             references.relaxation(name, anchor, points),
                             rtol=2e-5, atol=2e-6)


def test_move_curves_closed_forms():
  t = np.linspace(0.05, 0.95, 19)
  curves = {n: landscapes.move_curves(n, t) for n in RELAXATIONS}
  sq = (1 - t) ** 2 + t ** 2
  # Inside a region: y_i = y_j = (1-t, t, 0).
  np.testing.assert_allclose(curves["bl"]["inside"], 2 * t * (1 - t), rtol=1e-5)
  np.testing.assert_allclose(curves["cce"]["inside"], -np.log(sq), rtol=1e-5)
  for name in ("q", "nq", "cd", "lq"):
    np.testing.assert_allclose(curves[name]["inside"], 0.0, atol=1e-6)
  # At a boundary: y_i = (1, 0, 0), y_j = (0, t, 1-t).
  np.testing.assert_allclose(curves["bl"]["boundary"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(curves["nq"]["boundary"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(curves["q"]["boundary"], 0.5 * (1 + sq), rtol=1e-5)
  np.testing.assert_allclose(curves["lq"]["boundary"], -np.log(t * (1 - t)),
                             rtol=1e-5)
  # Orthogonal labels: infinite, evaluated with the guarded logs (-ln EPS for
  # the dot product; cd keeps its finite ½ ln ‖y_j‖²).
  np.testing.assert_allclose(curves["cce"]["boundary"], references.CAP,
                             rtol=1e-6)
  np.testing.assert_allclose(curves["cd"]["boundary"],
                             references.CAP + 0.5 * np.log(sq), rtol=1e-6)


def test_move_paths_stay_on_the_simplex():
  for yi, yj in landscapes.move_paths(np.linspace(0, 1, 5)).values():
    for y in (yi, yj):
      assert y.shape == (5, 3) and y.min() >= 0
      np.testing.assert_allclose(y.sum(-1), 1.0)


def _closed_form_derivatives(name, x, u):
  """∂H/∂x and ∂H/∂u of H((x, 1-x), (u, 1-u)), by hand."""
  if name == "ce":  # -u ln x - (1-u) ln(1-x)
    return -u / x + (1 - u) / (1 - x), -np.log(x) + np.log(1 - x)
  if name == "rce":  # -x ln u - (1-x) ln(1-u)
    return -np.log(u) + np.log(1 - u), -x / u + (1 - x) / (1 - u)
  s = x * u + (1 - x) * (1 - u)  # cce: -ln s
  return -(2 * u - 1) / s, -(2 * x - 1) / s


@pytest.mark.parametrize("name", ["ce", "rce", "cce"])
def test_cross_entropy_grid_matches_closed_forms(name):
  x = np.linspace(0.05, 0.95, 19)
  u = np.array([0.1, 0.5, 0.7, 0.9])
  got = landscapes.cross_entropy_grid(name, x, u)
  xx, uu = np.meshgrid(x, u, indexing="ij")
  value = references.cross_entropy(
      name, np.stack([xx, 1 - xx], -1), np.stack([uu, 1 - uu], -1))
  d_sigma, d_y = _closed_form_derivatives(name, xx, uu)
  assert all(v.shape == (19, 4) for v in got.values())
  np.testing.assert_allclose(got["value"], value, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["d_sigma"], d_sigma, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got["d_y"], d_y, rtol=1e-4, atol=1e-5)


def test_mimicking_uncertainty():
  """Paper Figure 3: only ce pulls σ to a soft label y = (½, ½)."""
  x = np.linspace(0.05, 0.95, 19)
  half = [0.5]
  assert np.abs(landscapes.cross_entropy_grid("ce", x, half)["d_sigma"]).max() > 1
  for name in ("rce", "cce"):
    np.testing.assert_allclose(
        landscapes.cross_entropy_grid(name, x, half)["d_sigma"], 0, atol=1e-6)
  # ... and rce pulls y to σ, cce does not (σ = ½).
  assert np.abs(landscapes.cross_entropy_grid("rce", half, x)["d_y"]).max() > 1
  np.testing.assert_allclose(
      landscapes.cross_entropy_grid("cce", half, x)["d_y"], 0, atol=1e-6)


def test_bad_inputs_name_the_value():
  with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
    landscapes.binary_pair_grid("q", [0.5, 1.5])
  with pytest.raises(ValueError, match="x must be a non-empty 1-D array"):
    landscapes.binary_pair_grid("q", np.zeros((2, 2)))
  with pytest.raises(ValueError, match="unknown Potts relaxation 'potts'"):
    landscapes.binary_pair_grid("potts", [0.5])
  with pytest.raises(ValueError, match="unknown cross-entropy 'kl'"):
    landscapes.cross_entropy_grid("kl", [0.5], [0.5])
  with pytest.raises(ValueError, match="n must be an integer >= 1"):
    landscapes.simplex_lattice(0)
  with pytest.raises(ValueError, match="anchor must be"):
    landscapes.simplex_values("q", [1.0, 0.0], landscapes.simplex_lattice(2))
  with pytest.raises(ValueError, match="anchor must lie on the simplex"):
    landscapes.simplex_values("q", [1.0, 1.0, 0.0], landscapes.simplex_lattice(2))
  with pytest.raises(ValueError, match="expected logits"):
    landscapes.pseudo_labels(np.zeros((4, 4, 2)), np.zeros((4, 5, 3)),
                             np.zeros((4, 4)), {"a": {}})


def _tiny_problem():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 7, 3)).astype(np.float32)
  image = rng.uniform(0, 255, size=(6, 7, 3)).astype(np.float32)
  labels = np.full((6, 7), 255, np.int32)
  labels[0, 0], labels[5, 6], labels[3, 3] = 0, 1, 2
  return logits, image, labels


def test_pseudo_labels_and_energy_curves_are_the_solver():
  logits, image, labels = _tiny_problem()
  common = dict(num_steps=5, eta=0.3, lam=6.0, cross_entropy="cce")
  runs = {"cd": dict(relaxation="cd"), "q8": dict(relaxation="q",
                                                  neighborhood="nn8")}
  batch = (logits[None], image[None], labels[None])
  ys = landscapes.pseudo_labels(logits, image, labels, runs, **common)
  assert list(ys) == ["cd", "q8"]
  for name, options in runs.items():
    want = solver.solve(*batch, **common, **options)[0]
    np.testing.assert_allclose(ys[name], want, atol=1e-6)
  curves = landscapes.energy_curves(logits, image, labels, runs, **common)
  for name, options in runs.items():
    assert curves[name].shape == (6,)
    y, energies = solver.solve_with_energies(*batch, **common, **options)
    np.testing.assert_allclose(curves[name], np.asarray(energies)[:, 0])
    np.testing.assert_allclose(
        curves[name][-1], solver.energy(y, *batch, **common, **options)[0],
        rtol=1e-5)
