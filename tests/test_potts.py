"""Tests of potts_jax.potts: the six Potts relaxations and the safe ln / √.

Every expected value comes from the independent float64 numpy references of
tests/references.py, written straight from the formulas of the paper:

  bl 1 - pᵀq · q ½‖p - q‖² · nq 1 - pᵀq/(‖p‖‖q‖) · cce -ln pᵀq ·
  cd -ln(pᵀq/(‖p‖‖q‖)) · lq -ln(1 - ½‖p - q‖²).

The library computes in float32, so the references are evaluated at the
float32-rounded inputs (the point the library actually sees).
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import potts
from tests import references

NAMES = references.RELAXATIONS
LOG_NAMES = references.LOG_RELAXATIONS
NAMED_FUNCTIONS = {
    "bl": potts.bl,
    "q": potts.quadratic,
    "nq": potts.normalized_quadratic,
    "cce": potts.collision_cross_entropy,
    "cd": potts.collision_divergence,
    "lq": potts.log_quadratic,
}
# Unit roundoff of float32.
U32 = 2.0**-24
RTOL = 1e-5
ATOL = 1e-5
# Every [N, K] evaluation goes through one jitted function of all six
# relaxations (eager calls are tested separately, see the batch-shape and jit
# tests).
BATCH = references.RowBatch(potts.relaxation, NAMES)


def _tolerance(name, p, q, expected):
  """Elementwise tolerance: 1e-5 (abs + rel), plus float32 conditioning of lq.

  lq evaluates ln of ``1 - ½‖p - q‖²``, which for near-orthogonal
  near-vertices is a difference of O(1) float32 quantities that is itself tiny
  (≈ 2ε). Any float32 evaluation then carries an absolute error of a few
  float32 roundoffs in that argument, i.e. a forward error of
  ``~U32 / (1 - ½‖p - q‖²)`` in lq. That term is negligible (< 1e-6) away
  from near-orthogonal vertices.
  """
  tol = ATOL + RTOL * np.abs(expected)
  if name == "lq":
    p = np.asarray(p, np.float64)
    q = np.asarray(q, np.float64)
    arg = 1.0 - 0.5 * np.sum((p - q) ** 2, axis=-1)
    tol = tol + 2.0 * U32 / arg
  return tol


def _assert_matches_ref(name, actual, p32, q32):
  expected = references.relaxation(name, p32, q32)
  actual = np.asarray(actual, np.float64)
  assert actual.shape == expected.shape
  err = np.abs(actual - expected)
  tol = _tolerance(name, p32, q32, expected)
  worst = np.argmax(err - tol)
  assert np.all(err <= tol), (
      f"{name}: max excess at flat index {worst}: actual "
      f"{actual.flat[worst]!r} expected {expected.flat[worst]!r} "
      f"(err {err.flat[worst]:.3g}, tol {tol.flat[worst]:.3g})"
  )


# ----------------------------------------------------------------------------
# Names.


@pytest.mark.parametrize("name", NAMES)
def test_check_name_accepts_the_six_names(name):
  assert potts.check_name(name) == name


def test_names_are_the_six_relaxations():
  assert set(potts.NAMES) == set(NAMES)
  assert set(potts.STATS) == set(NAMES)


@pytest.mark.parametrize("bad", ["", "CD", "potts", "ce", "bl "])
def test_unknown_relaxation_raises_value_error_naming_it(bad):
  with pytest.raises(ValueError, match=re.escape(repr(bad))):
    potts.relaxation(bad)
  with pytest.raises(ValueError, match=re.escape(repr(bad))):
    potts.check_name(bad)


def test_eps_is_the_documented_guard():
  assert potts.EPS == 1e-30
  np.testing.assert_allclose(references.CAP, 69.08, atol=5e-3)


# ----------------------------------------------------------------------------
# Values against the float64 reference.


@pytest.mark.parametrize("name", NAMES)
def test_random_simplex_points_match_reference(name):
  rng = np.random.default_rng(0)
  for k in (2, 3, 21):
    p = references.simplex(rng, (40,), k)
    # Also peaked distributions, with entries near 0 and near 1.
    q = np.concatenate([
        references.simplex(rng, (20,), k),
        references.simplex(rng, (20,), k, 0.1),
    ])
    _assert_matches_ref(name, BATCH.values(name, p, q), p, q)
    _assert_matches_ref(name, BATCH.values(name, q, p), q, p)


@pytest.mark.parametrize("name", NAMES)
def test_batch_shapes_match_reference(name):
  """Leading batch axes of any rank: ``[7, K]`` and ``[2, 3, 4, K]``."""
  rng = np.random.default_rng(1)
  for shape, k in (((7,), 3), ((2, 3, 4), 3)):
    p = references.simplex(rng, shape, k)
    q = references.simplex(rng, shape, k, alpha=0.3)
    # Through relaxation(name) and through the named function, eagerly.
    for fn in (potts.relaxation(name), NAMED_FUNCTIONS[name]):
      out = fn(jnp.asarray(p), jnp.asarray(q))
      assert out.shape == shape
      assert out.dtype == jnp.float32
      _assert_matches_ref(name, out, p, q)


@pytest.mark.parametrize("name", NAMES)
def test_stats_form_matches_reference(name):
  rng = np.random.default_rng(2)
  p = references.simplex(rng, (7,), 3)
  q = references.simplex(rng, (7,), 3)
  p64, q64 = p.astype(np.float64), q.astype(np.float64)
  s = np.sum(p64 * q64, -1).astype(np.float32)
  a = np.sum(p64 * p64, -1).astype(np.float32)
  b = np.sum(q64 * q64, -1).astype(np.float32)
  out = potts.STATS[name](jnp.asarray(s), jnp.asarray(a), jnp.asarray(b))
  _assert_matches_ref(name, out, p, q)


@pytest.mark.parametrize("name", NAMES)
def test_vertices_equal_and_orthogonal(name):
  for k in (2, 3, 21):
    p, q, equal = references.one_hot_pairs(k)
    out = BATCH.values(name, p, q)
    # Equal one-hots: every relaxation is exactly 0 there.
    np.testing.assert_allclose(out[equal], 0.0, atol=1e-7)
    if name in LOG_NAMES:
      # The true value is +inf; the library returns the documented cap.
      assert np.all(np.isinf(references.relaxation(name, p[~equal], q[~equal])))
      np.testing.assert_allclose(out[~equal], references.CAP, rtol=1e-6)
    else:
      np.testing.assert_allclose(out[~equal], 1.0, rtol=1e-6)
      _assert_matches_ref(name, out, p, q)


def _near_vertex_cases(rng, k):
  """``{description: (p, q)}`` near the vertices, ε from 1e-3 to 1e-6."""
  cases = {}
  vertex0 = np.eye(k, dtype=np.float32)[:1]
  for eps in (1e-3, 1e-4, 1e-5, 1e-6):
    for spread, n in (("uniform", 1), ("random", 12)):
      near0 = references.near_vertex(rng, n, k, 0, eps, spread)
      other0 = references.near_vertex(rng, n, k, 0, eps / 3.0, "random")
      near1 = references.near_vertex(rng, n, k, 1, eps, spread)
      exact0 = np.repeat(vertex0, n, axis=0)
      tag = f"eps={eps} {spread}"
      cases[f"{tag} same vertex"] = (near0, other0)
      cases[f"{tag} same vertex, one exact"] = (near0, exact0)
      cases[f"{tag} different vertices"] = (near0, near1)
      cases[f"{tag} different vertices, one exact"] = (exact0, near1)
  return cases


@pytest.mark.parametrize("name", NAMES)
def test_near_vertices_match_reference(name):
  rng = np.random.default_rng(3)
  for k in (2, 3, 21):
    cases = _near_vertex_cases(rng, k)
    p = np.concatenate([c[0] for c in cases.values()])
    q = np.concatenate([c[1] for c in cases.values()])
    out = BATCH.values(name, p, q)
    start = 0
    for case, (p_case, q_case) in cases.items():
      stop = start + len(p_case)
      try:
        _assert_matches_ref(name, out[start:stop], p_case, q_case)
      except AssertionError as e:
        raise AssertionError(f"K={k} {case}: {e}") from None
      start = stop


def _exact_simplex_points(rng, n, k, vertex, eps):
  """``[n, k]`` float32 points near ``e_vertex`` that sum to 1 exactly.

  The other entries are random multiples of a power of two ``step`` with
  ``eps / step ≤ 2^24`` (exact in float32) adding up to a multiple of 2^-24,
  so ``1 - Σ others`` is exact too: the float64 reference then sees a point
  of the simplex, not a rounded one.
  """
  step = 2.0 ** (np.ceil(np.log2(eps)) - 24)
  out = np.zeros((n, k))
  others = [c for c in range(k) if c != vertex]
  for row in out:
    small = np.floor(rng.dirichlet(np.ones(k - 1)) * eps / step) * step
    total = np.ceil(small.sum() / U32) * U32
    small[-1] += total - small.sum()
    row[others], row[vertex] = small, 1.0 - total
  p = out.astype(np.float32)
  assert np.array_equal(p.astype(np.float64), out)
  assert np.all(out.sum(-1) == 1.0)
  return p


def test_lq_has_no_cancellation_near_vertices():
  """lq's argument ``1 - ½‖p - q‖²`` is ≈ 2ε near orthogonal vertices.

  On points of the simplex exactly representable in float32, lq matches the
  float64 reference to 1.5e-6 (1 + |lq|) (absolute: the relative error of
  the argument) for ε from 1e-7 to 1e-3, K = 2, 3, 21, orthogonal and equal
  vertices; measured ≤ 1.0e-7 (1 + |lq|). The former evaluation
  ``1 - ½(a + b) + s`` was off by up to 9.0e-6 (1 + |lq|) on these points
  (the rounding of ``a + b ≈ 2`` against an argument of ≈ 4ε).
  """
  rng = np.random.default_rng(11)
  for k in (2, 3, 21):
    for eps in (1e-7, 1e-6, 1e-5, 1e-4, 1e-3):
      p = _exact_simplex_points(rng, 16, k, 0, eps)
      cases = {"orthogonal": _exact_simplex_points(rng, 16, k, 1, eps),
               "equal": _exact_simplex_points(rng, 16, k, 0, eps / 3.0)}
      for case, q in cases.items():
        ref = -np.log(1.0 - 0.5 * np.sum(
            (p.astype(np.float64) - q) ** 2, -1))
        out = np.asarray(potts.log_quadratic(p, q), np.float64)
        err = np.abs(out - ref)
        assert np.all(err <= 1.5e-6 * (1.0 + np.abs(ref))), (
            k, eps, case, err.max(), ref.max())
        if case == "orthogonal":
          assert ref.min() > -np.log(10.0 * eps)  # a tiny argument, ≈ 4ε.
  # The gradient is the formula's: ∂/∂p = (p - q) / (1 - ½‖p - q‖²).
  p = _exact_simplex_points(rng, 4, 3, 0, 1e-3)
  q = _exact_simplex_points(rng, 4, 3, 1, 1e-3)
  grad = np.asarray(jax.grad(lambda p: jnp.sum(potts.log_quadratic(p, q)))(
      jnp.asarray(p)), np.float64)
  p64, q64 = p.astype(np.float64), q.astype(np.float64)
  arg = 1.0 - 0.5 * np.sum((p64 - q64) ** 2, -1, keepdims=True)
  np.testing.assert_allclose(grad, (p64 - q64) / arg, rtol=1e-5)


def _all_relaxations(p, q):
  """``[6, ...]``: the six relaxations stacked (one compilation for all)."""
  return jnp.stack([potts.relaxation(name)(p, q) for name in NAMES])


def test_vmap_matches_batched_call():
  rng = np.random.default_rng(4)
  k = 3
  p = jnp.asarray(references.simplex(rng, (2, 3, 4), k))
  q = jnp.asarray(references.simplex(rng, (2, 3, 4), k))
  single = jnp.asarray(references.simplex(rng, (3, 4), k))
  batched = _all_relaxations(p, q)
  mapped = jax.jit(jax.vmap(_all_relaxations, out_axes=1))(p, q)
  np.testing.assert_allclose(mapped, batched, rtol=1e-6, atol=1e-7)
  # The other input broadcast (in_axes=None) against numpy broadcasting.
  one_vs_many = jax.jit(jax.vmap(_all_relaxations, (None, 0), out_axes=1))(
      single, q
  )
  np.testing.assert_allclose(
      one_vs_many, _all_relaxations(single, q), rtol=1e-6, atol=1e-7
  )
  for index, name in enumerate(NAMES):
    _assert_matches_ref(
        name, one_vs_many[index], np.broadcast_to(single, q.shape), q
    )
  # Nested vmap down to single distributions, without jit, for one relaxation.
  nested = jax.vmap(jax.vmap(jax.vmap(potts.log_quadratic)))(p, q)
  np.testing.assert_allclose(
      nested, potts.log_quadratic(p, q), rtol=1e-6, atol=1e-7
  )


def _values_and_grads(p, q, lp, lq):
  """Per relaxation: P(p, q), ∂/∂(p, q) of a weighted sum, ∂/∂ logits."""
  weight = jnp.arange(1.0, 5.0)
  out = {}
  for name in NAMES:
    fn = potts.relaxation(name)
    total, grads = jax.value_and_grad(
        lambda p, q: jnp.sum(fn(p, q) * weight), argnums=(0, 1)
    )(p, q)
    out[name] = (fn(p, q), total, grads, references.logit_grads(fn, lp, lq))
  return out


class JitTest(chex.TestCase):
  """jit and no-jit agree (values and gradients) and match the reference."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_matches_eager_and_reference(self):
    rng = np.random.default_rng(5)
    p = references.simplex(rng, (2, 3, 4), 3)
    q = references.simplex(rng, (2, 3, 4), 3)
    # Saturated logits: softmax gives exact, partly orthogonal one-hots.
    lp = references.saturated_logits(rng, (2, 3, 4), 3)
    lq = references.saturated_logits(rng, (2, 3, 4), 3)
    out = self.variant(_values_and_grads)(p, q, lp, lq)
    eager = _values_and_grads(*map(jnp.asarray, (p, q, lp, lq)))
    chex.assert_trees_all_close(out, eager, rtol=1e-6, atol=1e-6)
    chex.assert_tree_all_finite(out)
    for name in NAMES:
      _assert_matches_ref(name, out[name][0], p, q)


