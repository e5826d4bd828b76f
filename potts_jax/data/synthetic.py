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


def grid_problem(b: int = 2, h: int = 7, w: int = 9, k: int = 4, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A small solver problem with every kind of pixel, for tests.

  Random logits (std 2), a random image smoothed along rows (so that the
  affinities are not all tiny), scribbles of the first, second and last class,
  a padding column (254) in every image and a padding row in the second.

  Returns:
    ``(logits [b, h, w, k] float32, image [b, h, w, 3] float32 0..255,
    labels [b, h, w] int32)``; needs ``b >= 2``, ``h >= 6``, ``w >= 7``.
  """
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, h, w, k)).astype(np.float32) * 2.0
  image = rng.uniform(0, 255, size=(b, h, w, 3)).astype(np.float32)
  image[:, :, 1:] = 0.5 * (image[:, :, 1:] + image[:, :, :-1])
  labels = np.full((b, h, w), 255, np.int32)
  labels[:, 1, 1:4] = 0
  labels[:, 4, 2:6] = k - 1
  labels[0, 5, 6] = 1
  labels[:, :, -1] = 254
  labels[1, -1, :] = 254
  return logits, image, labels
