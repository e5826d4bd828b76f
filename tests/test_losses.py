"""Tests of potts_jax.losses: cross-entropies H(σ, y) and the network losses.

Expected values come from float64 numpy written here from the formulas of
ARCHITECTURE §3 (σ first): ce -Σ y ln σ · rce -Σ σ ln y · cce -ln σᵀy ·
q ½‖σ - y‖², the partial cross-entropy on scribbles, the self-labeling loss and
the gradient-descent loss (eq. 4) with grid pairs built by explicit loops over
pixels. The library computes in float32; references are evaluated at the
float32-rounded inputs.
"""

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import losses
from potts_jax import potts

NAMES = ("ce", "rce", "cce", "q")
NAMED_FUNCTIONS = {
    "ce": losses.ce,
    "rce": losses.rce,
    "cce": losses.cce,
    "q": losses.quadratic,
}
RELAXATIONS = ("bl", "q", "nq", "cce", "cd", "lq")
UNLABELED = 255
PADDING = 254
RTOL = 1e-5
ATOL = 1e-5
# Every [N, K] cross-entropy evaluation goes through one jitted function of all
# four, on inputs padded to ROWS rows: one compilation per K. Rows are
# independent, so padding changes nothing in the kept rows. (Eager calls are
# tested separately: batch shapes, variants.)
ROWS = 512
# Image shape [B, H, W] of every loss test (one shape: fewer compilations).
SHAPE = (2, 5, 6)


def _cap():
  """The documented finite value of an infinite log, -ln EPS."""
  return -np.log(potts.EPS)


# ----------------------------------------------------------------------------
# Independent float64 numpy references.


def _ref_h(name, sigma, y):
  """float64 H(σ, y) for ``[..., K]`` inputs, straight from the formula."""
  sigma = np.asarray(sigma, np.float64)
  y = np.asarray(y, np.float64)
  if name == "ce":
    return -np.sum(y * np.log(sigma), axis=-1)
  if name == "rce":
    return -np.sum(sigma * np.log(y), axis=-1)
  if name == "cce":
    return -np.log(np.sum(sigma * y, axis=-1))
  if name == "q":
    return 0.5 * np.sum((sigma - y) ** 2, axis=-1)
  raise AssertionError(name)


def _ref_h_grads(name, sigma, y, rel_step=1e-5):
  """Central differences of ``sum _ref_h`` w.r.t. σ and y (rows independent).

  Each coordinate x is stepped by ``rel_step * x`` so that the stencil stays
  inside the open simplex's positive orthant even for tiny entries.
  """
  args = [np.asarray(sigma, np.float64), np.asarray(y, np.float64)]
  grads = []
  for which in (0, 1):
    grad = np.zeros_like(args[which])
    for k in range(args[which].shape[-1]):
      plus, minus = list(args), list(args)
      step = np.zeros_like(args[which])
      step[..., k] = rel_step * args[which][..., k]
      plus[which] = args[which] + step
      minus[which] = args[which] - step
      grad[..., k] = (_ref_h(name, *plus) - _ref_h(name, *minus)) / (
          2 * step[..., k]
      )
    grads.append(grad)
  return tuple(grads)


