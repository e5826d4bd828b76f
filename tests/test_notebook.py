"""notebooks/loss_landscapes.ipynb: committed without outputs, runs under
nbmake, and its figures' numbers are the library's.

The run writes ``notebooks/figures/<name>.png`` and ``<name>.npz`` (ignored
by git); the checks below read the ``.npz`` files and recompute panels with
float64 numpy (closed forms) or the library's solver.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from potts_jax import solver
from tests import references

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "loss_landscapes.ipynb"
FIGURES = NOTEBOOK.parent / "figures"
NAMES = ("a1_relaxations_2class", "a2_relaxations_logits",
         "a3_simplex_level_sets", "a4_moves", "b_cross_entropies",
         "c1_relaxations_photo", "c2_neighbourhoods_photo",
         "d_energy_per_step")
SHARED_DATA = REPO.parent / "shared" / "data"


def test_committed_notebook_has_no_outputs():
  nb = json.loads(NOTEBOOK.read_text())
  code = [c for c in nb["cells"] if c["cell_type"] == "code"]
  assert code, "the notebook has no code cell"
  for i, cell in enumerate(code):
    assert cell["outputs"] == [], f"code cell {i} has outputs; clear them"
    assert cell["execution_count"] is None, f"code cell {i} has a count"
  assert nb["metadata"]["kernelspec"]["name"] == "python3"


def _run_notebook():
  """Runs the notebook with nbmake (its own pytest process); its numbers."""
  if importlib.util.find_spec("nbmake") is None:
    pytest.fail("nbmake is not installed: pip install -e '.[dev]'")
  if not (SHARED_DATA / "grabcut" / "index.tsv").is_file():
    pytest.fail(f"the notebook reads GrabCut from {SHARED_DATA}, not found")
  start = time.time()
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
       "--nbmake", "--nbmake-timeout=600", str(NOTEBOOK)],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
      env=dict(os.environ, PYTEST_ADDOPTS=""))
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
  for name in NAMES:
    for suffix in (".png", ".npz"):
      path = FIGURES / f"{name}{suffix}"
      assert path.is_file() and path.stat().st_mtime >= start - 1, (
          f"{path} was not written by this run")
  return {name: dict(np.load(FIGURES / f"{name}.npz")) for name in NAMES}


def _check_two_class_relaxations(data_by_name):
  """Figure (a1): each map equals P of Table 1-2 in float64 numpy."""
  data = data_by_name["a1_relaxations_2class"]
  x = data["x"]
  dist = np.stack([x, 1 - x], -1)
  for name in references.RELAXATIONS:
    want = references.relaxation(name, dist[:, None], dist[None, :])
    finite = np.isfinite(want)
    np.testing.assert_allclose(data[name][finite], want[finite], rtol=2e-5,
                               atol=2e-6, err_msg=name)


def _check_cross_entropies(data_by_name):
  """Figure (b): ∂H/∂σ¹ of ce, rce, cce by hand (σ = (x, 1-x), y = (u, 1-u))."""
  data = data_by_name["b_cross_entropies"]
  x, u = np.meshgrid(data["x"], data["fixed"], indexing="ij")
  s = x * u + (1 - x) * (1 - u)
  want = {"ce": -u / x + (1 - u) / (1 - x),
          "rce": -np.log(u) + np.log(1 - u),
          "cce": -(2 * u - 1) / s}
  for name, d_sigma in want.items():
    np.testing.assert_allclose(data[f"{name}_sigma_d_sigma"], d_sigma,
                               rtol=1e-4, atol=1e-5, err_msg=name)


def _check_moves(data_by_name):
  """Figure (a4): the barrier of bl inside a region and q's preference for
  the midpoint at a boundary (paper Figure 2)."""
  data = data_by_name["a4_moves"]
  t = data["t"]
  np.testing.assert_allclose(data["bl_inside"], 2 * t * (1 - t), atol=1e-6)
  np.testing.assert_allclose(data["q_boundary"],
                             0.5 * (1 + t ** 2 + (1 - t) ** 2), atol=1e-6)
  np.testing.assert_allclose(data["nq_inside"], 0, atol=1e-6)


def _check_photo(data_by_name):
  """Figure (c1): the cd column, solved again here with the saved inputs."""
  import optax  # pylint: disable=g-import-not-at-top
  data = data_by_name["c1_relaxations_photo"]
  batch = (data["unary"][None], data["image"][None], data["scribbles"][None])
  y = solver.solve(
      *batch, relaxation="cd", cross_entropy="cce", neighborhood="nn8",
      eta=float(data["eta"]), lam=float(data["lam"]),
      sigma_rgb=float(data["sigma_rgb"]), num_steps=int(data["num_steps"]),
      method="optax", optimizer=optax.adam(float(data["adam_lr"])))
  np.testing.assert_allclose(data["cd"], np.asarray(y[0]), atol=1e-3)
  labeled = data["scribbles"] < 254
  np.testing.assert_array_equal(data["cd"][labeled].argmax(-1),
                                data["scribbles"][labeled])
  assert np.all(data["cd"][labeled].max(-1) == 1.0)
  # A sane segmentation: the solver's mask agrees with the ground truth.
  valid = data["mask"] != 255
  assert (data["cd"].argmax(-1) == data["mask"])[valid].mean() > 0.9


def _check_energies(data_by_name):
  """Figure (d): energies fall, and H_Q + P_Q never goes below its exact
  minimum (quadratic.solve_exact)."""
  data = data_by_name["d_energy_per_step"]
  exact = float(data["exact_qq"])
  curves = {k: v for k, v in data.items() if "|" in k}
  assert len(curves) == 8
  for key, e in curves.items():
    assert e[-1] < e[0], key
    if key.startswith("H_Q + P_Q"):
      assert e.min() >= exact * (1 - 1e-4), key
  assert curves["H_Q + P_Q|adam (0.1)"][-1] <= exact * 1.05


@pytest.mark.slow
def test_notebook_runs_and_its_figures_are_the_librarys():
  """One test (so that pytest-xdist runs the notebook once): nbmake runs it,
  then each figure's saved numbers are checked."""
  data_by_name = _run_notebook()
  _check_two_class_relaxations(data_by_name)
  _check_moves(data_by_name)
  _check_cross_entropies(data_by_name)
  _check_photo(data_by_name)
  _check_energies(data_by_name)
