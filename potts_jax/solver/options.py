"""The solver's two API objects: what is minimised and how.

:class:`EnergyParams` holds the parameters of the energy (paper eq. 6 for
fixed σ)::

    E(y) = η Σ_{i valid, unlabeled} H(σ_i, y_i) + λ Σ_{ij∈N} w_ij P(y_i, y_j)

and :class:`SolverOptions` those of its minimisation (Appendix B: 200 steps
of 0.075 on the logits). Both are frozen dataclasses registered as pytrees:
names and sizes are static (changing one compiles again), numbers are traced
(changing η, λ, σ or a step size never retraces). Every default of the
solver is written here once; a config section maps onto them in one line,
``EnergyParams(**config.energy)``, ``SolverOptions(**config.solver)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax


def _pytree(data: tuple[str, ...]):
  """Registers a dataclass as a pytree whose ``data`` fields are leaves."""
  def register(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(
        cls, data_fields=list(data),
        meta_fields=[n for n in names if n not in data])
  return register


@_pytree(data=("eta", "lam", "sigma_rgb", "sigma_xy"))
@dataclasses.dataclass(frozen=True)
class EnergyParams:
  """The energy ``E(y)`` the solver minimises (the paper's VOC values).

  Attributes:
    relaxation: the Potts relaxation P (:data:`potts_jax.potts.NAMES`).
    cross_entropy: H(σ, y) (:data:`potts_jax.losses.NAMES`).
    neighborhood: ``nn4``, ``nn8`` or ``dense`` (relaxations ``bl``, ``q``).
    eta: η, weight of H per unlabeled pixel.
    lam: λ, weight of P per unordered pair ``{i, j}`` (every neighbourhood).
    sigma_rgb: colour bandwidth of ``w_ij = exp(-‖I_i - I_j‖² / 2σ_rgb²)``,
      RGB in 0..255.
    sigma_xy: spatial bandwidth of ``dense`` in pixels.
    scale_factor: ``dense`` filters at this fraction of the size (static).
    lattice_capacity: lattice slots per image of ``dense`` (static); None or
      0 is the bound ``6HW`` that never overflows.
  """

  relaxation: str = "cd"
  cross_entropy: str = "cce"
  neighborhood: str = "nn4"
  eta: Any = 0.3
  lam: Any = 6.0
  sigma_rgb: Any = 9.0
  sigma_xy: Any = 100.0
  scale_factor: float = 1.0
  lattice_capacity: int | None = None


@_pytree(data=("step_size", "adam_step_size", "adam_decay",
               "mirror_step_size", "momentum"))
@dataclasses.dataclass(frozen=True)
class SolverOptions:
  """How ``E(y)`` is minimised (:mod:`potts_jax.solver.updates`).

  Attributes:
    method: ``gd`` (the paper's: plain descent on the logits, step
      ``step_size``), ``adam`` (optax.adam's update on the logits, first step
      ``adam_step_size``, last ``adam_step_size * adam_decay``), ``optax``
      (``optimizer`` on the logits), ``mirror`` / ``mirror_momentum``
      (exponentiated gradient on ``y``, step ``mirror_step_size``, heavy-ball
      ``momentum``; grid neighbourhoods).
    num_steps: number of steps (static).
    step_size: step of ``gd`` on the logits.
    adam_step_size: first step of ``adam``.
    adam_decay: ``adam``'s last step over its first (geometric in between).
    mirror_step_size: step of the mirror methods.
    momentum: heavy-ball ``β`` of ``mirror_momentum``.
    warm_start: ``None`` (or ``""``), or ``"coarse"``: start from
      ``warm_start_steps`` steps on the 2x2-pooled problem (grids).
    warm_start_steps: number of coarse steps (static).
    kernel: ``auto``, ``xla`` or ``native``: which loop runs ``gd`` and
      ``adam`` on a grid on the CPU backend (:mod:`potts_jax.solver.native`;
      ``auto`` takes the native loop from
      :data:`potts_jax.solver.native.MIN_CLASSES` classes where it could be
      built). Other backends always run the XLA loop.
    optimizer: the optax transformation of ``method="optax"`` (static: build
      it once, as a new object compiles again).
  """

  method: str = "gd"
  num_steps: int = 200
  step_size: Any = 0.075
  adam_step_size: Any = 0.1
  adam_decay: Any = 1.0
  mirror_step_size: Any = 0.03
  momentum: Any = 0.8
  warm_start: str | None = None
  warm_start_steps: int = 25
  kernel: str = "auto"
  optimizer: optax.GradientTransformation | None = None


ENERGY_FIELDS = tuple(f.name for f in dataclasses.fields(EnergyParams))
SOLVER_FIELDS = tuple(f.name for f in dataclasses.fields(SolverOptions))


def with_overrides(energy: EnergyParams | None, options: SolverOptions | None,
                   overrides: dict[str, Any]
                   ) -> tuple[EnergyParams, SolverOptions]:
  """``energy`` and ``options`` (defaults if None) with keyword overrides.

  The keywords of :func:`potts_jax.solver.solve` are shorthand for fields of
  the two objects: ``solve(..., lam=12)`` is ``solve(...,
  energy=EnergyParams(lam=12))``.

  Raises:
    TypeError: a keyword that is no field of either object.
  """
  energy = EnergyParams() if energy is None else energy
  options = SolverOptions() if options is None else options
  unknown = sorted(set(overrides) - set(ENERGY_FIELDS) - set(SOLVER_FIELDS))
  if unknown:
    raise TypeError(f"unknown solver option(s) {unknown}; EnergyParams "
                    f"fields: {list(ENERGY_FIELDS)}, SolverOptions fields: "
                    f"{list(SOLVER_FIELDS)}")
  energy = dataclasses.replace(
      energy, **{k: v for k, v in overrides.items() if k in ENERGY_FIELDS})
  options = dataclasses.replace(
      options, **{k: v for k, v in overrides.items() if k in SOLVER_FIELDS})
  return energy, options