def _ref_softmax(logits):
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(axis=-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(axis=-1, keepdims=True)


def _ref_log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _ref_pce(logits, labels):
  """Mean over scribbled pixels of -ln softmax at the label; 0 if none."""
  log_sigma = _ref_log_softmax(logits)
  total, count = 0.0, 0
  for b, r, c in np.ndindex(*labels.shape):
    label = int(labels[b, r, c])
    if label in (UNLABELED, PADDING):
      continue
    total -= log_sigma[b, r, c, label]
    count += 1
  return total / count if count else 0.0


def _ref_unlabeled_mean(values, labels):
  """Mean of ``values[b, r, c]`` over the 255 pixels; 0 if none."""
  picked = [
      values[idx]
      for idx in np.ndindex(*labels.shape)
      if labels[idx] == UNLABELED
  ]
  return float(np.mean(picked)) if picked else 0.0


def _ref_self_labeling(logits, y, labels, name, eta):
  h = _ref_h(name, _ref_softmax(logits), y)
  return _ref_pce(logits, labels) + eta * _ref_unlabeled_mean(h, labels)


def _ref_relaxation(name, p, q):
  """float64 Potts relaxation P(p, q) of two ``[K]`` vectors."""
  dot = float(p @ q)
  norms = float(np.linalg.norm(p) * np.linalg.norm(q))
  sq_dist = float(np.sum((p - q) ** 2))
  return {
      "bl": lambda: 1.0 - dot,
      "q": lambda: 0.5 * sq_dist,
      "nq": lambda: 1.0 - dot / norms,
      "cce": lambda: -math.log(dot),
      "cd": lambda: -math.log(dot / norms),
      "lq": lambda: -math.log(1.0 - 0.5 * sq_dist),
  }[name]()


def _brute_pairs(image, labels, neighborhood, sigma_rgb):
  """``[(b, i, j, w_ij)]`` for every unordered pair of neighbouring pixels.

  Explicit double loop over all pixel pairs of each image; pairs touching a
  padding pixel (254) are dropped.
  """
  batch, height, width = labels.shape
  pixels = [(r, c) for r in range(height) for c in range(width)]
  pairs = []
  for b in range(batch):
    for a, (ri, ci) in enumerate(pixels):
      for rj, cj in pixels[a + 1 :]:
        dr, dc = abs(rj - ri), abs(cj - ci)
        if neighborhood == "nn4" and dr + dc != 1:
          continue
        if neighborhood == "nn8" and max(dr, dc) != 1:
          continue
        if PADDING in (labels[b, ri, ci], labels[b, rj, cj]):
          continue
        diff = image[b, ri, ci].astype(np.float64) - image[b, rj, cj]
        w = math.exp(-float(diff @ diff) / (2.0 * sigma_rgb**2))
        if dr == 1 and dc == 1:
          w /= math.sqrt(2.0)
        pairs.append((b, (ri, ci), (rj, cj), w))
  return pairs


def _ref_gradient_descent_loss(
    logits, image, labels, relaxation, neighborhood, eta, lam, sigma_rgb
):
  sigma = _ref_softmax(logits)
  entropy = -np.sum(sigma * _ref_log_softmax(logits), axis=-1)
  pairs = _brute_pairs(image, labels, neighborhood, sigma_rgb)
  potts_sum = sum(
      w * _ref_relaxation(relaxation, sigma[(b, *i)], sigma[(b, *j)])
      for b, i, j, w in pairs
  )
  return (
      _ref_pce(logits, labels)
      + eta * _ref_unlabeled_mean(entropy, labels)
      + lam * potts_sum / max(len(pairs), 1)
  )


# ----------------------------------------------------------------------------
# Inputs.


def _simplex(rng, shape, k, alpha=1.0):
  return rng.dirichlet(np.full(k, alpha), size=shape).astype(np.float32)


def _floor(x, lo=1e-4):
  """Moves simplex points away from the boundary: every entry >= ~lo."""
  x = np.maximum(np.asarray(x, np.float64), lo)
  return (x / x.sum(axis=-1, keepdims=True)).astype(np.float32)


def _near_vertex(rng, n, k, vertex, eps):
  r = rng.dirichlet(np.ones(k), size=n)
  r[0] = 1.0 / (k - 1)
  r[0, vertex] = 0.0  # (.., 1-ε, ε/(K-1), ..)
  return ((1.0 - eps) * np.eye(k)[vertex] + eps * r).astype(np.float32)


def _pad(x):
  x = np.asarray(x, np.float32)
  assert x.ndim == 2 and x.shape[0] <= ROWS, x.shape
  fill = np.full((ROWS - x.shape[0], x.shape[1]), 1.0 / x.shape[1], np.float32)
  return jnp.asarray(np.concatenate([x, fill]))


def _sum_grads(fn, sigma, y):
  return jax.grad(lambda s, y: jnp.sum(fn(s, y)), argnums=(0, 1))(sigma, y)


@jax.jit
def _all_values(sigma, y):
  return jnp.stack([losses.cross_entropy(name)(sigma, y) for name in NAMES])


@jax.jit
def _all_grads(sigma, y):
  return [_sum_grads(losses.cross_entropy(name), sigma, y) for name in NAMES]


@jax.jit
def _all_logit_grads(ls, ly):
  softmax = lambda x: jax.nn.softmax(x, axis=-1)
  return [
      _sum_grads(
          lambda a, b: losses.cross_entropy(name)(softmax(a), softmax(b)),
          ls,
          ly,
      )
      for name in NAMES
  ]


def _apply(name, sigma, y):
  """H(σ, y) for ``[N, K]`` inputs."""
  return np.asarray(_all_values(_pad(sigma), _pad(y))[NAMES.index(name)])[
      : len(sigma)
  ]


def _apply_grads(name, sigma, y):
  """Gradients of ``sum H(σ, y)`` w.r.t. ``[N, K]`` σ and y."""
  gs, gy = _all_grads(_pad(sigma), _pad(y))[NAMES.index(name)]
  return np.asarray(gs)[: len(sigma)], np.asarray(gy)[: len(y)]


def _assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=""):
  np.testing.assert_allclose(
      np.asarray(actual, np.float64),
      expected,
      rtol=rtol,
      atol=atol,
      err_msg=msg,
  )


