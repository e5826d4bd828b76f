"""Tests of potts_jax.potts: the six Potts relaxations and the safe ln / √.

Every expected value comes from an independent float64 numpy implementation
written straight from the formulas of ARCHITECTURE §3:

  bl 1 - pᵀq · q ½‖p - q‖² · nq 1 - pᵀq/(‖p‖‖q‖) · cce -ln pᵀq ·
  cd -ln(pᵀq/(‖p‖‖q‖)) · lq -ln(1 - ½‖p - q‖²).

The library computes in float32, so the references are evaluated at the
float32-rounded inputs (the point the library actually sees).
"""

import re

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import potts

NAMES = ("bl", "q", "nq", "cce", "cd", "lq")
# The relaxations that are infinite at orthogonal one-hots.
LOG_NAMES = ("cce", "cd", "lq")
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


def _cap():
  """The documented finite value of an infinite relaxation, -ln EPS."""
  return -np.log(potts.EPS)


# ----------------------------------------------------------------------------
# Independent float64 numpy references.


def _ref(name, p, q):
  """float64 numpy P(p, q) for ``[..., K]`` inputs, straight from the formula."""
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  dot = np.sum(p * q, axis=-1)
  norms = np.linalg.norm(p, axis=-1) * np.linalg.norm(q, axis=-1)
  sq_dist = np.sum((p - q) ** 2, axis=-1)
  with np.errstate(divide="ignore"):
    if name == "bl":
      return 1.0 - dot
    if name == "q":
      return 0.5 * sq_dist
    if name == "nq":
      return 1.0 - dot / norms
    if name == "cce":
      return -np.log(dot)
    if name == "cd":
      return -np.log(dot / norms)
    if name == "lq":
      return -np.log(1.0 - 0.5 * sq_dist)
  raise AssertionError(name)


def _ref_grads(name, p, q, h=1e-6):
  """Central finite differences of ``sum(_ref(name, p, q))`` w.r.t. p and q.

  Rows are independent, so coordinate ``k`` of every row is perturbed at once.
  """
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  grads = []
  for which in (0, 1):
    grad = np.zeros_like(p)
    for k in range(p.shape[-1]):
      step = np.zeros_like(p)
      step[..., k] = h
      args_plus = [p, q]
      args_minus = [p, q]
      args_plus[which] = args_plus[which] + step
      args_minus[which] = args_minus[which] - step
      grad[..., k] = (_ref(name, *args_plus) - _ref(name, *args_minus)) / (2 * h)
    grads.append(grad)
  return tuple(grads)


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
    tol = tol + 8.0 * U32 / arg
  return tol


def _assert_matches_ref(name, actual, p32, q32):
  expected = _ref(name, p32, q32)
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
# Inputs.


def _simplex(rng, shape, k, alpha=1.0):
  """float32 random points of the simplex, ``[*shape, k]``."""
  return rng.dirichlet(np.full(k, alpha), size=shape).astype(np.float32)


def _near_vertex(rng, n, k, vertex, eps, spread="uniform"):
  """``[n, k]`` float32 points ``(1-ε) e_vertex + ε r``, r on the simplex.

  ``spread='uniform'`` gives the point (.., 1-ε, ε/(K-1), ..) (r uniform over
  the other classes); ``'random'`` draws r from a flat Dirichlet.
  """
  if spread == "uniform":
    r = np.full((n, k), 1.0 / (k - 1))
    r[:, vertex] = 0.0
  else:
    r = rng.dirichlet(np.ones(k), size=n)
  return ((1.0 - eps) * np.eye(k)[vertex] + eps * r).astype(np.float32)


def _one_hot_pairs(k):
  """All ``k*k`` pairs of vertices ``(e_i, e_j)``: equal and orthogonal."""
  eye = np.eye(k, dtype=np.float32)
  i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  return eye[i.ravel()], eye[j.ravel()], (i == j).ravel()


