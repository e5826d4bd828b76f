"""The solver's public functions: pseudo-labels for a batch, and their energy.

For one batch, with the network output ``σ = softmax(logits)`` fixed, the
pseudo-labels minimise (a sum over pixels and unordered pairs, not a mean)::

    E(y) = η Σ_{i valid, unlabeled} H(σ_i, y_i) + λ Σ_{ij∈N} w_ij P(y_i, y_j)

with ``y_i`` pinned to the one-hot of its scribble on labeled pixels
(:class:`~potts_jax.solver.options.EnergyParams`). The paper's solver
(Appendix B, :mod:`potts_jax.solver.reference` as plainly as the paper)
optimises logits ``l``, initialised from the network logits, by ``num_steps``
steps of: ``y = softmax(l)``; ``y = where(labeled, onehot, y)`` (the scribble
reset); ``l -= step_size * ∂E/∂l``
(:class:`~potts_jax.solver.options.SolverOptions`).

How it is computed, with the same iterates as the reference loop:

* ``∂E/∂l`` is analytic (:mod:`potts_jax.solver.objective`): every Potts
  relaxation is a function of ``s = y_iᵀy_j, a = ‖y_i‖², b = ‖y_j‖²``, so the
  pair gradient is ``f_s y_j + 2 f_a y_i`` with scalar partials from a ``vjp``
  on ``[B, H, W]`` planes, and the softmax Jacobian ``y ⊙ (g - yᵀg)`` takes
  ``yᵀg`` from the same scalars.
* Plain descent runs on ``y`` itself (:mod:`potts_jax.solver.updates`):
  ``l ← l - t∂E/∂l`` is exactly ``y ← y ⊙ exp(-t∂E/∂l) / Σ_k(...)`` because
  ``softmax(l + δ) ∝ softmax(l) ⊙ exp(δ)``; labeled pixels stay one-hot
  because their step is zero. The other update rules (``adam``, ``optax``,
  ``mirror``, ``mirror_momentum``) live beside it.
* ``neighborhood="dense"`` (:mod:`potts_jax.dense.bilateral`, ``bl`` and
  ``q`` only) runs the reference loop on the logits: the lattice is built
  once per call, and the dense Potts gradient comes from one permutohedral
  filtering per step.
* On the CPU backend, ``gd`` and ``adam`` on a grid can run as one native
  call (:mod:`potts_jax.solver.native`, ``kernel``); elsewhere the loops are
  the ``lax.fori_loop`` of :mod:`potts_jax.solver.loop`.
* ``warm_start="coarse"`` first runs ``warm_start_steps`` steps on the
  2x2-pooled problem (:mod:`potts_jax.solver.warm_start`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from potts_jax.dense import bilateral
from potts_jax.solver import checks
from potts_jax.solver import loop
from potts_jax.solver import objective
from potts_jax.solver.options import EnergyParams
from potts_jax.solver.options import SolverOptions
from potts_jax.solver.options import with_overrides

Array = jnp.ndarray

validate_inputs = checks.validate_inputs
KERNELS = checks.KERNELS


def _run(logits, image, labels, energy, options, record):
  energy, options = checks.check(energy, options)
  validate_inputs(logits, image, labels)
  y, energies, points = loop.solve_batch(logits, image, labels, energy,
                                         options, record=record)
  if points is not None and energy.lattice_capacity is not None:
    bilateral.check_num_points(points, energy.lattice_capacity,
                               np.prod(np.shape(labels)[1:]))
  return y, energies


def solve(logits: Array, image: Array, labels: Array,
          energy: EnergyParams | None = None,
          options: SolverOptions | None = None, **overrides) -> Array:
  """Soft pseudo-labels for one batch (paper Appendix B).

  Jitted: changing a number of ``energy`` or ``options`` (η, λ, σ, a step
  size) does not retrace; changing a name, ``num_steps``, ``method``, the
  warm start or the optimizer object does. Usable inside ``jit``, ``vmap``
  and ``shard_map`` (it never communicates).

  Args:
    logits: ``[B, H, W, K]`` network logits; also the solver's initialisation.
    image: ``[B, H, W, C]`` RGB in 0..255.
    labels: ``[B, H, W]`` int: class, 255 unlabeled, 254 padding.
    energy: what is minimised (:class:`EnergyParams`; its defaults are the
      paper's VOC values).
    options: how (:class:`SolverOptions`; defaults: the paper's 200 plain
      descent steps of 0.075).
    **overrides: fields of either object by name, a shorthand:
      ``solve(l, i, s, lam=12, num_steps=50)``.

  Returns:
    ``[B, H, W, K]`` float32 pseudo-labels on the simplex, scribbled pixels
    one-hot, no gradient.
  """
  energy, options = with_overrides(energy, options, overrides)
  return _run(logits, image, labels, energy, options, record=False)[0]


def solve_with_energies(logits: Array, image: Array, labels: Array,
                        energy: EnergyParams | None = None,
                        options: SolverOptions | None = None, **overrides):
  """Like :func:`solve`, also returning the energy after every step.

  Returns:
    ``(y, energies)``: ``y`` ``[B, H, W, K]`` and ``energies``
    ``[num_steps + 1, B]``, ``energies[t]`` the energy after ``t`` steps
    (with a warm start, ``t`` fine steps: ``energies[0]`` is the energy of
    the warm start).
  """
  energy, options = with_overrides(energy, options, overrides)
  return _run(logits, image, labels, energy, options, record=True)


def energy(y: Array, logits: Array, image: Array, labels: Array,
           energy: EnergyParams | None = None,
           options: SolverOptions | None = None, **overrides) -> Array:
  """E(y) per image, the objective :func:`solve` minimises.

  ``η Σ_{i valid, unlabeled} H(σ_i, y_i) + λ Σ_{ij} w_ij P(y_i, y_j)`` with
  ``σ = softmax(logits)``. ``y`` is taken as given (no scribble reset).
  ``options`` and the overrides of its fields are accepted and ignored, so
  that one set of arguments serves both functions.

  Returns:
    ``[B]`` float32.
  """
  params, _ = with_overrides(energy, options, overrides)
  params = checks.check_energy(params)
  validate_inputs(logits, image, labels)
  if np.shape(y) != np.shape(logits):
    raise ValueError(
        f"y must have the shape of logits {np.shape(logits)}; got {np.shape(y)}"
    )
  return _energy(jnp.asarray(y, jnp.float32), jnp.asarray(logits), image,
                 labels, params)


@jax.jit
def _energy(y, logits, image, labels, params):
  prob = objective.build_problem(logits, image, labels, params.neighborhood,
                                 params.sigma_rgb, params.eta, params.lam)
  if params.neighborhood == "dense":
    graph = bilateral.prepare(image, labels, sigma_xy=params.sigma_xy,
                              sigma_rgb=params.sigma_rgb,
                              scale_factor=params.scale_factor,
                              capacity=params.lattice_capacity)
    return objective.dense_energy_value(y, prob, graph, params.lam,
                                        params.relaxation,
                                        params.cross_entropy)
  return objective.energy_value(y, prob, params.relaxation,
                                params.cross_entropy)


def hard_labels(y: Array) -> Array:
  """``onehot(argmax y)``: hard pseudo-labels for hard self-labeling.

  Args:
    y: ``[..., K]`` soft labels.

  Returns:
    ``[..., K]`` float32 one-hot.
  """
  return jax.nn.one_hot(jnp.argmax(y, axis=-1), y.shape[-1], dtype=jnp.float32)
