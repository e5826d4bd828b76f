"""Tests of potts_jax.plots.viz and potts_jax.plots.figures: values and no pyplot state."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from potts_jax.plots import figures
from potts_jax.plots import viz
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_simplex(rng, shape, k):
  y = rng.gamma(0.5, size=shape + (k,))
  return y / y.sum(-1, keepdims=True)


def test_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  y = _random_simplex(rng, (4, 5), 3)
  y[0, 0] = [1, 0, 0]
  y[0, 1] = [1 / 3] * 3
  y[0, 2] = [0.5, 0.5, 0]
  want = np.array([[-sum(p * np.log(p) for p in row if p > 0) for row in line]
                   for line in y]) / np.log(3)
  got = viz.entropy(y)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
  assert got[0, 0] == 0 and np.isclose(got[0, 1], 1)
  np.testing.assert_allclose(got[0, 2], np.log(2) / np.log(3))
  np.testing.assert_array_equal(viz.entropy(np.ones((2, 1))), [0, 0])


def test_colorize_shade_is_entropy_as_brightness():
  colours = np.array([[200, 0, 0], [0, 100, 0]])
  y = np.array([[[1.0, 0.0], [0.5, 0.5], [0.75, 0.25]]])
  plain = viz.colorize(y, colours)
  np.testing.assert_array_equal(plain[0, :2], [[200, 0, 0], [100, 50, 0]])
  shaded = viz.colorize(y, colours, shade=True)
  np.testing.assert_array_equal(shaded[0, 0], [200, 0, 0])  # certain: as is
  np.testing.assert_array_equal(shaded[0, 1], [0, 0, 0])  # uniform: black
  h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) / np.log(2)
  want = (np.array([150.0, 25.0, 0.0]) * (1 - h)).astype(np.uint8)
  np.testing.assert_array_equal(shaded[0, 2], want)


def test_colorize_rejects_a_palette_of_the_wrong_size():
  with pytest.raises(ValueError, match=r"colours must be \[K, 3\] with K = 3"):
    viz.colorize(np.full((2, 2, 3), 1 / 3), np.zeros((2, 3)))


def test_overlay_labels_draws_a_mask_half_transparent():
  image = np.full((1, 3, 3), 100.0)
  mask = np.array([[0, 1, 255]])
  colours = np.array([[0, 0, 0], [200, 200, 200]])
  out = viz.overlay_labels(image, mask, colours, alpha=0.5)
  np.testing.assert_array_equal(out[0], [[50, 50, 50], [150, 150, 150],
                                         [100, 100, 100]])


def test_save_figure_writes_the_numbers_beside_the_image(tmp_path):
  x = np.linspace(0, 1, 5)
  fig = figures.line_panels_figure([dict(x=x, curves={"x²": x ** 2})])
  path = tmp_path / "panel.png"
  viz.save_figure(fig, str(path), data={"x": x, "y": x ** 2})
  assert path.stat().st_size > 1000
  saved = np.load(tmp_path / "panel.npz")
  np.testing.assert_array_equal(saved["y"], x ** 2)


def test_figures_show_the_numbers_they_are_given():
  x = np.linspace(0, 1, 7)
  fig = figures.line_panels_figure(
      [dict(x=x, curves={"a": x, "b": 1 - x}, hlines={"ref": 0.5}),
       dict(x=x, curves={"c": x ** 2}, ylim=(0, 2), yscale="linear")],
      ncols=1)
  axes = fig.axes
  assert len(axes) == 2
  np.testing.assert_array_equal(axes[0].lines[1].get_ydata(), 1 - x)
  np.testing.assert_array_equal(axes[1].lines[0].get_ydata(), x ** 2)
  assert axes[1].get_ylim() == (0, 2)

  rng = np.random.default_rng(1)
  ys = {"one": _random_simplex(rng, (4, 6), 2), "two": _random_simplex(
      rng, (4, 6), 2)}
  image = rng.uniform(0, 255, (4, 6, 3))
  fig = viz.soft_label_figure(ys, image=image, scribbles=np.full((4, 6), 255),
                              mask=np.zeros((4, 6), int))
  pictures = [ax.images[0].get_array() for ax in fig.axes if ax.images]
  # image, mask, then colour and entropy of each column.
  assert len(pictures) == 6
  np.testing.assert_array_equal(pictures[2], viz.colorize(ys["one"]))
  np.testing.assert_allclose(pictures[5], viz.entropy(ys["two"]))


def test_simplex_xy_corners_and_centre():
  np.testing.assert_allclose(figures.simplex_xy(np.eye(3)),
                             [[0, 0], [1, 0], [0.5, np.sqrt(3) / 2]])
  np.testing.assert_allclose(figures.simplex_xy(np.full(3, 1 / 3)),
                             [0.5, np.sqrt(3) / 6])
  with pytest.raises(ValueError, match=r"points must be \[..., 3\]"):
    figures.simplex_xy(np.zeros((4, 2)))


def test_figure_helpers_reject_mismatched_shapes():
  x = np.linspace(0, 1, 4)
  with pytest.raises(ValueError, match=r"panel 'p' must be \[4, 4\]"):
    figures.pair_contours_figure(x, {"p": np.zeros((4, 3))})
  with pytest.raises(ValueError, match=r"panel 'p' must be \[3\]"):
    figures.simplex_figure(np.eye(3), {"p": np.zeros(4)})
  with pytest.raises(ValueError, match="curve 'c' has shape"):
    figures.line_panels_figure([dict(x=x, curves={"c": np.zeros(3)})])
  with pytest.raises(ValueError, match="pass image too"):
    viz.soft_label_figure({"y": np.full((2, 2, 2), 0.5)},
                          mask=np.zeros((2, 2), int))


_NO_PYPLOT = """
import sys
import numpy as np
from potts_jax.plots import figures, viz
x = np.linspace(0, 1, 9)
grid = np.add.outer(x, x)
points = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1/3, 1/3, 1/3],
                   [0.5, 0.5, 0], [0, 0.5, 0.5], [0.5, 0, 0.5]])
y = np.full((3, 4, 2), 0.5)
made = [
    figures.pair_contours_figure(x, {"a": grid, "b": grid ** 2}),
    figures.simplex_figure(points, {"a": points[:, 0]}, marks={"a": points[:1]}),
    figures.line_panels_figure([dict(x=x, curves={"a": x})]),
    viz.soft_label_figure({"y": y}, image=np.zeros((3, 4, 3))),
    viz.solver_figure(np.zeros((3, 4, 3)), np.full((3, 4), 255), y, y,
                      np.arange(5.0)),
]
for i, fig in enumerate(made):
  viz.save_figure(fig, sys.argv[1] + f"/{i}.png", data={"x": x})
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
print("ok", len(made))
"""


def test_no_pyplot_state(tmp_path):
  """Every helper works without importing pyplot (fresh process), and leaves
  no pyplot figure behind in this one."""
  result = subprocess.run(
      [sys.executable, "-c", textwrap.dedent(_NO_PYPLOT), str(tmp_path)],
      capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["ok", "5"]
  assert len(list(tmp_path.glob("*.png"))) == 5
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  before = pyplot.get_fignums()
  x = np.linspace(0, 1, 5)
  figures.pair_contours_figure(x, {"a": np.add.outer(x, x)})
  figures.line_panels_figure([dict(x=x, curves={"a": x})])
  viz.soft_label_figure({"y": np.full((2, 2, 2), 0.5)})
  assert pyplot.get_fignums() == before
