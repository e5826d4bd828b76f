"""The pseudo-label problem of the solver: its data, energy and gradient.

:class:`Problem` holds the fixed data of one batch (NHWC, float32);
:func:`energy_value` is ``E(y)`` (a sum over pixels and
pairs) and :func:`logit_step` the analytic ``∂E/∂l`` that every grid loop of
:mod:`potts_jax.solver.loop` takes. How the gradient is computed (three
per-pair scalars, one fused reduction over classes) is described in
:mod:`potts_jax.solver`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from potts_jax.dense import bilateral
from potts_jax import labels as label_codes
from potts_jax import losses
from potts_jax import neighborhoods
from potts_jax import potts
Array = jnp.ndarray


class Problem(NamedTuple):
  """The fixed data of one pseudo-label problem (NHWC)."""

  sigma: Array  # [B, H, W, K] network prediction softmax(logits).
  log_sigma: Array  # [B, H, W, K] guarded ln σ (used by H_CE only).
  onehot: Array  # [B, H, W, K] one-hot of the scribble, 0 elsewhere.
  labeled: Array  # [B, H, W, 1] bool: scribbled pixels.
  free: Array  # [B, H, W] float: 1 where the solver may move y.
  unary_weight: Array  # [B, H, W] float: η on valid unlabeled pixels, else 0.
  weights: tuple  # per offset [B, H, W] λ·w_ij (0 where no pair).


def build_problem(logits, image, labels, neighborhood, sigma_rgb, eta,
                  lam) -> Problem:
  """The :class:`Problem` of one batch.

  Args:
    logits: ``[B, H, W, K]`` network logits (no gradient flows into them).
    image: ``[B, H, W, C]`` RGB in 0..255.
    labels: ``[B, H, W]`` int: class, 255 unlabeled, 254 padding.
    neighborhood: ``nn4``, ``nn8`` or ``dense`` (whose pairs live in a
      :class:`potts_jax.dense.bilateral.DenseGraph`, so ``weights`` is empty).
    sigma_rgb, eta, lam: scalars (traced values are fine).

  Returns:
    The problem, ``weights`` carrying ``λ·w_ij`` per offset.
  """
  k = logits.shape[-1]
  labels = jnp.asarray(labels, jnp.int32)
  labeled = label_codes.scribbled(labels)
  onehot = jax.nn.one_hot(jnp.where(labeled, labels, 0), k, dtype=jnp.float32)
  onehot = onehot * labeled[..., None]
  if neighborhood == "dense":  # λ and the pairs live in a DenseGraph.
    weights = jnp.zeros(labels.shape + (0,), jnp.float32)
  else:
    weights = lam * neighborhoods.affinities(
        image, labels, neighborhood=neighborhood, sigma_rgb=sigma_rgb
    )
  sigma = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32))
  return Problem(
      sigma=sigma,
      log_sigma=potts.safe_log(sigma),
      onehot=onehot,
      labeled=labeled[..., None],
      free=(~labeled).astype(jnp.float32),
      unary_weight=eta * label_codes.unlabeled(labels).astype(jnp.float32),
      weights=tuple(weights[..., d] for d in range(weights.shape[-1])),
  )


def reset(y: Array, prob: Problem) -> Array:
  """The scribble reset ``where(labeled, onehot, y)``."""
  return jnp.where(prob.labeled, prob.onehot, y)


# Unary terms. For H(σ, y) with weight m = η·[valid unlabeled] and y = r v
# (see logit_step), each cross-entropy gives (a) K-sized basis arrays, whose
# channel sums come out of the step's single reduction pass, and (b) from
# those sums, per-pixel coefficients with y ⊙ ∂(mH)/∂y = Σ coef · basis and
# the scalar yᵀ∂(mH)/∂y, so no second reduction over K is needed. Guards
# follow potts.safe_log (zero slope below EPS); for H_RCE the guard tests the
# unnormalised v = y·Σv (Σv ≈ 1).
def _sigma_v(v, prob):
  return (prob.sigma * v,)


def _cce_terms(r, prob, stats, sums):
  del stats
  u = sums[0] * r  # σᵀy
  _, vjp = jax.vjp(lambda x: -potts.safe_log(x), u)
  c = vjp(prob.unary_weight)[0]  # -m/u
  return c * u, (c * r,)


def _ce_basis(v, prob):
  return (v * prob.log_sigma,)


def _ce_terms(r, prob, stats, sums):
  del stats
  m = prob.unary_weight
  return -m * r * sums[0], (-m * r,)


def _rce_basis(v, prob):
  return (prob.sigma * (v > potts.EPS),)


def _rce_terms(r, prob, stats, sums):
  del r, stats
  m = prob.unary_weight
  return -m * sums[0], (-m,)


def _q_basis(v, prob):
  return (v * v, prob.sigma * v)


def _q_terms(r, prob, stats, sums):
  m = prob.unary_weight
  # y ⊙ (y - σ) = r² v² - r σ v.
  return m * (stats.a - sums[1] * r), (m * r * r, -m * r)


_UNARY = {
    "cce": (_sigma_v, _cce_terms),
    "ce": (_ce_basis, _ce_terms),
    "rce": (_rce_basis, _rce_terms),
    "q": (_q_basis, _q_terms),
}


def logit_step(v, prob, relaxation, cross_entropy):
  """``(∂E/∂l, r)`` at ``y = r v``, ``r = 1/Σ_k v``; 0 where reset.

  ``∂E/∂l = y ⊙ (g - yᵀg)`` with ``g = ∂E/∂y``. Every reduction over ``K``
  happens in one pass (:func:`neighborhoods.pair_pass`) over ``v``, its
  shifts and ``σ``; the per-pixel coefficients are then materialised
  (``optimization_barrier``) so that the one ``K``-sized pass that follows
  reads them instead of recomputing them for every class.

  Args:
    v: ``[B, H, W, K]`` nonnegative, unnormalised iterate.
    prob: the problem.
    relaxation, cross_entropy: names.

  Returns:
    ``(∂E/∂l [B, H, W, K], r [B, H, W])``.
  """
  basis_fn, terms_fn = _UNARY[cross_entropy]
  r, stats, coefficients, diag, ydotg, unary_sums = neighborhoods.pair_pass(
      v, prob.weights, potts.STATS[relaxation], basis_fn(v, prob))
  u_ydotg, u_coefficients = terms_fn(r, prob, stats, unary_sums)
  directions = [d for d, _ in coefficients]
  # v goes through the barrier too, so that the K-sized products below are
  # recomputed inside the update pass rather than shared (and materialised).
  fields = jax.lax.optimization_barrier((
      v, r, diag, r * (ydotg + u_ydotg), prob.free,
      tuple(c for _, c in coefficients), u_coefficients,
  ))
  v, r, diag, r_ydotg, free, c_pairs, u_coefficients = fields
  g = neighborhoods.apply_coefficients(
      v, r, tuple(zip(directions, c_pairs)), diag
  )
  # y ⊙ g - y yᵀg with y = r v, the unary part given as coef · basis.
  grad = v * (r[..., None] * g - r_ydotg[..., None])
  for c, b in zip(u_coefficients, basis_fn(v, prob)):
    grad = grad + c[..., None] * b
  return free[..., None] * grad, r


def energy_value(y, prob, relaxation, cross_entropy):
  """E(y) ``[B]`` (the weights in ``prob`` already carry η and λ)."""
  h = losses.cross_entropy(cross_entropy)
  unary = jnp.sum(prob.unary_weight * h(prob.sigma, y), axis=(1, 2))
  pairs = neighborhoods.grid_energy(
      y, jnp.stack(prob.weights, axis=-1), potts.relaxation(relaxation)
  )
  return unary + pairs


def dense_energy_value(y, prob, graph, lam, relaxation, cross_entropy):
  """E(y) ``[B]`` with the dense Potts term."""
  h = losses.cross_entropy(cross_entropy)
  unary = jnp.sum(prob.unary_weight * h(prob.sigma, y), axis=(1, 2))
  return unary + lam * bilateral.dense_energy(y, graph, relaxation)
