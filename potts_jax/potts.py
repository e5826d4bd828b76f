"""Second-order relaxations P(p, q) of the Potts model (paper Tables 1 and 2).

Every relaxation takes two distributions ``p, q`` of shape ``[..., K]`` (points of
the probability simplex) and returns ``[...]``:

======  ==================================  =========================
name    P(p, q)                             paper
======  ==================================  =========================
``bl``  ``1 - pᵀq``                         bi-linear ("graph cut")
``q``   ``½‖p - q‖²``                       quadratic ("random walker")
``nq``  ``1 - pᵀq / (‖p‖‖q‖)``              normalised quadratic
``cce`` ``-ln pᵀq``                         collision cross-entropy
``cd``  ``-ln(pᵀq / (‖p‖‖q‖))``             collision divergence
``lq``  ``-ln(1 - ½‖p - q‖²)``              log-quadratic
======  ==================================  =========================

All six depend on ``p`` and ``q`` only through three scalars, ``s = pᵀq``,
``a = ‖p‖²`` and ``b = ‖q‖²``. Each relaxation is therefore written once as a
function of ``(s, a, b)`` (the ``*_stats`` form, table :data:`STATS`); the
solver uses that form to get pair gradients analytically
(``∂P/∂p = P_s q + 2 P_a p``) without differentiating through the pair arrays.

Guards (see :data:`EPS`): every ``ln x`` is evaluated as ``ln max(x, EPS)`` and
every ``√x`` as ``√max(x, EPS)`` with the double-``where`` form, so values and
gradients stay finite for any input, including one-hot vertices and orthogonal
one-hots. Where a relaxation is infinite (``cce``, ``cd`` and ``lq`` at
orthogonal one-hots) it returns the finite value ``-ln EPS`` (= 69.08) and a
zero gradient with respect to the clamped quantity.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

Array = jnp.ndarray

#: Guard constant of every ``ln`` and ``√`` in the relaxations and the
#: cross-entropies: arguments below it are replaced by it (and receive zero
#: gradient). ``-ln EPS`` = 69.08 is the value an infinite relaxation takes.
#: 1e-30 is far below any probability product the solver meets in float32
#: (softmax outputs underflow to exactly 0 before they get near it) and far
#: above float32's smallest normal number (1.2e-38).
EPS = 1e-30


def safe_log(x: Array) -> Array:
  """``ln max(x, EPS)`` with a finite, NaN-free gradient everywhere."""
  ok = x > EPS
  # math.log keeps the constant weakly typed: float32 in, float32 out, also
  # under jax_enable_x64.
  return jnp.where(ok, jnp.log(jnp.where(ok, x, 1.0)), math.log(EPS))


def safe_sqrt(x: Array) -> Array:
  """``√max(x, EPS)`` with a finite, NaN-free gradient everywhere."""
  ok = x > EPS
  return jnp.where(ok, jnp.sqrt(jnp.where(ok, x, 1.0)), math.sqrt(EPS))


# The (s, a, b) forms: s = pᵀq, a = ‖p‖², b = ‖q‖². Each broadcasts.
def bl_stats(s: Array, a: Array, b: Array) -> Array:
  del a, b
  return 1.0 - s


def q_stats(s: Array, a: Array, b: Array) -> Array:
  return 0.5 * (a + b) - s


def nq_stats(s: Array, a: Array, b: Array) -> Array:
  return 1.0 - s / safe_sqrt(a * b)


def cce_stats(s: Array, a: Array, b: Array) -> Array:
  del a, b
  return -safe_log(s)


def cd_stats(s: Array, a: Array, b: Array) -> Array:
  # -ln(s / √(ab)), written as a sum of logs so that each factor is guarded.
  return -safe_log(s) + 0.5 * (safe_log(a) + safe_log(b))


def lq_stats(s: Array, a: Array, b: Array) -> Array:
  # 1 - ½‖p - q‖² = 1 - ½a - ½b + s.
  return -safe_log(1.0 - 0.5 * (a + b) + s)


#: Relaxation name -> its ``(s, a, b)`` form.
STATS: dict[str, Callable[[Array, Array, Array], Array]] = {
    "bl": bl_stats,
    "q": q_stats,
    "nq": nq_stats,
    "cce": cce_stats,
    "cd": cd_stats,
    "lq": lq_stats,
}

NAMES = tuple(STATS)


def _from_stats(stats_fn, p: Array, q: Array) -> Array:
  return stats_fn(
      jnp.sum(p * q, axis=-1), jnp.sum(p * p, axis=-1), jnp.sum(q * q, axis=-1)
  )


def bl(p: Array, q: Array) -> Array:
  """Bi-linear relaxation ``1 - pᵀq``. ``[..., K] x [..., K] -> [...]``."""
  return _from_stats(bl_stats, p, q)


def quadratic(p: Array, q: Array) -> Array:
  """Quadratic relaxation ``½‖p - q‖²``. ``[..., K] x [..., K] -> [...]``."""
  return _from_stats(q_stats, p, q)


def normalized_quadratic(p: Array, q: Array) -> Array:
  """Normalised quadratic ``1 - pᵀq/(‖p‖‖q‖)``. ``[..., K] x [..., K] -> [...]``."""
  return _from_stats(nq_stats, p, q)


def collision_cross_entropy(p: Array, q: Array) -> Array:
  """Collision cross-entropy ``-ln pᵀq``. ``[..., K] x [..., K] -> [...]``."""
  return _from_stats(cce_stats, p, q)


def collision_divergence(p: Array, q: Array) -> Array:
  """Collision divergence ``-ln(pᵀq/(‖p‖‖q‖))``. ``[..., K] x [..., K] -> [...]``."""
  return _from_stats(cd_stats, p, q)


def _lq_argument(p: Array, q: Array) -> Array:
  """``1 - ½‖p - q‖²`` ``[...]`` for ``p, q`` ``[..., K]`` on the simplex,
  without cancellation.

  Near orthogonal vertices the argument is tiny (``≈ 2ε``) while ``a``,
  ``b`` and ``½(a + b)`` are ≈ 1, so ``1 - ½(a + b) + s`` loses every digit
  to float32 rounding. On the simplex (``Σp = Σq = 1``) it equals

    ``s + ½ Σ_k p_k (1 - p_k) + ½ Σ_k q_k (1 - q_k)``,

  a sum of nonnegative terms, each accurate to a few float32 roundoffs
  (``1 - p_k`` is exact for ``p_k ≥ ½``): relative error ~1e-7 however
  small the argument. The value is that sum; the gradient is the one of
  ``1 - ½(a + b) + s`` (``∂/∂p = q - p``), so that derivatives off the
  simplex (tangent directions or not) are those of the formula.
  """
  s = jnp.sum(p * q, axis=-1)
  exact = s + 0.5 * (jnp.sum(p * (1.0 - p), axis=-1)
                     + jnp.sum(q * (1.0 - q), axis=-1))
  formula = 1.0 - 0.5 * (jnp.sum(p * p, axis=-1) + jnp.sum(q * q, axis=-1)) + s
  # The value of `exact`, the derivatives of `formula` (the bracket is 0).
  return jax.lax.stop_gradient(exact) + (
      formula - jax.lax.stop_gradient(formula))


def log_quadratic(p: Array, q: Array) -> Array:
  """Log-quadratic ``-ln(1 - ½‖p - q‖²)``. ``[..., K] x [..., K] -> [...]``.

  The argument is computed without cancellation (:func:`_lq_argument`), so
  the value stays accurate near orthogonal vertices, where it is large.
  (:func:`lq_stats`, the solver's ``(s, a, b)`` form, cannot: its ``a`` and
  ``b`` are already rounded.)
  """
  return -safe_log(_lq_argument(p, q))


_BY_NAME = {
    "bl": bl,
    "q": quadratic,
    "nq": normalized_quadratic,
    "cce": collision_cross_entropy,
    "cd": collision_divergence,
    "lq": log_quadratic,
}


def check_name(name: str) -> str:
  """Returns ``name`` if it names a relaxation, else raises ``ValueError``."""
  if name not in STATS:
    raise ValueError(
        f"unknown Potts relaxation {name!r}; expected one of {list(NAMES)}"
    )
  return name


def relaxation(name: str) -> Callable[[Array, Array], Array]:
  """Returns the relaxation ``fn(p, q) -> [...]`` called ``name``.

  Args:
    name: one of ``bl, q, nq, cce, cd, lq``.

  Raises:
    ValueError: for any other name (the message lists the valid ones).
  """
  return _BY_NAME[check_name(name)]
