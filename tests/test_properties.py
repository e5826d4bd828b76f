"""Properties of the maths, checked with hypothesis on hostile points.

* Every Potts relaxation (:mod:`potts_jax.potts`, in its ``(p, q)`` form and
  in the ``(s, a, b)`` form the solver differentiates) and every
  cross-entropy (:mod:`potts_jax.losses`) is finite, and so is its gradient,
  at points of the simplex that break naive formulas: exact vertices,
  orthogonal vertices, faces (zero components), components of 1e-30, 1e-38,
  subnormals, for K from 1 to 64. All of them are nonnegative there.
* The solver (:func:`potts_jax.solver.solve`) keeps every scribbled pixel at
  its one-hot label and every output on the simplex (nonnegative, summing to
  1 within 1e-5), for random small problems, every relaxation x
  cross-entropy pair and update method it accepts, and scribbles covering no
  pixel, some or all.

Compilation is kept low: the functions are jitted once per K for a few K,
the pair sweep shares one problem shape, and hypothesis runs derandomised
with fixed small budgets.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from potts_jax import losses
from potts_jax import potts
from potts_jax import solver

#: Class counts the functions are compiled for (1 and 64 the extremes; one
#: compilation each, the costly part of these tests).
KS = (1, 2, 3, 8, 21, 64)
#: Rows (point pairs) per example.
ROWS = 16
#: Tiny components: far below float32's resolution next to 1, float32's
#: smallest normal neighbourhood, subnormals, the smallest subnormal.
TINY = (1e-30, 1e-38, 1e-40, 1e-44, 1.4e-45)
KINDS = ("vertex", "face", "interior", "uniform", "tiny", "tiny_face",
         "near_vertex")


def fuzz(n: int) -> settings:
  """A fixed, reproducible hypothesis budget of ``n`` examples."""
  return settings(max_examples=n, deadline=None, derandomize=True,
                  database=None, suppress_health_check=list(HealthCheck))


def _point(rng: np.random.Generator, kind: str, k: int) -> np.ndarray:
  """One float32 point of the K-simplex of the given kind."""
  p = np.zeros(k, np.float64)
  top = rng.integers(k)
  if kind == "vertex" or k == 1:
    p[top] = 1.0
  elif kind == "face":  # A random face: some components exactly 0.
    support = rng.random(k) < 0.5
    support[top] = True
    p[support] = rng.dirichlet(np.ones(support.sum()))
  elif kind == "interior":
    p = rng.dirichlet(np.full(k, rng.choice([0.05, 1.0, 10.0])))
  elif kind == "uniform":
    p[:] = 1.0 / k
  elif kind in ("tiny", "tiny_face"):  # A vertex plus tiny components.
    others = np.flatnonzero(np.arange(k) != top)
    chosen = others if kind == "tiny" else others[rng.random(k - 1) < 0.5]
    p[chosen] = rng.choice(TINY, size=chosen.size)
    p[top] = 1.0
  elif kind == "near_vertex":
    eps = rng.choice([1e-3, 1e-7, 1e-12])
    p[:] = eps / (k - 1)
    p[top] = 1.0 - eps
  out = p.astype(np.float32)
  out[top] += np.float32(1.0) - out.sum(dtype=np.float32)  # Sum 1 in float32.
  return np.maximum(out, 0.0)


@st.composite
def point_pairs(draw, k: int):
  """``(p, q)`` ``[ROWS, K]`` float32: random kinds, q also equal to p or a
  vertex orthogonal to p's largest component."""
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  p_kinds = draw(st.lists(st.sampled_from(KINDS), min_size=ROWS,
                          max_size=ROWS))
  q_kinds = draw(st.lists(st.sampled_from(KINDS + ("same", "orthogonal")),
                          min_size=ROWS, max_size=ROWS))
  p = np.stack([_point(rng, kind, k) for kind in p_kinds])
  q = np.empty_like(p)
  for i, kind in enumerate(q_kinds):
    if kind == "same":
      q[i] = p[i]
    elif kind == "orthogonal":
      q[i] = 0.0
      q[i, (int(np.argmax(p[i])) + 1) % k] = 1.0
    else:
      q[i] = _point(rng, kind, k)
  return p, q


