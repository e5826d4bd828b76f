"""The textbook solver of Appendix B, as plainly as the paper: the definition.

For one batch, with the network's prediction ``σ = softmax(logits)`` fixed,
the pseudo-labels minimise (paper eq. 6 at fixed σ)::

    E(y) = η Σ_{i valid, unlabeled} H(σ_i, y_i) + λ Σ_{{i,j}∈N} w_ij P(y_i, y_j)

with ``H`` a cross-entropy of :mod:`potts_jax.losses`, ``P`` a Potts
relaxation of :mod:`potts_jax.potts` and the grid pairs ``{i, j}`` (each
counted once) and their affinities ``w_ij`` of :mod:`potts_jax.neighborhoods`.
Appendix B optimises logits ``l`` in place of ``y``, initialised from the
network's logits, by ``num_steps`` steps of::

    y = softmax(l)
    y = where(labeled, onehot, y)        # the scribble reset
    l = l - step_size * ∂E(y)/∂l         # jax.grad through reset and softmax

and returns ``y`` of the last ``l``. This module is that loop and nothing
else. It is slow (autodiff through every pair array), and it is the
definition the fast loops are tested against: the ``lax.fori_loop`` of
:mod:`potts_jax.solver.loop` must compute its iterates up to float32
rounding (tests/test_reference.py, tests/test_solver.py), and the native CPU
loop of :mod:`potts_jax.solver.native` those of the ``fori_loop``
(tests/test_cpu_solver.py). benchmarks/solver.py times it as the baseline.

One step reads four files: this one, :func:`potts_jax.potts.relaxation`,
:func:`potts_jax.losses.cross_entropy` and
:func:`potts_jax.neighborhoods.affinities` / ``shift``. Grid neighbourhoods
only (``nn4``, ``nn8``); label codes: a class ``0..K-1`` on scribbled pixels,
255 unlabeled, 254 padding (in no term).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from potts_jax import losses
from potts_jax import neighborhoods
from potts_jax import potts
from potts_jax.labels import PADDING
from potts_jax.labels import UNLABELED
from potts_jax.solver.options import EnergyParams


def _energy(y: jax.Array, sigma: jax.Array, weights: jax.Array,
            labels: jax.Array, params: EnergyParams) -> jax.Array:
  """E(y) ``[B]`` from the fixed data ``σ`` and ``w``.

  Args:
    y: ``[B, H, W, K]`` pseudo-labels.
    sigma: ``[B, H, W, K]`` the network's prediction.
    weights: ``[B, H, W, D]`` affinities, ``weights[..., d]`` of the pair
      ``(i, i + OFFSETS[neighborhood][d])``, 0 where there is no pair.
    labels: ``[B, H, W]`` int label codes.
    params: names and η, λ.
  """
  h = losses.cross_entropy(params.cross_entropy)  # H(σ, y) -> [B, H, W]
  p = potts.relaxation(params.relaxation)  # P(y_i, y_j) -> [B, H, W]
  unlabeled = labels == UNLABELED  # valid pixels without a scribble
  unary = jnp.sum(jnp.where(unlabeled, h(sigma, y), 0.0), axis=(1, 2))
  pairs = 0.0
  for d, (dy, dx) in enumerate(neighborhoods.OFFSETS[params.neighborhood]):
    y_j = neighborhoods.shift(y, dy, dx)  # y at i + (dy, dx), 0 outside
    pairs = pairs + jnp.sum(weights[..., d] * p(y, y_j), axis=(1, 2))
  return params.eta * unary + params.lam * pairs


def _affinities(image: jax.Array, labels: jax.Array,
                params: EnergyParams) -> jax.Array:
  """``w_ij = exp(-‖I_i - I_j‖² / 2σ_rgb²)`` ``[B, H, W, D]`` (÷√2 diagonal)."""
  neighborhoods.check_name(params.neighborhood)  # nn4 or nn8
  return neighborhoods.affinities(image, labels,
                                  neighborhood=params.neighborhood,
                                  sigma_rgb=params.sigma_rgb)


def energy(y: jax.Array, logits: jax.Array, image: jax.Array,
           labels: jax.Array, energy: EnergyParams) -> jax.Array:
  """E(y) per image, ``y`` taken as given (no scribble reset).

  Args:
    y: ``[B, H, W, K]`` pseudo-labels.
    logits: ``[B, H, W, K]`` network logits (``σ = softmax(logits)``).
    image: ``[B, H, W, C]`` RGB in 0..255.
    labels: ``[B, H, W]`` int: class, 255 unlabeled, 254 padding.
    energy: the energy's names and numbers (``nn4`` or ``nn8``).

  Returns:
    ``[B]``: ``η Σ H(σ_i, y_i) + λ Σ w_ij P(y_i, y_j)``.
  """
  sigma = jax.nn.softmax(logits, axis=-1)
  weights = _affinities(image, labels, energy)
  return _energy(y, sigma, weights, labels, energy)


@jax.jit
def solve(logits: jax.Array, image: jax.Array, labels: jax.Array,
          energy: EnergyParams, num_steps: int | jax.Array = 200,
          step_size: float | jax.Array = 0.075) -> jax.Array:
  """Soft pseudo-labels by the textbook loop of Appendix B.

  Jitted; ``num_steps`` and ``step_size`` are traced (changing them does not
  compile again), the names of ``energy`` are static.

  Args:
    logits: ``[B, H, W, K]`` network logits: ``σ`` and the initial ``l``.
    image: ``[B, H, W, C]`` RGB in 0..255.
    labels: ``[B, H, W]`` int: class, 255 unlabeled, 254 padding.
    energy: the energy's names and numbers (``nn4`` or ``nn8``).
    num_steps: number of steps (the paper's 200).
    step_size: the step on the logits (the paper's 0.075).

  Returns:
    ``[B, H, W, K]`` pseudo-labels, scribbled pixels one-hot, in the dtype
    of ``logits``.
  """
  sigma = jax.nn.softmax(logits, axis=-1)  # fixed
  weights = _affinities(image, labels, energy)  # fixed
  labeled = (labels != UNLABELED) & (labels != PADDING)
  onehot = jax.nn.one_hot(jnp.where(labeled, labels, 0), logits.shape[-1],
                          dtype=sigma.dtype)

  def to_y(l):
    y = jax.nn.softmax(l, axis=-1)
    return jnp.where(labeled[..., None], onehot, y)  # the scribble reset

  def total_energy(l):  # images are independent: the sum's gradient is theirs
    return jnp.sum(_energy(to_y(l), sigma, weights, labels, energy))

  def step(_, l):
    return l - step_size * jax.grad(total_energy)(l)

  return to_y(jax.lax.fori_loop(0, num_steps, step, logits))
