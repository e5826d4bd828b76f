"""Tests of potts_jax.labels."""

import numpy as np

from potts_jax import labels
def test_masks_follow_the_codes():
  codes = np.array([[0, 3, 255, 254]])
  np.testing.assert_array_equal(labels.scribbled(codes), [[1, 1, 0, 0]])
  np.testing.assert_array_equal(labels.unlabeled(codes), [[0, 0, 1, 0]])
  np.testing.assert_array_equal(labels.valid(codes), [[1, 1, 1, 0]])
  assert (labels.UNLABELED, labels.PADDING) == (255, 254)