def _stats_grads(fn, p, q):
  """The solver's view of a relaxation: ``fn(s, a, b)`` and its partials
  (the solver's pair gradient is ``f_s q + 2 f_a p``) at ``s = pᵀq``,
  ``a = ‖p‖²``, ``b = ‖q‖²``."""
  s, a, b = (jnp.sum(p * q, -1), jnp.sum(p * p, -1), jnp.sum(q * q, -1))
  grads = jax.grad(lambda *v: jnp.sum(fn(*v)), argnums=(0, 1, 2))(s, a, b)
  return fn(s, a, b), grads


@jax.jit
def _everything(p, q):
  """Values and gradients of every relaxation and cross-entropy at rows
  ``(p, q)``: name -> (values [ROWS], gradients)."""
  out = {}
  for name in potts.NAMES:
    fn = potts.relaxation(name)
    grads = jax.grad(lambda p, q: jnp.sum(fn(p, q)), argnums=(0, 1))(p, q)
    out[f"potts.{name}"] = (fn(p, q), grads)
    values, stat_grads = _stats_grads(potts.STATS[name], p, q)
    out[f"potts.STATS[{name}]"] = (values, stat_grads)
  for name in losses.NAMES:
    fn = losses.cross_entropy(name)
    grads = jax.grad(lambda s, y: jnp.sum(fn(s, y)), argnums=(0, 1))(p, q)
    out[f"losses.{name}"] = (fn(p, q), grads)
    # Both argument orders: the network's σ and the label y are both points.
    grads = jax.grad(lambda s, y: jnp.sum(fn(s, y)), argnums=(0, 1))(q, p)
    out[f"losses.{name}(q, p)"] = (fn(q, p), grads)
  return out


def _check_finite(p, q):
  for name, (values, grads) in _everything(p, q).items():
    values = np.asarray(values)
    bad = ~np.isfinite(values)
    assert not bad.any(), (name, p[bad], q[bad], values[bad])
    assert (values >= -1e-5).all(), (name, values.min())
    for g in grads:
      g = np.asarray(g)
      rows = ~np.isfinite(g).reshape(len(p), -1).all(-1)
      assert not rows.any(), (name, "gradient", p[rows], q[rows], g[rows])


@pytest.mark.parametrize("k", KS)
@fuzz(25)
@given(data=st.data())
def test_relaxations_and_cross_entropies_finite_on_the_simplex(k, data):
  p, q = data.draw(point_pairs(k))
  _check_finite(p, q)


def test_the_hostile_points_are_what_they_claim():
  """The generator does produce vertices, zeros, and subnormal components."""
  rng = np.random.default_rng(0)
  tiny = np.stack([_point(rng, "tiny", 64) for _ in range(50)])
  assert (np.abs(tiny.sum(-1, dtype=np.float32) - 1) <= 1e-6).all()
  assert ((tiny > 0) & (tiny < np.finfo(np.float32).tiny)).any()  # Subnormal.
  assert (tiny == np.float32(1.4e-45)).any()
  face = np.stack([_point(rng, "face", 8) for _ in range(50)])
  assert (face == 0).any() and (face >= 0).all()
  assert set(np.unique(_point(rng, "vertex", 5))) == {0.0, 1.0}


# ----------------------------------------------------------------------------
# The solver.

#: Every pair the solver accepts (its checks: every relaxation with every
#: cross-entropy on a grid neighbourhood).
PAIRS = [(r, h) for r in potts.NAMES for h in losses.NAMES]
B, H, W, K = 2, 4, 5, 3  # The shared shape of the pair sweep.
STEPS = 4