def _sum_grads(fn, p, q):
  return jax.grad(lambda p, q: jnp.sum(fn(p, q)), argnums=(0, 1))(p, q)


def _logit_grads(fn, lp, lq):
  def total(lp, lq):
    return jnp.sum(fn(jax.nn.softmax(lp, axis=-1), jax.nn.softmax(lq, axis=-1)))

  return jax.value_and_grad(total, argnums=(0, 1))(lp, lq)


# ----------------------------------------------------------------------------
# Names.


@pytest.mark.parametrize("name", NAMES)
def test_relaxation_returns_the_named_function(name):
  assert potts.relaxation(name) is NAMED_FUNCTIONS[name]
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
  np.testing.assert_allclose(_cap(), 69.08, atol=5e-3)


# ----------------------------------------------------------------------------
# Values against the float64 reference.


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)], ids=["7", "2x3x4"])
def test_random_simplex_points_match_reference(name, shape):
  rng = np.random.default_rng(0)
  for k in (2, 3, 21):
    p = _simplex(rng, shape, k)
    # Also a peaked distribution, which puts entries near 0 and near 1.
    q = _simplex(rng, shape, k, alpha=0.2)
    for fn in (potts.relaxation(name), NAMED_FUNCTIONS[name]):
      out = fn(jnp.asarray(p), jnp.asarray(q))
      assert out.shape == shape
      assert out.dtype == jnp.float32
      _assert_matches_ref(name, out, p, q)
      _assert_matches_ref(name, fn(jnp.asarray(q), jnp.asarray(p)), q, p)


@pytest.mark.parametrize("name", NAMES)
def test_stats_form_matches_reference(name):
  rng = np.random.default_rng(1)
  p = _simplex(rng, (11,), 5)
  q = _simplex(rng, (11,), 5)
  p64, q64 = p.astype(np.float64), q.astype(np.float64)
  s = np.sum(p64 * q64, -1).astype(np.float32)
  a = np.sum(p64 * p64, -1).astype(np.float32)
  b = np.sum(q64 * q64, -1).astype(np.float32)
  out = potts.STATS[name](jnp.asarray(s), jnp.asarray(a), jnp.asarray(b))
  _assert_matches_ref(name, out, p, q)


@pytest.mark.parametrize("name", NAMES)
def test_vertices_equal_and_orthogonal(name):
  for k in (2, 3, 21):
    p, q, equal = _one_hot_pairs(k)
    out = np.asarray(potts.relaxation(name)(jnp.asarray(p), jnp.asarray(q)))
    # Equal one-hots: every relaxation is exactly 0 there.
    np.testing.assert_allclose(out[equal], 0.0, atol=1e-7)
    if name in LOG_NAMES:
      # The true value is +inf; the library returns the documented cap.
      assert np.all(np.isinf(_ref(name, p[~equal], q[~equal])))
      np.testing.assert_allclose(out[~equal], _cap(), rtol=1e-6)
    else:
      np.testing.assert_allclose(out[~equal], 1.0, rtol=1e-6)
      _assert_matches_ref(name, out, p, q)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spread", ["uniform", "random"])
def test_near_vertices_match_reference(name, spread):
  rng = np.random.default_rng(2)
  for k in (2, 3, 21):
    for eps in (1e-3, 1e-4, 1e-5, 1e-6):
      n = 1 if spread == "uniform" else 64
      near0 = _near_vertex(rng, n, k, 0, eps, spread)
      other0 = _near_vertex(rng, n, k, 0, eps / 3.0, "random")
      near1 = _near_vertex(rng, n, k, 1, eps, spread)
      vertex0 = np.tile(np.eye(k, dtype=np.float32)[0], (n, 1))
      cases = {
          "same vertex": (near0, other0),
          "same vertex, one exact": (near0, vertex0),
          "different vertices": (near0, near1),
          "different vertices, one exact": (vertex0, near1),
      }
      for case, (p, q) in cases.items():
        out = potts.relaxation(name)(jnp.asarray(p), jnp.asarray(q))
        try:
          _assert_matches_ref(name, out, p, q)
        except AssertionError as e:
          raise AssertionError(f"K={k} eps={eps} {case}: {e}") from None


