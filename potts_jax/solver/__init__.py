"""The soft pseudo-label solver of the paper (Appendix B).

Public API: the two objects of :mod:`~potts_jax.solver.options`,
:class:`EnergyParams` (what is minimised) and :class:`SolverOptions` (how),
and the functions of :mod:`~potts_jax.solver.api` that take them,
:func:`solve`, :func:`energy`, :func:`solve_with_energies`, and
:func:`hard_labels`, :func:`validate_inputs`.
Read one step in :mod:`~potts_jax.solver.reference` (the textbook loop), then
:mod:`~potts_jax.solver.objective` (E(y) and its analytic gradient),
:mod:`~potts_jax.solver.updates` (the update rules) and
:mod:`~potts_jax.solver.loop` (the jitted loops). :mod:`~potts_jax.solver.
warm_start` starts from a coarse solve, :mod:`~potts_jax.solver.checks`
validates inputs and options, :mod:`~potts_jax.solver.native` is the CPU
kernel.
"""

from potts_jax.solver.api import KERNELS
from potts_jax.solver.api import energy
from potts_jax.solver.api import hard_labels
from potts_jax.solver.api import solve
from potts_jax.solver.api import solve_with_energies
from potts_jax.solver.api import validate_inputs
from potts_jax.solver.options import EnergyParams
from potts_jax.solver.options import SolverOptions

__all__ = ["EnergyParams", "KERNELS", "SolverOptions", "energy",
           "hard_labels", "solve", "solve_with_energies", "validate_inputs"]
