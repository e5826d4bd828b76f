"""Synthetic network outputs for solver tests and benchmarks."""

from __future__ import annotations

import numpy as np
import scipy.ndimage


def smooth_logits(
    height: int,
    width: int,
    num_classes: int,
    seed: int,
    std: float = 1.0,
    smoothness: float = 8.0,
) -> np.ndarray:
  """A smooth random field of logits, a stand-in for an untrained network.

  Gaussian noise filtered with a ``smoothness``-pixel Gaussian per class,
  rescaled to standard deviation ``std``.

  Returns:
    ``[height, width, num_classes]`` float32.
  """
  noise = np.random.default_rng(seed).normal(
      size=(height, width, num_classes))
  field = scipy.ndimage.gaussian_filter(
      noise, sigma=(smoothness, smoothness, 0))
  return (field * std / field.std()).astype(np.float32)
