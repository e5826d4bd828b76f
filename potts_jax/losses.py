"""Cross-entropies H(σ, y) and the network losses (paper eqs. 3, 4, 6-9).

Cross-entropies take the prediction ``sigma`` and the (pseudo-)label ``y``, both
``[..., K]`` on the simplex, and return ``[...]``:

=======  ======================  ============================================
name     H(σ, y)                 paper
=======  ======================  ============================================
``ce``   ``-Σ_k y_k ln σ_k``     standard cross-entropy, eq. 7
``rce``  ``-Σ_k σ_k ln y_k``     reverse cross-entropy, eq. 8
``cce``  ``-ln σᵀy``             collision cross-entropy, eq. 9
``q``    ``½‖σ - y‖²``           quadratic, only for the closed-form check
=======  ======================  ============================================

Logs are guarded as in :mod:`potts_jax.potts` (``ln max(x, EPS)``), so values and
gradients stay finite at one-hot and orthogonal one-hot inputs.

Label codes (class, 255 unlabeled, 254 padding) are those of
:mod:`potts_jax.labels`.

Means over pixels (and pairs) take ``axis_name``: inside ``jax.shard_map`` /
``jax.pmap`` over that axis, each device divides its own sum by the count of the
*global* batch (``lax.psum`` of the counts), so that the ``lax.psum`` of the
device losses, and of their gradients, is exactly the loss of the global batch
as one device would compute it, however the scribbled pixels are spread over the
devices. (A ``pmean`` of per-device means weights a device's pixels by the
inverse of its own count instead.) ``axis_name=None`` is the plain mean.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from potts_jax import bilateral
from potts_jax import labels as label_codes
from potts_jax import neighborhoods
from potts_jax import potts

Array = jnp.ndarray


def ce(sigma: Array, y: Array, axis: int = -1) -> Array:
  """Standard cross-entropy ``-Σ y ln σ``. ``[..., K] x [..., K] -> [...]``."""
  return -jnp.sum(y * potts.safe_log(sigma), axis=axis)


def rce(sigma: Array, y: Array, axis: int = -1) -> Array:
  """Reverse cross-entropy ``-Σ σ ln y``. ``[..., K] x [..., K] -> [...]``."""
  return -jnp.sum(sigma * potts.safe_log(y), axis=axis)


def cce(sigma: Array, y: Array, axis: int = -1) -> Array:
  """Collision cross-entropy ``-ln σᵀy``. ``[..., K] x [..., K] -> [...]``."""
  return -potts.safe_log(jnp.sum(sigma * y, axis=axis))


def quadratic(sigma: Array, y: Array, axis: int = -1) -> Array:
  """Quadratic ``½‖σ - y‖²``. ``[..., K] x [..., K] -> [...]``."""
  return 0.5 * jnp.sum(jnp.square(sigma - y), axis=axis)


_BY_NAME = {"ce": ce, "rce": rce, "cce": cce, "q": quadratic}
NAMES = tuple(_BY_NAME)


def check_name(name: str) -> str:
  """Returns ``name`` if it names a cross-entropy, else raises ``ValueError``."""
  if name not in _BY_NAME:
    raise ValueError(
        f"unknown cross-entropy {name!r}; expected one of {list(NAMES)}"
    )
  return name


def cross_entropy(name: str) -> Callable[..., Array]:
  """Returns the cross-entropy ``fn(sigma, y, axis=-1) -> [...]`` called ``name``.

  Raises:
    ValueError: for a name other than ``ce, rce, cce, q``.
  """
  return _BY_NAME[check_name(name)]


def _count(mask: Array, axis_name: str | None) -> Array:
  """``Σ mask``, summed over the devices of ``axis_name`` when given."""
  count = jnp.sum(mask.astype(jnp.float32))
  return count if axis_name is None else jax.lax.psum(count, axis_name)


def _masked_mean(values: Array, mask: Array, axis_name: str | None = None
                 ) -> Array:
  """Mean of ``values`` over ``mask``; 0 when the mask is empty.

  With ``axis_name``, this device's share of the global mean (module docstring).
  """
  mask = mask.astype(values.dtype)
  return jnp.sum(values * mask) / jnp.maximum(_count(mask, axis_name), 1.0)


def partial_cross_entropy(logits: Array, labels: Array, *,
                          axis_name: str | None = None) -> Array:
  """Partial CE ``mean_{i∈S} -ln σ_i^{ȳ_i}`` over scribbled pixels (eq. 3).

  Args:
    logits: ``[B, H, W, K]`` network logits.
    labels: ``[B, H, W]`` int; 255 and 254 pixels are ignored.
    axis_name: mean over the global batch of this mapped axis (module
      docstring); None for this batch.

  Returns:
    Scalar; 0 when no pixel is scribbled.
  """
  mask = label_codes.scribbled(labels)
  log_sigma = jax.nn.log_softmax(logits, axis=-1)
  safe = jnp.where(mask, labels, 0)
  nll = -jnp.take_along_axis(log_sigma, safe[..., None], axis=-1)[..., 0]
  return _masked_mean(nll, mask, axis_name)


def self_labeling_loss(
    logits: Array,
    y: Array,
    labels: Array,
    *,
    cross_entropy: str = "cce",
    eta: float = 0.3,
    axis_name: str | None = None,
) -> Array:
  """Network loss given pseudo-labels: ``pCE + η · mean_{i unlabeled} H(σ_i, y_i)``.

  The network-side part of paper eq. 6 (the Potts term does not depend on σ).
  Means instead of sums keep the learning rate independent of the image size.

  Args:
    logits: ``[B, H, W, K]`` network logits.
    y: ``[B, H, W, K]`` pseudo-labels (no gradient flows into them).
    labels: ``[B, H, W]`` int.
    cross_entropy: name of H, see :func:`cross_entropy`.
    eta: weight of the cross-entropy term.
    axis_name: see :func:`partial_cross_entropy`.

  Returns:
    Scalar loss.
  """
  h = _BY_NAME[check_name(cross_entropy)]
  sigma = jax.nn.softmax(logits, axis=-1)
  unary = h(sigma, jax.lax.stop_gradient(y))
  return partial_cross_entropy(logits, labels, axis_name=axis_name) + (
      eta * _masked_mean(unary, label_codes.unlabeled(labels), axis_name))


def entropy(logits: Array) -> Array:
  """Shannon entropy ``-Σ σ ln σ`` of ``softmax(logits)``. ``[..., K] -> [...]``."""
  log_sigma = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.sum(jnp.exp(log_sigma) * log_sigma, axis=-1)


def gradient_descent_loss(
    logits: Array,
    image: Array,
    labels: Array,
    *,
    relaxation: str = "cd",
    neighborhood: str = "nn4",
    eta: float = 0.3,
    lam: float = 6.0,
    sigma_rgb: float = 9.0,
    axis_name: str | None = None,
    sigma_xy: float = 100.0,
    scale_factor: float = 1.0,
    lattice_capacity: int | None = None,
) -> Array:
  """Regularised loss of paper eq. 4, optimised directly by the network.

  ``pCE + η · mean_{i unlabeled} H(σ_i) + λ · Σ_{ij} w_ij P(σ_i, σ_j) / #pairs``,
  with H the Shannon entropy and ``#pairs`` the number of valid grid pairs;
  for ``dense``, the ordered pairs ``i ≠ j`` of valid pixels of each image
  (``Σ_b V_b (V_b - 1)``, V_b its valid pixels), the sum by permutohedral
  filtering (:mod:`potts_jax.bilateral`, ``bl`` and ``q`` only).

  Args:
    logits: ``[B, H, W, K]`` network logits.
    image: ``[B, H, W, 3]`` RGB in 0..255.
    labels: ``[B, H, W]`` int.
    relaxation: Potts relaxation name.
    neighborhood: ``nn4``, ``nn8`` or ``dense``.
    eta, lam, sigma_rgb: weights and colour bandwidth.
    axis_name: see :func:`partial_cross_entropy` (pairs counted globally too).
    sigma_xy: spatial bandwidth of ``dense`` in pixels.
    scale_factor: static downscaling of ``dense``
      (:func:`potts_jax.bilateral.prepare`).
    lattice_capacity: static lattice slots per image of ``dense`` (``capacity``
      of :func:`potts_jax.bilateral.prepare`); None is the bound 6N.

  Returns:
    Scalar loss.
  """
  sigma = jax.nn.softmax(logits, axis=-1)
  if neighborhoods.check_neighborhood(neighborhood) == "dense":
    graph = bilateral.prepare(
        jax.lax.stop_gradient(image), labels, sigma_xy=sigma_xy,
        sigma_rgb=sigma_rgb, scale_factor=scale_factor,
        capacity=lattice_capacity)
    if lattice_capacity is not None:  # prepare checks only outside jit.
      bilateral.check_num_points(graph.lattice.num_points, lattice_capacity,
                                 graph.mask[0].size)
    potts_sum = jnp.sum(bilateral.dense_energy(sigma, graph, relaxation))
    valid = jnp.sum(label_codes.valid(labels).astype(jnp.float32), (1, 2))
    num_pairs = jnp.sum(valid * (valid - 1.0))
    if axis_name is not None:
      num_pairs = jax.lax.psum(num_pairs, axis_name)
  else:
    weights = neighborhoods.affinities(
        image, labels, neighborhood=neighborhood, sigma_rgb=sigma_rgb
    )
    potts_sum = jnp.sum(neighborhoods.grid_energy(
        sigma, weights, potts.relaxation(relaxation)))
    num_pairs = _count(neighborhoods.pair_mask(labels, neighborhood),
                       axis_name)
  return (
      partial_cross_entropy(logits, labels, axis_name=axis_name)
      + eta * _masked_mean(entropy(logits), label_codes.unlabeled(labels),
                           axis_name)
      + lam * potts_sum / jnp.maximum(num_pairs, 1.0)
  )