def test_broadcasting_and_vmap_match_batched_call():
  rng = np.random.default_rng(3)
  k = 4
  p = jnp.asarray(_simplex(rng, (2, 3, 4), k))
  q = jnp.asarray(_simplex(rng, (2, 3, 4), k))
  single = jnp.asarray(_simplex(rng, (), k))
  for name in NAMES:
    fn = potts.relaxation(name)
    batched = fn(p, q)
    flat = jax.vmap(fn)(p.reshape(-1, k), q.reshape(-1, k)).reshape(2, 3, 4)
    nested = jax.vmap(jax.vmap(jax.vmap(fn)))(p, q)
    np.testing.assert_allclose(flat, batched, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(nested, batched, rtol=1e-6, atol=1e-7)
    # One distribution against many: vmap with in_axes=None vs broadcasting.
    one_vs_many = jax.vmap(fn, in_axes=(None, 0))(single, q.reshape(-1, k))
    np.testing.assert_allclose(
        one_vs_many.reshape(2, 3, 4), fn(single, q), rtol=1e-6, atol=1e-7
    )
    _assert_matches_ref(
        name, one_vs_many, np.broadcast_to(single, (24, k)), q.reshape(-1, k)
    )


class JitTest(chex.TestCase):
  """jit and no-jit give the same values and gradients, equal to the reference."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*[(n, n) for n in NAMES])
  def test_jit_matches_eager_and_reference(self, name):
    rng = np.random.default_rng(4)
    p = _simplex(rng, (2, 3, 4), 5)
    q = _simplex(rng, (2, 3, 4), 5)
    fn = potts.relaxation(name)

    def value_and_grads(p, q):
      value, grads = jax.value_and_grad(
          lambda p, q: jnp.sum(fn(p, q) * jnp.arange(1.0, 5.0)), argnums=(0, 1)
      )(p, q)
      return fn(p, q), value, grads

    out, total, grads = self.variant(value_and_grads)(p, q)
    eager_out, eager_total, eager_grads = value_and_grads(
        jnp.asarray(p), jnp.asarray(q)
    )
    chex.assert_trees_all_close(
        (out, total, grads), (eager_out, eager_total, eager_grads),
        rtol=1e-6, atol=1e-6,
    )
    _assert_matches_ref(name, out, p, q)


# ----------------------------------------------------------------------------
# Gradients against finite differences of the reference.


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
  rng = np.random.default_rng(5)
  fn = potts.relaxation(name)
  for k, shape in ((2, (5,)), (3, (2, 3)), (21, (4,))):
    p = _simplex(rng, shape, k)
    q = _simplex(rng, shape, k)
    gp, gq = _sum_grads(fn, jnp.asarray(p), jnp.asarray(q))
    fd_p, fd_q = _ref_grads(name, p, q)
    np.testing.assert_allclose(gp, fd_p, rtol=1e-4, atol=1e-5, err_msg=f"dp K={k}")
    np.testing.assert_allclose(gq, fd_q, rtol=1e-4, atol=1e-5, err_msg=f"dq K={k}")


# ----------------------------------------------------------------------------
# No NaN / inf anywhere on the simplex, including its vertices.


@pytest.mark.parametrize("name", NAMES)
def test_finite_values_and_grads_at_one_hots(name):
  fn = potts.relaxation(name)
  for k in (2, 3, 21):
    p, q, equal = _one_hot_pairs(k)
    p, q = jnp.asarray(p), jnp.asarray(q)
    value = fn(p, q)
    gp, gq = _sum_grads(fn, p, q)
    chex.assert_tree_all_finite((value, gp, gq))
    # One vertex against interior points, and the other way round.
    inner = jnp.asarray(_simplex(np.random.default_rng(k), (k * k,), k))
    chex.assert_tree_all_finite(
        (fn(p, inner), _sum_grads(fn, p, inner), _sum_grads(fn, inner, q))
    )
    if name in ("cce", "lq"):
      # Documented: the clamped quantity (pᵀq, resp. 1 - ½‖p - q‖²) gets zero
      # gradient, so the relaxation is flat at orthogonal one-hots.
      np.testing.assert_array_equal(gp[~equal], 0.0)
      np.testing.assert_array_equal(gq[~equal], 0.0)


@pytest.mark.parametrize("name", NAMES)
def test_finite_through_softmax_of_large_logits(name):
  """Gradients w.r.t. logits stay finite when softmax saturates to one-hots."""
  fn = potts.relaxation(name)
  rng = np.random.default_rng(6)
  k = 3
  eye = np.eye(k, dtype=np.float32)
  i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  equal = (i == j).ravel()
  signs = np.sign(rng.standard_normal((8, k))).astype(np.float32)
  for scale in (1.0, 10.0, 30.0, 45.0, 60.0, 100.0, 1e4):
    lp = scale * (2.0 * eye[i.ravel()] - 1.0)
    lq = scale * (2.0 * eye[j.ravel()] - 1.0)
    value, (glp, glq) = _logit_grads(fn, jnp.asarray(lp), jnp.asarray(lq))
    chex.assert_tree_all_finite((value, glp, glq, fn(jax.nn.softmax(lp), jax.nn.softmax(lq))))
    # Random ±scale logits (ties give two-hot and three-hot distributions).
    value, grads = _logit_grads(
        fn, jnp.asarray(scale * signs), jnp.asarray(scale * signs[::-1])
    )
    chex.assert_tree_all_finite((value, grads))
    if scale == 1e4:
      # softmax is exactly one-hot here: the vertex values of the relaxation.
      out = np.asarray(fn(jax.nn.softmax(lp), jax.nn.softmax(lq)))
      np.testing.assert_allclose(out[equal], 0.0, atol=1e-7)
      expected = _cap() if name in LOG_NAMES else 1.0
      np.testing.assert_allclose(out[~equal], expected, rtol=1e-6)


# ----------------------------------------------------------------------------
# safe_log / safe_sqrt.


def test_safe_log_values_and_gradients():
  x = np.array([-1.0, 0.0, 1e-31, 1e-30, 1e-20, 0.5, 1.0, 4.0], np.float32)
  out = potts.safe_log(jnp.asarray(x))
  expected = np.log(np.maximum(x.astype(np.float64), 1e-30))
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  grad = jax.vmap(jax.grad(potts.safe_log))(jnp.asarray(x))
  chex.assert_tree_all_finite((out, grad))
  # Zero gradient where the argument is clamped, 1/x above.
  np.testing.assert_array_equal(grad[:4], 0.0)
  np.testing.assert_allclose(grad[4:], 1.0 / x[4:].astype(np.float64), rtol=1e-6)


def test_safe_sqrt_values_and_gradients():
  x = np.array([-1.0, 0.0, 1e-31, 1e-30, 1e-20, 0.25, 1.0, 4.0], np.float32)
  out = potts.safe_sqrt(jnp.asarray(x))
  expected = np.sqrt(np.maximum(x.astype(np.float64), 1e-30))
  np.testing.assert_allclose(out, expected, rtol=1e-6)
  grad = jax.vmap(jax.grad(potts.safe_sqrt))(jnp.asarray(x))
  chex.assert_tree_all_finite((out, grad))
  np.testing.assert_array_equal(grad[:4], 0.0)
  np.testing.assert_allclose(
      grad[4:], 0.5 / np.sqrt(x[4:].astype(np.float64)), rtol=1e-6
  )