# ----------------------------------------------------------------------------
# Gradients against finite differences of the reference.


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
  rng = np.random.default_rng(6)
  for k in (2, 3, 21):
    p = references.simplex(rng, (8,), k)
    # Peaked points too, kept off the boundary so the stencil resolves them.
    q = references.floor_simplex(
        np.concatenate([
            references.simplex(rng, (4,), k),
            references.simplex(rng, (4,), k, 0.3),
        ])
    )
    gp, gq = BATCH.grads(name, p, q)
    fd_p, fd_q = references.central_differences(
        lambda p, q: references.relaxation(name, p, q), p, q
    )
    np.testing.assert_allclose(
        gp, fd_p, rtol=1e-4, atol=1e-5, err_msg=f"dp K={k}"
    )
    np.testing.assert_allclose(
        gq, fd_q, rtol=1e-4, atol=1e-5, err_msg=f"dq K={k}"
    )


# ----------------------------------------------------------------------------
# No NaN / inf anywhere on the simplex, including its vertices.


@pytest.mark.parametrize("name", NAMES)
def test_finite_values_and_grads_at_one_hots(name):
  for k in (2, 3, 21):
    p, q, equal = references.one_hot_pairs(k)
    value = BATCH.values(name, p, q)
    gp, gq = BATCH.grads(name, p, q)
    chex.assert_tree_all_finite((value, gp, gq))
    # One vertex against interior points, and the other way round.
    inner = references.simplex(np.random.default_rng(k), (k * k,), k)
    chex.assert_tree_all_finite(
        (
            BATCH.values(name, p, inner),
            BATCH.grads(name, p, inner),
            BATCH.grads(name, inner, q),
        )
    )
    if name in ("cce", "lq"):
      # Documented: the clamped quantity (pᵀq, resp. 1 - ½‖p - q‖²) gets zero
      # gradient, so the relaxation is flat at orthogonal one-hots.
      np.testing.assert_array_equal(gp[~equal], 0.0)
      np.testing.assert_array_equal(gq[~equal], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_finite_through_softmax_of_large_logits(name):
  """Gradients w.r.t. logits stay finite when softmax saturates to one-hots."""
  rng = np.random.default_rng(7)
  k = 3
  vertex_p, vertex_q, equal = references.one_hot_pairs(k)
  signs = np.sign(rng.standard_normal((8, k))).astype(np.float32)
  scales = (1.0, 10.0, 30.0, 45.0, 60.0, 100.0, 1e4)
  # Per scale: all vertex pairs (argmax equal or not), then random ±scale
  # logits (ties give two-hot and three-hot distributions).
  lp = np.concatenate(
      [
          np.concatenate([s * (2 * vertex_p - 1), s * signs])
          for s in scales
      ]
  )
  lq = np.concatenate(
      [
          np.concatenate([s * (2 * vertex_q - 1), s * signs[::-1]])
          for s in scales
      ]
  )
  value, glp, glq = BATCH.logit_grads(name, lp, lq)
  sig = lambda x: np.asarray(
      jax.nn.softmax(references.pad_rows(x), axis=-1)
  )[: len(x)]
  p, q = sig(lp), sig(lq)
  out = BATCH.values(name, p, q)
  chex.assert_tree_all_finite((value, glp, glq, out))
  # At ±1e4 softmax is exactly one-hot: the vertex values of the relaxation.
  last = slice(len(lp) - len(equal) - len(signs), len(lp) - len(signs))
  np.testing.assert_array_equal(p[last], vertex_p)
  np.testing.assert_allclose(out[last][equal], 0.0, atol=1e-7)
  expected = references.CAP if name in LOG_NAMES else 1.0
  np.testing.assert_allclose(out[last][~equal], expected, rtol=1e-6)
  gp, gq = BATCH.grads(name, p, q)
  chex.assert_tree_all_finite((gp, gq))


# ----------------------------------------------------------------------------
# safe_log / safe_sqrt.


def test_safe_log_values_and_gradients():
  x = np.array([-1.0, 0.0, 1e-35, 1e-31, 1e-20, 0.5, 1.0, 4.0], np.float32)
  out = potts.safe_log(jnp.asarray(x))
  expected = np.log(np.maximum(x.astype(np.float64), 1e-30))
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(potts.safe_log(x)))(jnp.asarray(x))
  chex.assert_tree_all_finite((out, grad))
  # Zero gradient where the argument is clamped, 1/x above.
  np.testing.assert_array_equal(grad[:4], 0.0)
  np.testing.assert_allclose(
      grad[4:], 1.0 / x[4:].astype(np.float64), rtol=1e-6
  )


def test_safe_sqrt_values_and_gradients():
  x = np.array([-1.0, 0.0, 1e-35, 1e-31, 1e-20, 0.25, 1.0, 4.0], np.float32)
  out = potts.safe_sqrt(jnp.asarray(x))
  expected = np.sqrt(np.maximum(x.astype(np.float64), 1e-30))
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  grad = jax.grad(lambda x: jnp.sum(potts.safe_sqrt(x)))(jnp.asarray(x))
  chex.assert_tree_all_finite((out, grad))
  np.testing.assert_array_equal(grad[:4], 0.0)
  np.testing.assert_allclose(
      grad[4:], 0.5 / np.sqrt(x[4:].astype(np.float64)), rtol=1e-6
  )
