"""The README's main job and the picture helpers it uses."""

import json

import numpy as np
from PIL import Image

from potts_jax.tools import demo
from potts_jax.plots import viz
def test_demo_writes_figure_and_improves_on_the_unary(tmp_path):
  summary = demo.run(str(tmp_path), steps=200)
  with open(tmp_path / "demo.json") as f:
    saved = json.load(f)
  energies = np.asarray(saved["energies"])
  assert energies.shape == (201,)
  assert np.all(np.diff(energies) < 0), "energy must fall at every step"
  assert summary["pseudo_label_accuracy"] > summary["unary_accuracy"] + 0.01
  with Image.open(tmp_path / "demo.png") as picture:
    assert picture.width > 800 and picture.height > 150


def test_make_scene_is_deterministic_and_scribbles_every_class():
  image, truth, scribbles = demo.make_scene(seed=3)
  again = demo.make_scene(seed=3)
  np.testing.assert_array_equal(image, again[0])
  assert image.shape == (96, 128, 3) and image.min() >= 0 and image.max() <= 255
  for k in range(demo.NUM_CLASSES):
    assert np.any(scribbles == k)
    # Scribbles lie on their class.
    assert np.all(truth[scribbles == k] == k)


def test_palette_and_colorize():
  colours = viz.palette(21)
  np.testing.assert_array_equal(colours[:3], [[0, 0, 0], [128, 0, 0], [0, 128, 0]])
  np.testing.assert_array_equal(colours[15], [192, 128, 128])  # VOC person
  y = np.zeros((1, 2, 3))
  y[0, 0] = [1, 0, 0]
  y[0, 1] = [0, 0.5, 0.5]
  out = viz.colorize(y)
  np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
  np.testing.assert_array_equal(out[0, 1], [64, 64, 0])


def test_overlay_labels_draws_only_labeled_pixels():
  image = np.full((2, 2, 3), 100.0)
  labels = np.array([[1, 255], [254, 0]])
  out = viz.overlay_labels(image, labels)
  np.testing.assert_array_equal(out[0, 1], [100, 100, 100])
  np.testing.assert_array_equal(out[1, 0], [100, 100, 100])
  np.testing.assert_array_equal(out[0, 0], [128, 0, 0])