@st.composite
def problems(draw, b, h, w, k):
  """``(logits, image, labels)`` of one shape: logits of any scale (softmax
  underflows to exact zeros at 50) or a checkerboard of confident classes
  (neighbours' ``yᵀy`` tiny, where the log relaxations' gradients blow up),
  scribbles covering none, some or every pixel, some padding."""
  rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
  scale = draw(st.sampled_from([0.0, 1.0, 5.0, 50.0]))
  logits = (rng.normal(size=(b, h, w, k)) * scale).astype(np.float32)
  if draw(st.booleans()):  # Checkerboard: class 0 / 1 with margin 2 scale.
    board = np.indices((h, w)).sum(0) % 2 == 1
    logits = np.full((b, h, w, k), -scale, np.float32)
    logits[..., 0] = np.where(board, scale, -scale)
    logits[..., 1] = np.where(board, -scale, scale)
  image = rng.uniform(0, 255, (b, h, w, 3)).astype(np.float32)
  if draw(st.booleans()):
    image[:] = 128.0  # Uniform colour: every affinity 1.
  cover = draw(st.sampled_from(["none", "some", "all", "all_one_class"]))
  labels = rng.integers(0, k, (b, h, w)).astype(np.int32)
  if cover == "none":
    labels[:] = 255
  elif cover == "some":
    labels[rng.random((b, h, w)) < 0.7] = 255
  elif cover == "all_one_class":
    labels[:] = rng.integers(k)
  if draw(st.booleans()):
    labels[:, :, -1] = 254  # Padding.
  return logits, image, labels


def _check_solution(y, labels, k):
  y = np.asarray(y)
  assert y.shape == labels.shape + (k,) and y.dtype == np.float32
  assert np.isfinite(y).all()
  assert (y >= 0).all(), y.min()
  np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
  scribbled = (labels != 255) & (labels != 254)
  onehot = np.eye(k, dtype=np.float32)[np.where(scribbled, labels, 0)]
  np.testing.assert_array_equal(y[scribbled], onehot[scribbled])


@pytest.mark.parametrize("relaxation, cross_entropy", PAIRS)
@fuzz(3)
@given(data=st.data())
def test_solver_keeps_scribbles_and_the_simplex(relaxation, cross_entropy,
                                                data):
  logits, image, labels = data.draw(problems(B, H, W, K))
  y = solver.solve(logits, image, labels, relaxation=relaxation,
                   cross_entropy=cross_entropy, num_steps=STEPS, lam=50.0)
  _check_solution(y, labels, K)


@fuzz(4)  # Each shape compiles the solver once.
@given(data=st.data(), shape=st.tuples(st.integers(3, 8), st.integers(3, 8),
                                       st.integers(2, 5)))
def test_solver_any_small_shape(data, shape):
  h, w, k = shape
  logits, image, labels = data.draw(problems(1, h, w, k))
  y = solver.solve(logits, image, labels, num_steps=STEPS)
  _check_solution(y, labels, k)


@pytest.mark.parametrize("method, cross_entropy", [
    ("adam", "rce"), ("mirror", "cce"), ("mirror_momentum", "q")])
@fuzz(3)
@given(data=st.data())
def test_solver_methods_keep_scribbles_and_the_simplex(method, cross_entropy,
                                                       data):
  logits, image, labels = data.draw(problems(B, H, W, K))
  y = solver.solve(logits, image, labels, relaxation="cd",
                   cross_entropy=cross_entropy, method=method,
                   num_steps=STEPS, lam=50.0)
  _check_solution(y, labels, K)


def test_solver_single_class():
  """K = 1 is accepted: every pixel gets the only point of the simplex."""
  labels = np.full((1, 3, 4), 255, np.int32)
  labels[0, 0, 0] = 0
  y = solver.solve(np.full((1, 3, 4, 1), 3.0, np.float32),
                   np.zeros((1, 3, 4, 3), np.float32), labels,
                   num_steps=STEPS)
  _check_solution(y, labels, 1)
