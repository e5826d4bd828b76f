"""Coarse-to-fine warm start of the pseudo-label solver (``warm_start="coarse"``).

Why it should work: on a grid the Potts term makes ``E`` stiff. Its curvature
on the smooth (low-frequency) modes of ``y`` is small against the rough ones,
so a first-order step that is stable on the rough modes needs ~κ (GD) or ~√κ
(momentum, Adam) steps per e-fold on the smooth ones, and those are what
moves the label boundaries across the image. On a grid downsampled 2x a
mode of a given size has half the wavelength in pixels, so it relaxes ~4x
faster per step, and a step costs a quarter as much. The solver therefore
first runs ``warm_start_steps`` steps of the same method on the 2x2-pooled
problem (:func:`coarse_inputs`), upsamples the result bilinearly
(:func:`fine_start`) and runs its ``num_steps`` fine steps from there
(multigrid's coarse-grid correction, used once as an initialisation).

The coarse problem. Per 2x2 block (H and W padded to even with padding
pixels): the image and ``σ`` are averaged over the block's valid pixels; the
label is the block's most frequent scribble class if any pixel is scribbled,
else 255 if any pixel is valid, else 254 (padding). A block is one coarse
pixel standing for four fine ones, so its unary weight is 4η; a label edge
crossing ``L`` fine pairs crosses ``L/2`` coarse pairs. Dividing that energy
by 4 gives the coarse weights ``η`` and ``λ · COARSE_LAMBDA_SCALE`` with
``COARSE_LAMBDA_SCALE = 1/2`` (sharp label boundaries; a smooth ``y``, whose
Dirichlet sum does not change with the grid, would want 1/4).

The fine start is ``(1 - α) up(y_c) + α σ`` with the scribble reset, ``up``
bilinear (half-pixel centres: a coarse pixel sits at the centre of its
block; nearest-neighbour blocks cost the smooth ``q`` term energy that the
fine steps must first remove) and ``α = FINE_MIX``: ``y_c`` is one-hot on
coarse scribbles, and a class that is exactly 0 can never grow in the
logit-space updates, so every class keeps at least ``α σ_k``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from potts_jax import labels as label_codes
from potts_jax import potts
Array = jnp.ndarray

#: The ``warm_start`` values :func:`potts_jax.solver.solve` accepts.
WARM_STARTS = (None, "coarse")
#: Coarse ``λ`` relative to the fine ``λ`` (module docstring).
COARSE_LAMBDA_SCALE = 0.5
#: Weight ``α`` of ``σ`` in the fine start.
FINE_MIX = 0.02


def check_warm_start(warm_start, warm_start_steps, neighborhood: str):
  """Raises ``ValueError`` naming a bad ``warm_start`` or its step count."""
  if warm_start not in WARM_STARTS:
    raise ValueError(f"unknown warm_start {warm_start!r}; expected one of "
                     f"{WARM_STARTS}")
  if warm_start is None:
    return
  if neighborhood == "dense":
    raise ValueError("warm_start='coarse' supports the grid neighbourhoods "
                     "nn4 and nn8; got 'dense'")
  if (not isinstance(warm_start_steps, int) or isinstance(warm_start_steps,
                                                          bool)
      or warm_start_steps < 0):
    raise ValueError("warm_start_steps must be an int >= 0; got "
                     f"{warm_start_steps!r}")


def _pad_even(x: Array, value) -> Array:
  """Pads axes 1, 2 of ``x`` at the end to even sizes with ``value``."""
  h, w = x.shape[1:3]
  pads = [(0, 0), (0, h % 2), (0, w % 2)] + [(0, 0)] * (x.ndim - 3)
  return jnp.pad(x, pads, constant_values=value)


def _blocks(x: Array) -> Array:
  """``[B, 2H', 2W', ...] -> [B, H', W', 4, ...]``: the 2x2 blocks."""
  b, h, w = x.shape[:3]
  rest = x.shape[3:]
  x = x.reshape((b, h // 2, 2, w // 2, 2) + rest)
  x = jnp.moveaxis(x, 2, 3)
  return x.reshape((b, h // 2, w // 2, 4) + rest)


def coarse_inputs(sigma: Array, image: Array, labels: Array):
  """The 2x2-pooled problem (module docstring).

  Args:
    sigma: ``[B, H, W, K]`` the network prediction ``softmax(logits)``.
    image: ``[B, H, W, C]``.
    labels: ``[B, H, W]`` int: class, 255 unlabeled, 254 padding.

  Returns:
    ``(logits_c [B, H', W', K], image_c [B, H', W', C], labels_c [B, H', W'])``
    with ``H' = ⌈H/2⌉``, ``W' = ⌈W/2⌉``; ``softmax(logits_c)`` is the
    pooled ``σ`` (up to the guard of :func:`potts_jax.potts.safe_log`).
  """
  k = sigma.shape[-1]
  labels = _pad_even(jnp.asarray(labels, jnp.int32), label_codes.PADDING)
  valid = _blocks(label_codes.valid(labels).astype(jnp.float32))  # [.., 4]
  count = jnp.sum(valid, axis=-1)
  norm = jnp.where(count > 0, 1 / jnp.maximum(count, 1), 0)[..., None]
  pool = lambda x: jnp.sum(_blocks(_pad_even(x, 0)) * valid[..., None],
                           axis=3) * norm
  image_c = pool(jnp.asarray(image, jnp.float32))
  sigma_c = jnp.where(count[..., None] > 0, pool(sigma), 1.0 / k)
  scribbled = label_codes.scribbled(labels)
  votes = jnp.sum(_blocks(jax.nn.one_hot(jnp.where(scribbled, labels, 0), k)
                          * scribbled[..., None]), axis=3)  # [B, H', W', K]
  unlabeled = jnp.any(_blocks(label_codes.unlabeled(labels)), axis=-1)
  labels_c = jnp.where(
      jnp.sum(votes, -1) > 0, jnp.argmax(votes, -1).astype(jnp.int32),
      jnp.where(unlabeled, label_codes.UNLABELED, label_codes.PADDING))
  return potts.safe_log(sigma_c), image_c, labels_c


def fine_start(y_coarse: Array, sigma: Array) -> Array:
  """``(1 - α) up(y_c) + α σ`` ``[B, H, W, K]``, bilinear (no scribble reset).

  Args:
    y_coarse: ``[B, H', W', K]`` the coarse solution.
    sigma: ``[B, H, W, K]`` the fine prediction.
  """
  h, w = sigma.shape[1:3]
  b, hc, wc, k = y_coarse.shape
  up = jax.image.resize(y_coarse, (b, 2 * hc, 2 * wc, k), "linear")
  return (1 - FINE_MIX) * up[:, :h, :w] + FINE_MIX * sigma
