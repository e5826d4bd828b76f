"""Update rules of the pseudo-label solver beside plain descent.

:func:`potts_jax.solver.solve` selects one with ``method=``:

* ``"gd"`` (default, the paper's): plain gradient descent on the logits,
  ``l ← l - t ∂E/∂l`` with ``t = step_size`` (0.075).
* ``"optax"``: any optax transformation ``optimizer`` on the logits (SGD with
  momentum or Nesterov, Adam, ...), fed ``∂E/∂l``; ``step_size`` unused.
* ``"adam"``: ``optax.adam``'s update on the logits (``b1`` 0.9, ``b2`` 0.999,
  ``eps`` 1e-8, bias-corrected), its step ``adam_step_size`` decaying
  geometrically to ``adam_step_size * adam_decay`` at the last step (1: a
  constant step). Carried out on ``v`` like plain descent
  (:func:`adam_loop`), so that on the CPU it runs in the native loop
  (:mod:`potts_jax.solver.native`). Why it works: the step is divided per
  element by the gradient's RMS, so pixels where the softmax Jacobian is
  nearly singular (``y`` near a vertex, ``∂E/∂l ≈ 0``) move as fast as
  uncertain ones, and momentum (``b1``) carries the smooth, slow modes of the
  stiff Potts term (below).
* ``"mirror"``: mirror descent (exponentiated gradient) on ``y`` with the
  entropy mirror map, ``y ← y ⊙ exp(-t g) / Σ_k(...)`` with ``g = ∂E/∂y`` and
  ``t = mirror_step_size``. In logits this is ``l ← l - t (g - yᵀg)``: the
  plain step ``∂E/∂l = y ⊙ (g - yᵀg)`` preconditioned by ``diag(1/y)``, so
  confident pixels (``y`` near a vertex, where the softmax Jacobian vanishes)
  move as fast as uncertain ones.
* ``"mirror_momentum"``: the same step with heavy-ball momentum in the dual
  (logit) space, ``m ← β m + (g - yᵀg)``, ``y ← y ⊙ exp(-t m) / Σ_k(...)``,
  ``β = momentum``. Why it should work: on a grid the Potts term makes E
  stiff (the curvature of ``λ Σ w_ij P`` is ~8λ against η for the unary term,
  ratio κ ≈ 160 at the paper's η 0.3, λ 6), so any first-order step needs
  ~κ steps per e-fold on the smooth (slow) modes; heavy ball needs ~√κ.

Both mirror rules carry the unnormalised ``v = y ⊙ exp(-t m)`` like plain
descent (the next step's single reduction pass normalises it), keep scribbled
pixels one-hot (their direction is 0) and clip the exponent to
``±MAX_EXPONENT`` (a trust region): the guarded relaxations have gradients up
to ``1/EPS`` at orthogonal one-hots, and the clip keeps ``v`` finite and
``Σ_k v > 0`` there (at the default step it binds only where ``|g| > 160``).
The mirror steps are stable only for small ``t`` on ``cd``/``cce``, whose
curvature grows like ``1/(y_iᵀy_j)²`` near orthogonal neighbours; Adam on the
logits (``"adam"``) has no such limit, as its step ``|δ|`` stays near ``t``
per element whatever the gradient's scale (benchmarks/RESULTS.md). A class
whose ``y`` is exactly 0 stays 0 (as in plain descent and ``"adam"`` on
``v``). The mirror rules support the cross-entropies
``cce``, ``ce`` and ``q`` (``rce`` has the unbounded ``∂H/∂y = -σ/y``) and the
grid neighbourhoods ``nn4``/``nn8``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from potts_jax import neighborhoods
from potts_jax import potts
Array = jnp.ndarray

#: Every ``method`` :func:`potts_jax.solver.solve` accepts.
METHODS = ("gd", "optax", "adam", "mirror", "mirror_momentum")
#: Methods that take no ``optimizer`` (``adam`` builds its own).
OWN_UPDATE_METHODS = ("adam", "mirror", "mirror_momentum")
#: Methods that run on ``y`` through :func:`mirror_direction`.
MIRROR_METHODS = ("mirror", "mirror_momentum")
#: Cross-entropies the mirror methods support.
MIRROR_CROSS_ENTROPIES = ("cce", "ce", "q")
#: Largest ``|t m|`` in the exponent of one mirror step.
MAX_EXPONENT = 5.0
#: ``"adam"``'s moment decays and denominator guard (optax.adam's defaults).
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8


def check_method(method: str, cross_entropy: str, neighborhood: str,
                 optimizer: Any) -> str:
  """Returns the method to run, or raises ``ValueError`` naming the problem.

  ``optimizer`` given with the default ``method="gd"`` selects ``"optax"``
  (the solver's behaviour before ``method`` existed).
  """
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  if method == "gd" and optimizer is not None:
    method = "optax"
  if method == "optax" and optimizer is None:
    raise ValueError("method='optax' needs an optax optimizer=")
  if method in OWN_UPDATE_METHODS and optimizer is not None:
    raise ValueError(f"method={method!r} takes no optimizer (it is for "
                     "method='optax')")
  if method in MIRROR_METHODS and neighborhood == "dense":
    raise ValueError(f"method={method!r} supports the grid neighbourhoods "
                     "nn4 and nn8; got 'dense'")
  if method in MIRROR_METHODS and cross_entropy not in MIRROR_CROSS_ENTROPIES:
    raise ValueError(
        f"method={method!r} supports cross_entropy in "
        f"{MIRROR_CROSS_ENTROPIES}; got {cross_entropy!r} (its ∂H/∂y is "
        "unbounded)")
  return method


def gd_loop(v0: Array, step_terms: Callable, step_size: Array):
  """``(carry0, step, to_v)`` of plain descent (``"gd"``).

  ``l ← l - t ∂E/∂l`` is exactly ``y ← y ⊙ exp(-t ∂E/∂l) / Σ_k(...)``, since
  ``softmax(l + δ) ∝ softmax(l) ⊙ exp(δ)``. The carry is the unnormalised
  ``v = y ⊙ exp(δ)``; the next step's single reduction pass gets ``Σ_k v``
  with the other sums, so the loop never writes a normalised copy: one
  ``exp`` per element and step, no softmax max/sum passes. Labeled pixels
  stay one-hot because their step is zero.

  Args:
    v0: ``[B, H, W, K]`` initial iterate, scribble reset applied.
    step_terms: ``v -> (∂E/∂l, r)`` (:func:`potts_jax.solver.objective.logit_step`
      bound to the problem), 0 where reset.
    step_size: scalar ``t``.

  Returns:
    ``carry0``, ``step: carry -> carry`` and ``to_v: carry -> v``
    (``y = v / Σ_k v``).
  """
  def step(v):
    grad, r = step_terms(v)
    return r[..., None] * v * jnp.exp(-step_size * grad)

  return v0, step, lambda v: v


def adam_loop(v0: Array, step_terms: Callable, step_size: Array, decay: Array,
              num_steps: int):
  """``(carry0, step, to_v)`` of ``"adam"``: optax.adam on the logits, on ``v``.

  At step ``n = 1, 2, ...`` with ``γ = ∂E/∂l``: ``m ← b1 m + (1 - b1) γ``,
  ``s ← b2 s + (1 - b2) γ²``, ``δ = t_n (m / (1 - b1ⁿ)) / (√(s / (1 - b2ⁿ))
  + eps)``, ``l ← l - δ``, carried out as ``v ← r v ⊙ exp(-δ)`` (see
  :func:`gd_loop`); ``t_n = t · decay^((n - 1) / (N - 1))``. Scribbled pixels
  have ``γ = 0``, hence ``m = s = δ = 0``: they stay one-hot. The native CPU
  loop (``native/grid_solver.cc``) computes the same iterates.

  Args:
    v0: ``[B, H, W, K]`` initial iterate, scribble reset applied.
    step_terms: ``v -> (∂E/∂l, r)``, 0 where reset.
    step_size: scalar first step ``t``.
    decay: scalar; the last step is ``t · decay``.
    num_steps: static ``N``.

  Returns:
    ``carry0 = (v, m, s, n)``, ``step`` and ``to_v``.
  """
  last = max(num_steps - 1, 1)

  def step(carry):
    v, m, s, n = carry
    grad, r = step_terms(v)
    m = (1 - ADAM_B1) * grad + ADAM_B1 * m
    s = (1 - ADAM_B2) * (grad * grad) + ADAM_B2 * s
    n1 = (n + 1).astype(jnp.float32)
    c1 = 1 / (1 - ADAM_B1 ** n1)
    c2 = 1 / (1 - ADAM_B2 ** n1)
    t = step_size * decay ** (n.astype(jnp.float32) / last)
    delta = t * (m * c1) / (jnp.sqrt(s * c2) + ADAM_EPS)
    return r[..., None] * v * jnp.exp(-delta), m, s, n + 1

  zeros = jnp.zeros_like(v0)
  return (v0, zeros, zeros, jnp.zeros((), jnp.int32)), step, lambda c: c[0]


def _unary_sum(cross_entropy: str, v: Array, prob) -> Array:
  """The ``K``-sized term whose channel sum the unary gradient needs."""
  if cross_entropy == "ce":
    return v * prob.log_sigma
  return prob.sigma * v  # cce, q: σᵀv


def _unary_gradient(cross_entropy, v, r, a, dot, prob):
  """``∂(mH)/∂y`` ``[B, H, W, K]`` and ``yᵀ∂(mH)/∂y`` ``[B, H, W]``.

  ``y = r v``, ``a = ‖y‖²``, ``dot`` the channel sum of :func:`_unary_sum`;
  ``m`` = η on valid unlabeled pixels, else 0.
  """
  m = prob.unary_weight[..., None]
  if cross_entropy == "cce":  # H = -ln σᵀy: ∂H/∂y = -σ/σᵀy (guarded).
    u = r * dot
    _, vjp = jax.vjp(lambda x: -potts.safe_log(x), u)
    c = vjp(prob.unary_weight)[0]
    return c[..., None] * prob.sigma, c * u
  if cross_entropy == "ce":  # H = -Σ y ln σ.
    return -m * prob.log_sigma, -prob.unary_weight * r * dot
  # q: H = ½‖σ - y‖², ∂H/∂y = y - σ.
  return m * (r[..., None] * v - prob.sigma), prob.unary_weight * (
      a - r * dot)


def mirror_direction(v: Array, prob, relaxation: str,
                     cross_entropy: str) -> tuple[Array, Array]:
  """The mirror-descent direction ``g - yᵀg`` at ``y = r v``, 0 where reset.

  ``g = ∂E/∂y`` (E of :func:`potts_jax.solver.energy`). One reduction pass
  over ``K`` (:func:`neighborhoods.pair_pass`) as in the plain step.

  Args:
    v: ``[B, H, W, K]`` nonnegative, unnormalised iterate (``Σ_k v > 0``).
    prob: the solver's problem (:class:`potts_jax.solver.objective.Problem`).
    relaxation, cross_entropy: names.

  Returns:
    ``(d [B, H, W, K], r [B, H, W])``, ``r = 1/Σ_k v``.
  """
  r, stats, coefficients, diag, ydotg, (dot,) = neighborhoods.pair_pass(
      v, prob.weights, potts.STATS[relaxation],
      [_unary_sum(cross_entropy, v, prob)])
  directions = [d for d, _ in coefficients]
  fields = jax.lax.optimization_barrier((
      v, r, diag, stats.a, dot, ydotg, prob.free,
      tuple(c for _, c in coefficients),
  ))
  v, r, diag, a, dot, ydotg, free, c_pairs = fields
  g = neighborhoods.apply_coefficients(
      v, r, tuple(zip(directions, c_pairs)), diag
  )
  g_unary, ydotg_unary = _unary_gradient(cross_entropy, v, r, a, dot, prob)
  d = g + g_unary - (ydotg + ydotg_unary)[..., None]
  return free[..., None] * d, r


def mirror_loop(method: str, v0: Array, direction_fn: Callable,
                step_size: Array, momentum: Array):
  """``(carry0, step, to_v)`` of a mirror method for the solver's loop.

  Args:
    method: ``"mirror"`` or ``"mirror_momentum"``.
    v0: ``[B, H, W, K]`` initial iterate, scribble reset applied.
    direction_fn: ``v -> (d, r)``, :func:`mirror_direction` bound to ``prob``.
    step_size: scalar ``t``.
    momentum: scalar ``β`` (``"mirror_momentum"`` only).

  Returns:
    ``carry0``, ``step: carry -> carry`` and ``to_v: carry -> v``
    (``y = v / Σ_k v``).
  """
  def advance(v, r, m):
    exponent = jnp.clip(-step_size * m, -MAX_EXPONENT, MAX_EXPONENT)
    return r[..., None] * v * jnp.exp(exponent)

  if method == "mirror":
    def step(v):
      d, r = direction_fn(v)
      return advance(v, r, d)

    return v0, step, lambda v: v

  def step_momentum(carry):
    v, m = carry
    d, r = direction_fn(v)
    m = momentum * m + d
    return advance(v, r, m), m

  return (v0, jnp.zeros_like(v0)), step_momentum, lambda c: c[0]
