"""The soft pseudo-label solver (paper Appendix B) and its energy.

For one batch, with the network output ``σ = softmax(logits)`` fixed, the
pseudo-labels minimise (ARCHITECTURE §3, a sum, not a mean)::

    E(y) = η Σ_{i valid, unlabeled} H(σ_i, y_i) + λ Σ_{(i,j)∈N} w_ij P(y_i, y_j)

with ``y_i`` pinned to the one-hot of its scribble on labeled pixels. The solver
optimises logits ``l`` (initialised from the network logits) by ``num_steps``
steps of: ``y = softmax(l)``; ``y = where(labeled, onehot, y)`` (the scribble
reset); ``l -= step_size * ∂E/∂l``.

How it is computed (same iterates as the textbook autodiff loop, measured in
``benchmarks/solver.py``):

* ``∂E/∂l`` is analytic: every Potts relaxation is a function of
  ``s = y_iᵀy_j, a = ‖y_i‖², b = ‖y_j‖²`` (:data:`potts_jax.potts.STATS`), so
  the pair gradient is ``f_s y_j + 2 f_a y_i`` with scalar partials from a
  ``vjp`` on ``[B, H, W]`` planes (:func:`neighborhoods.potts_terms`), and the
  softmax Jacobian ``y ⊙ (g - yᵀg)`` takes ``yᵀg`` from the same scalars.
* Plain descent runs on ``y`` itself: ``l ← l - t∂E/∂l`` is exactly
  ``y ← y ⊙ exp(-t∂E/∂l) / Σ_k(...)`` because ``softmax(l + δ) ∝ softmax(l) ⊙
  exp(δ)``. One ``exp`` per element and step, no softmax max/sum passes, and
  labeled pixels stay one-hot because their step is zero. With an optax
  ``optimizer`` the loop keeps the logits and their optimizer state instead.
* ``neighborhood="dense"`` (:mod:`potts_jax.bilateral`, ``bl`` and ``q``
  only) runs the textbook loop on the logits in XLA: the lattice is built
  once per call, and each step takes ``∂E/∂l`` by autodiff through the
  softmax, the reset and the unary term, with the dense Potts gradient from
  one permutohedral filtering (its ``custom_vjp``). Its sum runs over the
  unordered pairs ``{i, j}``, ``i ≠ j``, each counted once, as on a grid
  (:mod:`potts_jax.neighborhoods`), so λ has one meaning on every
  neighbourhood; a pixel has far more (weighted) dense partners than grid
  neighbours, so a dense λ is far smaller than a grid one (configs/voc.py
  derives one).
* On the CPU backend, plain descent on a grid runs as one native call
  (:mod:`potts_jax.cpu_solver`, ``native/grid_solver.cc``): the same
  formulas, one sweep over the rows of each image per step, images spread
  over threads (1.5-2.3x the XLA:CPU loop at K = 21, benchmarks/RESULTS.md;
  from K = 9 by default, as the XLA loop is faster for fewer classes), and
  so does ``method="adam"``. Other backends, the optax and mirror methods,
  :func:`solve_with_energies` and ``kernel="xla"`` use the XLA loop.
* ``method=`` selects the update (:mod:`potts_jax.updates`): ``"gd"`` (the
  above), ``"adam"`` (optax.adam's update on the logits, carried out on
  ``y`` like plain descent; grid neighbourhoods), ``"optax"`` (any
  ``optimizer`` on the logits), ``"mirror"`` and ``"mirror_momentum"``
  (exponentiated gradient on ``y``, plain or with heavy-ball momentum; XLA
  loop, grid neighbourhoods).
* ``warm_start="coarse"`` first runs ``warm_start_steps`` steps of the same
  method on the 2x2-pooled problem and starts the ``num_steps`` fine steps
  from its upsampled solution (:mod:`potts_jax.warm_start`), in the same
  jitted call.

Modules: :mod:`potts_jax.solver_checks` (input and option checks),
:mod:`potts_jax.solver_terms` (the problem, ``E(y)`` and ``∂E/∂l``),
:mod:`potts_jax.solver_loop` (the jitted loops), :mod:`potts_jax.updates`
(the update rules beside plain descent), :mod:`potts_jax.warm_start` (the
coarse-to-fine start); this module is the public API and
re-exports what callers use (:func:`validate_inputs`, :data:`KERNELS`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from potts_jax import bilateral
from potts_jax import solver_checks
from potts_jax import solver_loop
from potts_jax import solver_terms
from potts_jax import updates
from potts_jax import warm_start as warm

Array = jnp.ndarray

# Re-exported: the public checks, and the internals tests and benchmarks use.
validate_inputs = solver_checks.validate_inputs
KERNELS = solver_checks.KERNELS
_Problem = solver_terms.Problem
_build_problem = solver_terms.build_problem
_solve = solver_loop.solve_batch

# Options of solve() that energy() accepts and ignores, with their defaults.
_SOLVER_ONLY = dict(
    num_steps=200, step_size=0.075, optimizer=None, kernel="auto",
    method="gd", mirror_step_size=updates.MIRROR_STEP_SIZE,
    momentum=updates.MOMENTUM, adam_step_size=updates.ADAM_STEP_SIZE,
    adam_decay=updates.ADAM_DECAY, warm_start=None,
    warm_start_steps=warm.WARM_START_STEPS)


def _run(logits, image, labels, *, relaxation, cross_entropy, neighborhood,
         eta, lam, sigma_rgb, num_steps, step_size, optimizer, record,
         kernel="auto", sigma_xy=100.0, scale_factor=1.0,
         lattice_capacity=None, method="gd",
         mirror_step_size=updates.MIRROR_STEP_SIZE,
         momentum=updates.MOMENTUM, adam_step_size=updates.ADAM_STEP_SIZE,
         adam_decay=updates.ADAM_DECAY, warm_start=None,
         warm_start_steps=warm.WARM_START_STEPS):
  solver_checks.check_options(relaxation, cross_entropy, neighborhood,
                              num_steps, kernel)
  method = updates.check_method(method, cross_entropy, neighborhood,
                                optimizer)
  warm.check_warm_start(warm_start, warm_start_steps, neighborhood)
  validate_inputs(logits, image, labels)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  y, energies, points = solver_loop.solve_batch(
      logits, image, labels, f32(eta), f32(lam), f32(sigma_rgb), f32(step_size),
      f32(sigma_xy), f32(mirror_step_size), f32(momentum),
      f32(adam_step_size), f32(adam_decay),
      relaxation=relaxation, cross_entropy=cross_entropy,
      neighborhood=neighborhood, num_steps=int(num_steps), optimizer=optimizer,
      record=record, kernel=kernel, scale_factor=float(scale_factor),
      lattice_capacity=lattice_capacity, method=method, warm_start=warm_start,
      warm_start_steps=int(warm_start_steps) if warm_start else 0,
  )
  if points is not None and lattice_capacity is not None:
    bilateral.check_num_points(points, lattice_capacity,
                               np.prod(np.shape(labels)[1:]))
  return y, energies


def solve(
    logits: Array,
    image: Array,
    labels: Array,
    *,
    relaxation: str = "cd",
    cross_entropy: str = "cce",
    neighborhood: str = "nn4",
    eta: float = 0.3,
    lam: float = 6.0,
    sigma_rgb: float = 9.0,
    num_steps: int = 200,
    step_size: float = 0.075,
    optimizer: optax.GradientTransformation | None = None,
    kernel: str = "auto",
    sigma_xy: float = 100.0,
    scale_factor: float = 1.0,
    lattice_capacity: int | None = None,
    method: str = "gd",
    mirror_step_size: float = updates.MIRROR_STEP_SIZE,
    momentum: float = updates.MOMENTUM,
    adam_step_size: float = updates.ADAM_STEP_SIZE,
    adam_decay: float = updates.ADAM_DECAY,
    warm_start: str | None = None,
    warm_start_steps: int = warm.WARM_START_STEPS,
) -> Array:
  """Soft pseudo-labels for one batch (paper Appendix B).

  Jitted; changing ``eta``, ``lam``, ``sigma_rgb``, ``step_size``,
  ``mirror_step_size``, ``momentum``, ``adam_step_size`` or ``adam_decay``
  does not retrace, changing a name, ``num_steps``, ``method``,
  ``warm_start``, ``warm_start_steps`` or the optimizer object does. Usable
  inside ``jit``, ``vmap`` and ``shard_map`` (it never communicates).

  Args:
    logits: ``[B, H, W, K]`` network logits; also the solver's initialisation.
    image: ``[B, H, W, C]`` RGB in 0..255.
    labels: ``[B, H, W]`` int: class, 255 unlabeled, 254 padding.
    relaxation: Potts relaxation, see :func:`potts_jax.potts.relaxation`.
    cross_entropy: H, see :func:`potts_jax.losses.cross_entropy`.
    neighborhood: ``nn4``, ``nn8`` or ``dense`` (relaxations ``bl``, ``q``).
    eta: weight of the cross-entropy term.
    lam: weight of the Potts term.
    sigma_rgb: colour bandwidth of the affinities.
    num_steps: number of gradient steps (static).
    step_size: plain gradient-descent step on the logits.
    optimizer: optional optax transformation used instead of plain descent
      (``step_size`` is then ignored; build it once and reuse it, as a new
      object retraces).
    kernel: ``auto`` runs ``"gd"`` and ``"adam"`` on the CPU backend as one
      native call (:mod:`potts_jax.cpu_solver`, same iterates up to float32
      rounding) when it could be built and ``K`` is at least
      :data:`potts_jax.cpu_solver.MIN_CLASSES` (below, the XLA loop is the
      faster), and the XLA loop elsewhere; ``native`` takes the native call
      for any ``K`` on the CPU backend (ValueError where it could not be
      built); ``xla`` always runs the XLA loop.
    sigma_xy: spatial bandwidth of ``dense`` in pixels (100 on VOC).
    scale_factor: static; ``dense`` filters at this fraction of the size
      (:func:`potts_jax.bilateral.prepare`).
    lattice_capacity: static lattice slots per image for ``dense``; None is
      the bound 6HW that never overflows. An overflow raises ValueError
      outside ``jit`` (inside, the extra lattice points are dropped).
    method: the update (:mod:`potts_jax.updates`): ``"gd"`` plain descent
      on the logits with ``step_size``; ``"adam"`` optax.adam's update on
      the logits with ``adam_step_size`` and ``adam_decay`` (the
      recommended fast option, benchmarks/RESULTS.md; ``nn4``/``nn8``);
      ``"optax"`` ``optimizer`` on the logits (also selected by passing
      ``optimizer`` alone); ``"mirror"`` exponentiated gradient on ``y``
      with ``mirror_step_size``; ``"mirror_momentum"`` the same with
      heavy-ball momentum ``momentum``. The mirror methods take
      ``cross_entropy`` ``cce``, ``ce`` or ``q`` and ``nn4`` or ``nn8``, and
      always run the XLA loop.
    mirror_step_size: step ``t`` of the mirror methods.
    momentum: heavy-ball ``β`` of ``"mirror_momentum"``.
    adam_step_size: first step of ``"adam"`` on the logits.
    adam_decay: ``"adam"``'s last step is ``adam_step_size * adam_decay``
      (geometric in between; 1 keeps it constant).
    warm_start: None, or ``"coarse"``: start from ``warm_start_steps``
      steps of ``method`` on the 2x2-pooled problem
      (:mod:`potts_jax.warm_start`; ``nn4``/``nn8``).
    warm_start_steps: static number of coarse steps (each costs about a
      quarter of a fine step).

  Returns:
    ``[B, H, W, K]`` float32 pseudo-labels on the simplex, scribbled pixels
    one-hot, no gradient.
  """
  y, _ = _run(
      logits, image, labels, relaxation=relaxation, cross_entropy=cross_entropy,
      neighborhood=neighborhood, eta=eta, lam=lam, sigma_rgb=sigma_rgb,
      num_steps=num_steps, step_size=step_size, optimizer=optimizer,
      record=False, kernel=kernel, sigma_xy=sigma_xy,
      scale_factor=scale_factor, lattice_capacity=lattice_capacity,
      method=method, mirror_step_size=mirror_step_size, momentum=momentum,
      adam_step_size=adam_step_size, adam_decay=adam_decay,
      warm_start=warm_start, warm_start_steps=warm_start_steps,
  )
  return y


def solve_with_energies(logits: Array, image: Array, labels: Array, **options):
  """Like :func:`solve`, also returning the energy after every step.

  Returns:
    ``(y, energies)``: ``y`` ``[B, H, W, K]`` and ``energies``
    ``[num_steps + 1, B]``, ``energies[t]`` the energy after ``t`` steps
    (with ``warm_start``, ``t`` fine steps: ``energies[0]`` is the energy of
    the warm start).
  """
  full = dict(relaxation="cd", cross_entropy="cce", neighborhood="nn4",
              eta=0.3, lam=6.0, sigma_rgb=9.0, sigma_xy=100.0,
              scale_factor=1.0, lattice_capacity=None, **_SOLVER_ONLY)
  unknown = set(options) - set(full)
  if unknown:
    raise TypeError(f"unknown solver option(s) {sorted(unknown)}")
  full.update(options)
  return _run(logits, image, labels, record=True, **full)


def energy(
    y: Array,
    logits: Array,
    image: Array,
    labels: Array,
    *,
    relaxation: str = "cd",
    cross_entropy: str = "cce",
    neighborhood: str = "nn4",
    eta: float = 0.3,
    lam: float = 6.0,
    sigma_rgb: float = 9.0,
    sigma_xy: float = 100.0,
    scale_factor: float = 1.0,
    lattice_capacity: int | None = None,
    **unused: Any,
) -> Array:
  """E(y) per image, the objective :func:`solve` minimises.

  ``η Σ_{i valid, unlabeled} H(σ_i, y_i) + λ Σ_{(i,j)} w_ij P(y_i, y_j)`` with
  ``σ = softmax(logits)``. ``y`` is taken as given (no scribble reset).
  Solver-only options (``num_steps``, ``step_size``, ``optimizer``,
  ``kernel``, ``method`` and its step sizes, ``warm_start``, ...) are
  accepted and ignored so that one options dict serves both functions. ``sigma_xy``, ``scale_factor`` and ``lattice_capacity`` are
  those of ``neighborhood="dense"`` (see :func:`solve`).

  Returns:
    ``[B]`` float32.
  """
  extra = set(unused) - set(_SOLVER_ONLY)
  if extra:
    raise TypeError(f"unknown energy option(s) {sorted(extra)}")
  solver_checks.check_names(relaxation, cross_entropy, neighborhood)
  validate_inputs(logits, image, labels)
  if np.shape(y) != np.shape(logits):
    raise ValueError(
        f"y must have the shape of logits {np.shape(logits)}; got {np.shape(y)}"
    )
  prob = solver_terms.build_problem(jnp.asarray(logits), image, labels,
                                    neighborhood, sigma_rgb, eta, lam)
  if neighborhood == "dense":
    graph = bilateral.prepare(image, labels, sigma_xy=sigma_xy,
                              sigma_rgb=sigma_rgb, scale_factor=scale_factor,
                              capacity=lattice_capacity)
    return solver_terms.dense_energy_value(
        jnp.asarray(y, jnp.float32), prob, graph,
        jnp.asarray(lam, jnp.float32), relaxation, cross_entropy)
  return solver_terms.energy_value(
      jnp.asarray(y, jnp.float32), prob, relaxation, cross_entropy
  )


def hard_labels(y: Array) -> Array:
  """``onehot(argmax y)``: hard pseudo-labels for hard self-labeling.

  Args:
    y: ``[..., K]`` soft labels.

  Returns:
    ``[..., K]`` float32 one-hot.
  """
  return jax.nn.one_hot(jnp.argmax(y, axis=-1), y.shape[-1], dtype=jnp.float32)
