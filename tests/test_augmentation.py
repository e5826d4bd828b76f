"""Tests of potts_jax.data.augmentation (one training example)."""

import numpy as np
import pytest

from potts_jax.data import augmentation
def test_flip_mirrors_image_and_labels_together():
  # A square image the size of the crop, scale 1: the output is the input or
  # its mirror, with labels that are an asymmetric function of the colour.
  x = np.arange(32, dtype=np.uint8) * 7 + 3
  image = np.broadcast_to(np.stack([x, 255 - x, x // 2], -1), (32, 32, 3))
  mask = (x % 3).astype(np.uint8)[None, :].repeat(32, 0)
  scribbles = np.where(x < 10, 255, x % 5).astype(np.uint8)[None].repeat(32, 0)
  example = augmentation.read_example({"image": np.ascontiguousarray(image),
                                       "mask": mask, "scribbles": scribbles})
  flips = []
  for seed in range(12):
    out = augmentation.augment(example, np.random.default_rng(seed),
                               crop_size=32, scale_range=(1.0, 1.0))
    flipped = np.array_equal(out["image"], image[:, ::-1].astype(np.float32))
    assert flipped or np.array_equal(out["image"], image.astype(np.float32))
    want = (slice(None), slice(None, None, -1)) if flipped else (slice(None),)
    np.testing.assert_array_equal(out["mask"], mask[want])
    np.testing.assert_array_equal(out["scribbles"], scribbles[want])
    flips.append(flipped)
  assert any(flips) and not all(flips)
  no_flip = [augmentation.augment(example, np.random.default_rng(s),
                                  crop_size=32, scale_range=(1.0, 1.0),
                                  flip=False)
             for s in range(6)]
  assert all(np.array_equal(o["mask"], mask) for o in no_flip)


def test_read_example_errors_name_the_example():
  good = {"image": np.ones((4, 5, 3), np.uint8),
          "mask": np.zeros((4, 5), np.uint8),
          "scribbles": np.full((4, 5, 1), 255, np.uint8)}
  assert augmentation.read_example(good)["scribbles"].shape == (4, 5)
  with pytest.raises(KeyError, match="'x'.*scribbles"):
    augmentation.read_example({"name": "x", "image": good["image"],
                               "mask": good["mask"]})
  with pytest.raises(ValueError, match="'y'.*mask must be"):
    augmentation.read_example({**good, "name": "y", "mask": good["mask"][:3]})
  with pytest.raises(ValueError, match="image must be"):
    augmentation.read_example({**good,
                               "image": good["image"].astype(np.float32)})
