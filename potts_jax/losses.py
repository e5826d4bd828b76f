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

Loss normalisation (``config.loss.normalization``, :func:`normalization_scale`):
the losses here are pixel means (``pixel_mean``). The paper's code lineage
(rloss / pytorch-deeplab-xception, ``SegmentationLosses(batch_average=True)``
and the DenseCRF loss) divides every term once more by the batch size B
(``batch_mean``); its learning rates (0.007, 0.0007) are for that loss. The
train step multiplies the whole loss by :func:`normalization_scale` of the
*global* batch size, so the loss is the same on any number of devices.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from potts_jax.dense import bilateral
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


NORMALIZATIONS = ("pixel_mean", "batch_mean")


def normalization_scale(normalization: str, batch_size: int) -> float:
  """The factor of the whole loss under ``normalization`` (module docstring).

  Args:
    normalization: ``pixel_mean`` (the losses as they are: means over the
      counted pixels of the global batch) or ``batch_mean`` (the
      lineage's: those means divided by the global batch size).
    batch_size: the global batch size B (images, all devices together).

  Returns:
    ``1.0`` for ``pixel_mean``, ``1 / B`` for ``batch_mean``.

  Raises:
    ValueError: for another name or ``batch_size < 1``.
  """
  if normalization not in NORMALIZATIONS:
    raise ValueError(f"unknown loss normalization {normalization!r}; expected "
                     f"one of {list(NORMALIZATIONS)}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  return 1.0 if normalization == "pixel_mean" else 1.0 / batch_size


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


def regularized_loss(
    logits: Array,
    image: Array,
    labels: Array,
    energy: Any,
    *,
    axis_name: str | None = None,
) -> Array:
  """The regularised loss of paper eq. 4, optimised directly by the network.

  ``pCE + (η Σ_{i∈U} H(σ_i) + λ Σ_{ij} w_ij P(σ_i, σ_j)) / |U|``: the partial
  cross-entropy (mean over the scribbled pixels, as
  :func:`partial_cross_entropy`) plus the solver's objective at ``y = σ``
  divided by ``|U|``, the number of valid unlabeled pixels (label 255) of the
  global batch. H is the Shannon entropy, so the η term is the mean entropy
  over U (the η term of :func:`self_labeling_loss` at ``y = σ`` with ``ce``).
  The Potts term is the sum over the pairs of the neighbourhood exactly as
  the solver's (:func:`potts_jax.solver.energy`): for ``nn4`` / ``nn8`` the
  grid pairs of valid pixels (:func:`potts_jax.neighborhoods.grid_energy`);
  for ``dense``, :func:`potts_jax.dense.bilateral.dense_energy` (its pair
  convention; ``bl`` and ``q`` only). Hence, for the same ``λ``, σ and
  batch::

    λ Σ_{ij} w_ij P(σ_i, σ_j) / |U|  =  Σ_b potts_b(σ) / |U|

  with ``potts_b`` the Potts term of ``solver.energy`` of image b (its
  ``λ Σ w P`` part), and, for ``cross_entropy="ce"``, the loss is
  ``pCE + Σ_b solver.energy(σ, logits)_b / |U|``. The constant factor between
  this loss's Potts part and the solver's Potts term is ``1 / |U|`` (``|U|``
  taken as at least 1).

  Args:
    logits: ``[B, H, W, K]`` network logits.
    image: ``[B, H, W, 3]`` RGB in 0..255.
    labels: ``[B, H, W]`` int.
    energy: the energy's parameters, a
      :class:`potts_jax.solver.EnergyParams` (relaxation, neighbourhood, η,
      λ, σ_rgb, and σ_xy, scale factor, lattice capacity of ``dense``; its
      cross-entropy is not used: the η term is the entropy H(σ)).
    axis_name: see :func:`partial_cross_entropy` (``|U|`` counted globally
      too, so the loss is that of the global batch).

  Returns:
    Scalar loss.
  """
  e = energy
  sigma = jax.nn.softmax(logits, axis=-1)
  capacity = e.lattice_capacity or None
  if neighborhoods.check_neighborhood(e.neighborhood) == "dense":
    graph = bilateral.prepare(
        jax.lax.stop_gradient(image), labels, sigma_xy=e.sigma_xy,
        sigma_rgb=e.sigma_rgb, scale_factor=e.scale_factor, capacity=capacity)
    if capacity is not None:  # prepare checks only outside jit.
      bilateral.check_num_points(graph.lattice.num_points, capacity,
                                 graph.mask[0].size)
    potts_sum = jnp.sum(bilateral.dense_energy(sigma, graph, e.relaxation))
  else:
    weights = neighborhoods.affinities(
        image, labels, neighborhood=e.neighborhood, sigma_rgb=e.sigma_rgb
    )
    potts_sum = jnp.sum(neighborhoods.grid_energy(
        sigma, weights, potts.relaxation(e.relaxation)))
  unlabeled = label_codes.unlabeled(labels)
  num_unlabeled = jnp.maximum(_count(unlabeled, axis_name), 1.0)
  return (
      partial_cross_entropy(logits, labels, axis_name=axis_name)
      + (e.eta * jnp.sum(entropy(logits) * unlabeled.astype(logits.dtype))
         + e.lam * potts_sum) / num_unlabeled
  )
