"""Tests of potts_jax.data.folder and potts_jax.data.synthetic."""

import numpy as np
import pytest
from PIL import Image

from potts_jax.data import folder
from potts_jax.data import synthetic
def _write_dataset(root, size=(40, 30)):
  for sub in ("images", "masks", "scribbles/set1"):
    (root / sub).mkdir(parents=True)
  w, h = size
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(
      root / "images" / "a.png")
  mask = np.zeros((h, w), np.uint8)
  mask[:, w // 2:] = 1
  Image.fromarray(mask).save(root / "masks" / "a.png")
  strokes = np.full((h, w), 255, np.uint8)
  strokes[5, 2:10] = 0
  strokes[20, 25:35] = 1
  Image.fromarray(strokes).save(root / "scribbles" / "set1" / "a.png")
  return mask, strokes


def test_load_example_reads_and_resizes(tmp_path):
  mask, strokes = _write_dataset(tmp_path)
  example = folder.load_example(tmp_path, "a")
  assert example.image.shape == (30, 40, 3) and example.image.dtype == np.float32
  np.testing.assert_array_equal(example.mask, mask)
  np.testing.assert_array_equal(example.scribbles, strokes)
  small = folder.load_example(tmp_path, "a", long_side=20)
  assert small.image.shape == (15, 20, 3)
  assert set(np.unique(small.scribbles)) <= {0, 1, 255}
  assert folder.names(tmp_path) == ["a"]


def test_missing_and_mismatched_files_are_named(tmp_path):
  _write_dataset(tmp_path)
  with pytest.raises(FileNotFoundError, match="no image .*images/b"):
    folder.load_example(tmp_path, "b")
  with pytest.raises(FileNotFoundError, match="set2/a.png"):
    folder.load_example(tmp_path, "a", scribble_set="set2")
  Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "masks" / "a.png")
  with pytest.raises(ValueError, match=r"masks/a.png: size \(5, 5\)"):
    folder.load_example(tmp_path, "a")
  Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(
      tmp_path / "masks" / "a.png")
  with pytest.raises(ValueError, match="single-channel"):
    folder.load_example(tmp_path, "a")


def test_pad_batch_marks_padding(tmp_path):
  _write_dataset(tmp_path)
  a = folder.load_example(tmp_path, "a")
  b = folder.load_example(tmp_path, "a", long_side=20)
  images, scribbles, masks = folder.pad_batch([a, b])
  assert images.shape == (2, 30, 40, 3)
  assert np.all(scribbles[1, 15:] == 254) and np.all(scribbles[1, :, 20:] == 254)
  assert np.all(masks[1, 15:] == 255)
  np.testing.assert_array_equal(scribbles[0], a.scribbles)
  with pytest.raises(ValueError, match="does not fit"):
    folder.pad_batch([a], (10, 10))


def test_real_grabcut_layout(shared_data):
  root = shared_data / "grabcut"
  assert len(folder.names(root)) == 50
  example = folder.load_example(root, "124084", scribble_set="set2")
  assert example.image.shape == (321, 481, 3)
  assert set(np.unique(example.mask)) <= {0, 1, 255}


def test_smooth_logits():
  a = synthetic.smooth_logits(32, 24, 3, seed=1, std=2.0)
  assert a.shape == (32, 24, 3) and a.dtype == np.float32
  np.testing.assert_allclose(a.std(), 2.0, rtol=1e-5)
  np.testing.assert_array_equal(a, synthetic.smooth_logits(32, 24, 3, seed=1,
                                                           std=2.0))
  # Smooth: neighbours are far more alike than the field's spread.
  assert np.abs(np.diff(a, axis=0)).mean() < 0.2 * a.std()
