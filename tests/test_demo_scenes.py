"""Tests of potts_jax.data.demo_scenes (the demo dataset's examples)."""

import numpy as np
import pytest

from potts_jax.data import augmentation
from potts_jax.data import demo_scenes
from potts_jax.data import synthetic_scribbles as scribbles_lib
def _examples(n=24, **options):
  return [demo_scenes.make_example(i, **options) for i in range(n)]


def test_same_seed_same_bytes_other_seed_differs():
  for split in ("train", "val"):
    a = demo_scenes.make_example(7, seed=3, split=split)
    b = demo_scenes.make_example(7, seed=3, split=split)
    for key in ("image", "mask", "scribbles"):
      assert a[key].tobytes() == b[key].tobytes()
    assert a["name"] == b["name"] == f"{split}_00007"
  a = demo_scenes.make_example(7, seed=3)
  for other in (demo_scenes.make_example(7, seed=4),
                demo_scenes.make_example(8, seed=3),
                demo_scenes.make_example(7, seed=3, split="val")):
    assert a["image"].tobytes() != other["image"].tobytes()
    assert a["mask"].tobytes() != other["mask"].tobytes()


def test_shapes_dtypes_and_classes():
  for h, w, k in ((96, 96, 5), (64, 128, 4), (128, 80, 3)):
    examples = _examples(16, height=h, width=w, num_classes=k)
    for e in examples:
      assert e["image"].shape == (h, w, 3) and e["image"].dtype == np.uint8
      assert e["mask"].shape == e["scribbles"].shape == (h, w, 1)
      assert e["mask"].dtype == e["scribbles"].dtype == np.uint8
      assert set(np.unique(e["mask"])) <= set(range(k))
      assert 0 in e["mask"] and len(np.unique(e["mask"])) >= 2
      assert set(np.unique(e["scribbles"])) <= set(range(k)) | {255}
    present = set(np.unique(np.concatenate([e["mask"].ravel()
                                            for e in examples])))
    assert present == set(range(k))
    # The pipeline reads them as they are.
    augmentation.read_example(examples[0])
  with pytest.raises(ValueError, match="num_classes"):
    demo_scenes.make_example(0, num_classes=9)


def test_scribbles_agree_with_mask_and_fraction_in_range():
  fractions = []
  for e in _examples(40):
    mask, strokes = e["mask"][..., 0], e["scribbles"][..., 0]
    labeled = strokes != 255
    np.testing.assert_array_equal(strokes[labeled], mask[labeled])
    # Every class region present in the image gets some scribble.
    assert set(np.unique(strokes[labeled])) <= set(np.unique(mask))
    assert set(np.unique(strokes[labeled])) >= {0}
    fractions.append(scribbles_lib.labeled_fraction(strokes, mask))
  # Documented: 2.9-3.0% with the default max_fraction of 3%.
  assert 0.027 <= min(fractions) and max(fractions) <= 0.031, (
      min(fractions), max(fractions))


def test_boundaries_are_colour_edges_and_scribbles_are_interior():
  inside, across, distance = [], [], []
  for e in _examples(32):
    image = e["image"].astype(np.float64)
    mask = e["mask"][..., 0]
    edge = np.zeros(mask.shape, bool)
    for axis in (0, 1):
      a = [slice(None)] * 2
      b = [slice(None)] * 2
      a[axis], b[axis] = slice(1, None), slice(None, -1)
      a, b = tuple(a), tuple(b)
      w = np.exp(-((image[a] - image[b]) ** 2).sum(-1) / (2 * 9.0**2))
      same = mask[a] == mask[b]
      inside.append(w[same])
      across.append(w[~same])
      edge[a] |= ~same
      edge[b] |= ~same
    strokes = e["scribbles"][..., 0] != 255
    # Pixels of the scribbles at distance <= 1 from a boundary pixel.
    near = edge.copy()
    near[1:] |= edge[:-1]
    near[:-1] |= edge[1:]
    near[:, 1:] |= edge[:, :-1]
    near[:, :-1] |= edge[:, 1:]
    distance.append(near[strokes].mean())
  inside, across = np.concatenate(inside), np.concatenate(across)
  assert across.size > 1000
  assert inside.mean() > 0.35, inside.mean()
  assert across.mean() < 0.01, across.mean()
  assert np.quantile(across, 0.99) < 0.05
  # Scribbles keep off the boundaries (skeletons of eroded regions).
  assert np.mean(distance) < 0.02
