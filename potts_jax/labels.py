"""Label codes and the pixel masks derived from them.

``labels`` ``[B, H, W]`` int32 hold a class ``0..K-1`` on scribbled (or
ground-truth) pixels, :data:`UNLABELED` on pixels without a label and
:data:`PADDING` on crop padding, which takes part in no term of any loss or
energy.
"""

from __future__ import annotations

import jax.numpy as jnp

UNLABELED = 255
PADDING = 254


def scribbled(labels: jnp.ndarray) -> jnp.ndarray:
  """``[B, H, W]`` bool: pixels holding a class (neither 255 nor 254)."""
  return (labels != UNLABELED) & (labels != PADDING)


def unlabeled(labels: jnp.ndarray) -> jnp.ndarray:
  """``[B, H, W]`` bool: valid pixels without a class (255)."""
  return labels == UNLABELED


def valid(labels: jnp.ndarray) -> jnp.ndarray:
  """``[B, H, W]`` bool: pixels that are not padding (254)."""
  return labels != PADDING
