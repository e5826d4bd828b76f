"""Input and option checks of the pseudo-label solver (:mod:`potts_jax.solver`).

Every check raises ``ValueError`` naming the offending shape, value or name,
before anything is traced.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from potts_jax.dense import bilateral
from potts_jax import labels as label_codes
from potts_jax import losses
from potts_jax import neighborhoods
from potts_jax import potts
from potts_jax.solver import native
from potts_jax.solver import updates
from potts_jax.solver import warm_start as warm

#: The loops :func:`potts_jax.solver.solve` can run (``kernel=``).
KERNELS = ("auto", "xla", "native")


def validate_inputs(logits: Any, image: Any, labels: Any) -> None:
  """Raises ``ValueError`` naming the offending shape or label value.

  Shapes are always checked; label values only when ``labels`` is concrete
  (inside ``jit`` the caller's data pipeline is responsible for them).

  Args:
    logits: ``[B, H, W, K]``.
    image: ``[B, H, W, C]``.
    labels: ``[B, H, W]`` int with values in ``0..K-1``, 254 or 255.
  """
  if np.ndim(logits) != 4:
    raise ValueError(
        f"logits must be [B, H, W, K]; got shape {np.shape(logits)}"
    )
  b, h, w, k = np.shape(logits)
  if np.ndim(image) != 4 or tuple(np.shape(image)[:3]) != (b, h, w):
    raise ValueError(
        f"image must be [B, H, W, C] = [{b}, {h}, {w}, C] to match logits "
        f"{np.shape(logits)}; got shape {np.shape(image)}"
    )
  if tuple(np.shape(labels)) != (b, h, w):
    raise ValueError(
        f"labels must be [B, H, W] = [{b}, {h}, {w}] to match logits "
        f"{np.shape(logits)}; got shape {np.shape(labels)}"
    )
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(
        f"labels must be integers; got dtype {jnp.result_type(labels)}"
    )
  if isinstance(labels, jax.core.Tracer):
    return
  values = np.unique(np.asarray(labels))
  bad = values[
      ((values < 0) | (values >= k))
      & (values != label_codes.PADDING)
      & (values != label_codes.UNLABELED)
  ]
  if bad.size:
    raise ValueError(
        f"labels hold value(s) {bad[:10].tolist()}; expected a class in "
        f"0..{k - 1} (K={k} from logits), {label_codes.UNLABELED} "
        f"(unlabeled) or {label_codes.PADDING} (padding)"
    )


def check_options(relaxation: str, cross_entropy: str, neighborhood: str,
                  num_steps: int, kernel: str) -> None:
  """Raises ``ValueError`` naming an unknown name or a bad ``num_steps``."""
  if kernel not in KERNELS:
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
  if kernel == "native" and not native.available():
    raise ValueError("kernel='native' needs the native CPU loop, which is "
                     "unavailable here (see the warning of "
                     "potts_jax.solver.native.available)")
  check_names(relaxation, cross_entropy, neighborhood)
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
    raise ValueError(f"num_steps must be an int >= 0; got {num_steps!r}")


def check_names(relaxation: str, cross_entropy: str, neighborhood: str) -> None:
  """Raises ``ValueError`` naming an unknown relaxation, H or neighbourhood.

  ``neighborhood="dense"`` takes only the relaxations of
  :func:`potts_jax.dense.bilateral.check_relaxation`.
  """
  potts.check_name(relaxation)
  losses.check_name(cross_entropy)
  neighborhoods.check_neighborhood(neighborhood)
  if neighborhood == "dense":
    bilateral.check_relaxation(relaxation)


def check_energy(energy):
  """``energy`` checked, ``lattice_capacity`` 0 read as None (the bound).

  Args:
    energy: :class:`potts_jax.solver.options.EnergyParams`.

  Raises:
    ValueError: an unknown name or a bad lattice capacity.
  """
  check_names(energy.relaxation, energy.cross_entropy, energy.neighborhood)
  capacity = energy.lattice_capacity
  if capacity is not None and (not isinstance(capacity, (int, np.integer))
                               or isinstance(capacity, bool) or capacity < 0):
    raise ValueError(f"lattice_capacity must be None or an int >= 0 (0 = the "
                     f"bound 6HW); got {capacity!r}")
  return dataclasses.replace(energy, lattice_capacity=capacity or None)


def check(energy, options):
  """``(energy, options)`` checked and normalised for the jitted loop.

  ``options.method`` resolved (an ``optimizer`` with ``gd`` selects
  ``optax``), ``warm_start`` ``""`` read as None.

  Raises:
    ValueError: naming the bad name, number or combination.
  """
  energy = check_energy(energy)
  check_options(energy.relaxation, energy.cross_entropy, energy.neighborhood,
                options.num_steps, options.kernel)
  method = updates.check_method(options.method, energy.cross_entropy,
                                energy.neighborhood, options.optimizer)
  warm_start = options.warm_start or None
  warm.check_warm_start(warm_start, options.warm_start_steps,
                        energy.neighborhood)
  return energy, dataclasses.replace(options, method=method,
                                     warm_start=warm_start)