def _labels(rng, shape, num_classes, p_scribble=0.3, p_padding=0.15):
  """Random labels: classes, 255 (unlabeled) and 254 (padding)."""
  u = rng.random(shape)
  labels = np.full(shape, UNLABELED, np.int32)
  labels[u < p_scribble] = rng.integers(0, num_classes, shape)[u < p_scribble]
  labels[u > 1.0 - p_padding] = PADDING
  return labels


def _smooth_image(rng, shape, noise=12):
  """RGB in 0..255 with small neighbour differences, so weights are not ~0."""
  base = rng.integers(40, 200, (shape[0], 1, 1, 3))
  image = base + rng.integers(-noise, noise + 1, shape + (3,))
  image[:, :, : shape[2] // 2] += 60  # an edge
  return np.clip(image, 0, 255).astype(np.float32)


# ----------------------------------------------------------------------------
# Cross-entropies: names.


@pytest.mark.parametrize("name", NAMES)
def test_check_name_accepts_the_four_names(name):
  assert losses.check_name(name) == name


@pytest.mark.parametrize("bad", ["", "CE", "kl", "cd", "ce "])
def test_unknown_cross_entropy_raises_value_error_naming_it(bad):
  with pytest.raises(ValueError, match=re.escape(repr(bad))):
    losses.cross_entropy(bad)
  with pytest.raises(ValueError, match=re.escape(repr(bad))):
    losses.check_name(bad)


def test_losses_with_unknown_names_raise():
  logits = jnp.zeros((1, 2, 2, 3))
  labels = jnp.full((1, 2, 2), UNLABELED, jnp.int32)
  with pytest.raises(ValueError, match="'nope'"):
    losses.self_labeling_loss(logits, logits, labels, cross_entropy="nope")
  with pytest.raises(ValueError, match="'nope'"):
    losses.gradient_descent_loss(
        logits, jnp.zeros((1, 2, 2, 3)), labels, relaxation="nope"
    )
  with pytest.raises(ValueError, match="'nope'"):
    losses.gradient_descent_loss(
        logits, jnp.zeros((1, 2, 2, 3)), labels, neighborhood="nope"
    )


# ----------------------------------------------------------------------------
# Cross-entropies: values.


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_random_points_match_reference(name):
  rng = np.random.default_rng(0)
  for k in (2, 3, 21):
    sigma = np.concatenate(
        [_simplex(rng, (20,), k), _simplex(rng, (20,), k, 0.2)]
    )
    y = np.concatenate([_simplex(rng, (20,), k, 0.2), _simplex(rng, (20,), k)])
    _assert_close(_apply(name, sigma, y), _ref_h(name, sigma, y), msg=f"K={k}")


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_batch_shapes_and_axis(name):
  rng = np.random.default_rng(1)
  for shape, k in (((7,), 3), ((2, 3, 4), 3)):
    sigma = _simplex(rng, shape, k)
    y = _simplex(rng, shape, k)
    # Through cross_entropy(name) and through the named function, eagerly.
    for fn in (losses.cross_entropy(name), NAMED_FUNCTIONS[name]):
      out = fn(jnp.asarray(sigma), jnp.asarray(y))
      assert out.shape == shape and out.dtype == jnp.float32
      _assert_close(out, _ref_h(name, sigma, y))
  # Channels-first layout through the documented ``axis`` argument.
  out = losses.cross_entropy(name)(
      jnp.moveaxis(sigma, -1, 1), jnp.moveaxis(y, -1, 1), axis=1
  )
  _assert_close(out, _ref_h(name, sigma, y))


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_vertices(name):
  for k in (2, 3, 21):
    eye = np.eye(k, dtype=np.float32)
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    equal = (i == j).ravel()
    out = _apply(name, eye[i.ravel()], eye[j.ravel()])
    np.testing.assert_allclose(out[equal], 0.0, atol=1e-7)
    # Orthogonal one-hots: +inf for the logs, capped at -ln EPS; q gives 1.
    expected = 1.0 if name == "q" else _cap()
    np.testing.assert_allclose(out[~equal], expected, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_near_vertices_match_reference(name):
  rng = np.random.default_rng(2)
  for k in (2, 3, 21):
    sigmas, ys = [], []
    for eps in (1e-3, 1e-4, 1e-5, 1e-6):
      near0 = _near_vertex(rng, 8, k, 0, eps)
      near0b = _near_vertex(rng, 8, k, 0, eps / 7.0)
      near1 = _near_vertex(rng, 8, k, 1, eps)
      inner = _simplex(rng, (8,), k)
      for s, y in (
          (near0, near0b),
          (near0, near1),
          (near0, inner),
          (inner, near1),
      ):
        sigmas.append(s)
        ys.append(y)
    sigma, y = np.concatenate(sigmas), np.concatenate(ys)
    _assert_close(_apply(name, sigma, y), _ref_h(name, sigma, y), msg=f"K={k}")


def _all_h(sigma, y):
  """``[4, ...]``: the four cross-entropies stacked."""
  return jnp.stack([losses.cross_entropy(n)(sigma, y) for n in NAMES])


def test_cross_entropy_vmap_matches_batched_call():
  rng = np.random.default_rng(3)
  sigma = jnp.asarray(_simplex(rng, (2, 3, 4), 3))
  y = jnp.asarray(_simplex(rng, (2, 3, 4), 3))
  eager = _all_h(sigma, y)
  mapped = jax.jit(jax.vmap(_all_h, out_axes=1))(sigma, y)
  np.testing.assert_allclose(mapped, eager, rtol=1e-6, atol=1e-7)
  for index, name in enumerate(NAMES):
    _assert_close(eager[index], _ref_h(name, sigma, y))


def _values_and_grads(sigma, y, ls, ly):
  """Per cross-entropy: H(σ, y), ∂/∂(σ, y), and ∂/∂ logits through softmax."""
  softmax = lambda x: jax.nn.softmax(x, axis=-1)
  out = {}
  for name in NAMES:
    fn = losses.cross_entropy(name)
    out[name] = (
        fn(sigma, y),
        _sum_grads(fn, sigma, y),
        _sum_grads(lambda a, b: fn(softmax(a), softmax(b)), ls, ly),
    )
  return out


class CrossEntropyVariantsTest(chex.TestCase):
  """jit and no-jit agree (values and gradients) and match the reference."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_value_and_grads_match_eager(self):
    rng = np.random.default_rng(4)
    sigma = _simplex(rng, (2, 3, 4), 3)
    y = _simplex(rng, (2, 3, 4), 3)
    # Saturated logits: exact, partly orthogonal one-hots after softmax.
    ls = 1e4 * (
        2 * np.eye(3, dtype=np.float32)[rng.integers(0, 3, (2, 3, 4))] - 1
    )
    ly = 1e4 * (
        2 * np.eye(3, dtype=np.float32)[rng.integers(0, 3, (2, 3, 4))] - 1
    )
    out = self.variant(_values_and_grads)(sigma, y, ls, ly)
    eager = _values_and_grads(*map(jnp.asarray, (sigma, y, ls, ly)))
    chex.assert_trees_all_close(out, eager, rtol=1e-6, atol=1e-6)
    chex.assert_tree_all_finite(out)
    for name in NAMES:
      _assert_close(out[name][0], _ref_h(name, sigma, y))


# ----------------------------------------------------------------------------
# Cross-entropies: gradients and finiteness.


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_gradients_match_finite_differences(name):
  rng = np.random.default_rng(5)
  for k in (2, 3, 21):
    sigma = _simplex(rng, (8,), k)
    # Peaked points too, kept off the boundary so the stencil resolves them.
    y = _floor(
        np.concatenate([_simplex(rng, (4,), k), _simplex(rng, (4,), k, 0.3)])
    )
    gs, gy = _apply_grads(name, sigma, y)
    fd_s, fd_y = _ref_h_grads(name, sigma, y)
    np.testing.assert_allclose(
        gs, fd_s, rtol=1e-4, atol=1e-5, err_msg=f"dσ K={k}"
    )
    np.testing.assert_allclose(
        gy, fd_y, rtol=1e-4, atol=1e-5, err_msg=f"dy K={k}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_finite_at_one_hots_and_saturated_softmax(name):
  k = 3
  eye = np.eye(k, dtype=np.float32)
  i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  sigma, y = eye[i.ravel()], eye[j.ravel()]
  inner = _simplex(np.random.default_rng(6), (9,), k)
  for s, t in ((sigma, y), (sigma, inner), (inner, y)):
    chex.assert_tree_all_finite((_apply(name, s, t), _apply_grads(name, s, t)))
  # Through softmax of huge logits (exact one-hots in float32).
  for scale in (30.0, 60.0, 1e4):
    grads = _all_logit_grads(
        _pad(scale * (2 * sigma - 1)), _pad(scale * (2 * y - 1))
    )
    chex.assert_tree_all_finite(grads[NAMES.index(name)])


# ----------------------------------------------------------------------------
# Partial cross-entropy.


def test_partial_cross_entropy_matches_reference():
  rng = np.random.default_rng(7)
  logits = (3.0 * rng.standard_normal(SHAPE + (3,))).astype(np.float32)
  labels = _labels(rng, SHAPE, 3)
  assert {0, 1, 2, UNLABELED, PADDING} <= set(np.unique(labels))
  out = losses.partial_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  assert out.shape == ()
  _assert_close(out, _ref_pce(logits, labels))
  # Changing logits of ignored pixels changes nothing.
  ignored = (labels == UNLABELED) | (labels == PADDING)
  other = np.where(ignored[..., None], 100.0 * logits, logits)
  _assert_close(
      losses.partial_cross_entropy(jnp.asarray(other), jnp.asarray(labels)),
      _ref_pce(logits, labels),
  )


def test_partial_cross_entropy_is_zero_without_scribbles():
  rng = np.random.default_rng(8)
  logits = jnp.asarray(rng.standard_normal(SHAPE + (3,)), jnp.float32)
  labels = np.full(SHAPE, UNLABELED, np.int32)
  labels[1, :2] = PADDING
  value, grad = jax.value_and_grad(losses.partial_cross_entropy)(
      logits, jnp.asarray(labels)
  )
  assert float(value) == 0.0
  np.testing.assert_array_equal(grad, 0.0)


def test_partial_cross_entropy_finite_at_saturated_logits():
  rng = np.random.default_rng(9)
  labels = _labels(rng, SHAPE, 3)
  logits = (1e4 * np.sign(rng.standard_normal(SHAPE + (3,)))).astype(np.float32)
  value, grad = jax.value_and_grad(losses.partial_cross_entropy)(
      jnp.asarray(logits), jnp.asarray(labels)
  )
  chex.assert_tree_all_finite((value, grad))
  _assert_close(value, _ref_pce(logits, labels))


# ----------------------------------------------------------------------------
# Self-labeling loss.


@pytest.mark.parametrize("name", NAMES)
def test_self_labeling_loss_matches_reference(name):
  rng = np.random.default_rng(10)
  logits = (2.0 * rng.standard_normal(SHAPE + (3,))).astype(np.float32)
  y = _simplex(rng, SHAPE, 3, alpha=0.5)
  labels = _labels(rng, SHAPE, 3)
  for eta in (0.3, 1.7):
    out = losses.self_labeling_loss(
        jnp.asarray(logits),
        jnp.asarray(y),
        jnp.asarray(labels),
        cross_entropy=name,
        eta=eta,
    )
    assert out.shape == ()
    _assert_close(out, _ref_self_labeling(logits, y, labels, name, eta))


def test_self_labeling_loss_default_is_cce_with_eta_0_3():
  rng = np.random.default_rng(11)
  logits = rng.standard_normal(SHAPE + (3,)).astype(np.float32)
  y = _simplex(rng, SHAPE, 3)
  labels = _labels(rng, SHAPE, 3)
  out = losses.self_labeling_loss(
      jnp.asarray(logits), jnp.asarray(y), jnp.asarray(labels)
  )
  _assert_close(out, _ref_self_labeling(logits, y, labels, "cce", 0.3))


@pytest.mark.parametrize("name", NAMES)
def test_self_labeling_loss_gradients(name):
  """No gradient into y; d/dlogits matches central differences."""
  rng = np.random.default_rng(12)
  logits = (2.0 * rng.standard_normal(SHAPE + (3,))).astype(np.float32)
  y = _simplex(rng, SHAPE, 3, alpha=0.5)
  labels = _labels(rng, SHAPE, 3)

  def loss(logits, y):
    return losses.self_labeling_loss(
        logits, y, jnp.asarray(labels), cross_entropy=name, eta=0.7
    )

  g_logits, g_y = jax.grad(loss, argnums=(0, 1))(
      jnp.asarray(logits), jnp.asarray(y)
  )
  np.testing.assert_array_equal(g_y, 0.0)
  # Padding pixels take part in no term.
  np.testing.assert_array_equal(np.asarray(g_logits)[labels == PADDING], 0.0)
  for seed in range(3):
    direction = np.random.default_rng(100 + seed).standard_normal(logits.shape)
    h = 1e-5
    fd = (
        _ref_self_labeling(logits + h * direction, y, labels, name, 0.7)
        - _ref_self_labeling(logits - h * direction, y, labels, name, 0.7)
    ) / (2 * h)
    _assert_close(
        np.sum(np.asarray(g_logits, np.float64) * direction), fd, rtol=1e-4
    )


def test_self_labeling_loss_finite_at_one_hots():
  rng = np.random.default_rng(13)
  labels = _labels(rng, SHAPE, 3)
  logits = (1e4 * (2 * np.eye(3)[rng.integers(0, 3, SHAPE)] - 1)).astype(
      np.float32
  )
  y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, SHAPE)]
  for name in NAMES:
    value, grad = jax.value_and_grad(losses.self_labeling_loss)(
        jnp.asarray(logits),
        jnp.asarray(y),
        jnp.asarray(labels),
        cross_entropy=name,
    )
    chex.assert_tree_all_finite((value, grad))


# ----------------------------------------------------------------------------
# Gradient-descent loss (paper eq. 4).


def _gd_inputs(seed=14):
  rng = np.random.default_rng(seed)
  shape = SHAPE
  logits = (2.0 * rng.standard_normal(shape + (3,))).astype(np.float32)
  labels = _labels(rng, shape, 3, p_scribble=0.25, p_padding=0.0)
  labels[0, :, -2:] = PADDING  # a right padding band, as crops add
  labels[1, -1, :] = PADDING
  labels[1, 2, 3] = PADDING
  image = _smooth_image(rng, shape)
  return logits, image, labels


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_gradient_descent_loss_matches_brute_force(relaxation, neighborhood):
  logits, image, labels = _gd_inputs()
  kwargs = dict(eta=0.4, lam=2.5, sigma_rgb=7.0)
  out = losses.gradient_descent_loss(
      jnp.asarray(logits),
      jnp.asarray(image),
      jnp.asarray(labels),
      relaxation=relaxation,
      neighborhood=neighborhood,
      **kwargs,
  )
  assert out.shape == ()
  expected = _ref_gradient_descent_loss(
      logits, image, labels, relaxation, neighborhood, **kwargs
  )
  _assert_close(out, expected)


def test_gradient_descent_loss_defaults():
  logits, image, labels = _gd_inputs(15)
  out = losses.gradient_descent_loss(
      jnp.asarray(logits), jnp.asarray(image), jnp.asarray(labels)
  )
  expected = _ref_gradient_descent_loss(
      logits, image, labels, "cd", "nn4", eta=0.3, lam=6.0, sigma_rgb=9.0
  )
  _assert_close(out, expected)


# The relaxations with the most guarded logs and roots (the others are covered
# by the finite-difference tests of potts.py and the finiteness test below).
@pytest.mark.parametrize("relaxation", ["nq", "cd", "lq"])
def test_gradient_descent_loss_gradients(relaxation):
  """d/dlogits vs central differences of the brute force; 0 on padding."""
  logits, image, labels = _gd_inputs(16)
  kwargs = dict(eta=0.4, lam=2.5, sigma_rgb=7.0)

  def loss(logits):
    return losses.gradient_descent_loss(
        logits,
        jnp.asarray(image),
        jnp.asarray(labels),
        relaxation=relaxation,
        neighborhood="nn8",
        **kwargs,
    )

  grad = np.asarray(jax.grad(loss)(jnp.asarray(logits)), np.float64)
  chex.assert_tree_all_finite(grad)
  np.testing.assert_array_equal(grad[labels == PADDING], 0.0)
  direction = np.random.default_rng(17).standard_normal(logits.shape)
  h = 1e-5
  fd = (
      _ref_gradient_descent_loss(
          logits + h * direction, image, labels, relaxation, "nn8", **kwargs
      )
      - _ref_gradient_descent_loss(
          logits - h * direction, image, labels, relaxation, "nn8", **kwargs
      )
  ) / (2 * h)
  _assert_close(np.sum(grad * direction), fd, rtol=1e-4)


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
def test_gradient_descent_loss_finite_at_saturated_logits(neighborhood):
  rng = np.random.default_rng(18)
  _, image, labels = _gd_inputs(18)
  # Neighbouring pixels with different argmax: orthogonal one-hot pairs.
  logits = (1e4 * (2 * np.eye(3)[rng.integers(0, 3, labels.shape)] - 1)).astype(
      np.float32
  )
  for relaxation in RELAXATIONS:
    value, grad = jax.value_and_grad(losses.gradient_descent_loss)(
        jnp.asarray(logits),
        jnp.asarray(image),
        jnp.asarray(labels),
        relaxation=relaxation,
        neighborhood=neighborhood,
    )
    chex.assert_tree_all_finite((value, grad))
