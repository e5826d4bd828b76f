"""Tests of potts_jax.losses: cross-entropies H(σ, y) and the network losses.

Expected values come from the float64 numpy references of tests/references.py,
written from the formulas of the paper (σ first): ce -Σ y ln σ ·
rce -Σ σ ln y · cce -ln σᵀy · q ½‖σ - y‖², the partial cross-entropy on
scribbles, the self-labeling loss and the gradient-descent loss (eq. 4) with
grid pairs built by explicit loops over pixels. The library computes in
float32; references are evaluated at the float32-rounded inputs.
"""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import losses
from potts_jax import solver
from tests import references

def _gd(logits, image, labels, axis_name=None, **energy):
  """:func:`losses.regularized_loss` with ``energy``'s fields as keywords."""
  return losses.regularized_loss(logits, image, labels,
                                 solver.EnergyParams(**energy),
                                 axis_name=axis_name)


NAMES = references.CROSS_ENTROPIES
NAMED_FUNCTIONS = {
    "ce": losses.ce,
    "rce": losses.rce,
    "cce": losses.cce,
    "q": losses.quadratic,
}
RELAXATIONS = references.RELAXATIONS
UNLABELED = references.UNLABELED
PADDING = references.PADDING
RTOL = 1e-5
ATOL = 1e-5
# Every [N, K] cross-entropy evaluation goes through one jitted function of all
# four. (Eager calls are tested separately: batch shapes, variants.)
BATCH = references.RowBatch(losses.cross_entropy, NAMES)
# Image shape [B, H, W] of every loss test (one shape: fewer compilations).
SHAPE = (2, 5, 6)


def _assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=""):
  np.testing.assert_allclose(
      np.asarray(actual, np.float64),
      expected,
      rtol=rtol,
      atol=atol,
      err_msg=msg,
  )


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
    _gd(
        logits, jnp.zeros((1, 2, 2, 3)), labels, relaxation="nope"
    )
  with pytest.raises(ValueError, match="'nope'"):
    _gd(
        logits, jnp.zeros((1, 2, 2, 3)), labels, neighborhood="nope"
    )


# ----------------------------------------------------------------------------
# Cross-entropies: values.


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_random_points_match_reference(name):
  rng = np.random.default_rng(0)
  for k in (2, 3, 21):
    sigma = np.concatenate([
        references.simplex(rng, (20,), k),
        references.simplex(rng, (20,), k, 0.2),
    ])
    y = np.concatenate([
        references.simplex(rng, (20,), k, 0.2),
        references.simplex(rng, (20,), k),
    ])
    expected = references.cross_entropy(name, sigma, y)
    _assert_close(BATCH.values(name, sigma, y), expected, msg=f"K={k}")


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_batch_shapes_and_axis(name):
  rng = np.random.default_rng(1)
  for shape, k in (((7,), 3), ((2, 3, 4), 3)):
    sigma = references.simplex(rng, shape, k)
    y = references.simplex(rng, shape, k)
    # Through cross_entropy(name) and through the named function, eagerly.
    for fn in (losses.cross_entropy(name), NAMED_FUNCTIONS[name]):
      out = fn(jnp.asarray(sigma), jnp.asarray(y))
      assert out.shape == shape and out.dtype == jnp.float32
      _assert_close(out, references.cross_entropy(name, sigma, y))
  # Channels-first layout through the documented ``axis`` argument.
  out = losses.cross_entropy(name)(
      jnp.moveaxis(sigma, -1, 1), jnp.moveaxis(y, -1, 1), axis=1
  )
  _assert_close(out, references.cross_entropy(name, sigma, y))


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_vertices(name):
  for k in (2, 3, 21):
    sigma, y, equal = references.one_hot_pairs(k)
    out = BATCH.values(name, sigma, y)
    np.testing.assert_allclose(out[equal], 0.0, atol=1e-7)
    # Orthogonal one-hots: +inf for the logs, capped at -ln EPS; q gives 1.
    expected = 1.0 if name == "q" else references.CAP
    np.testing.assert_allclose(out[~equal], expected, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_near_vertices_match_reference(name):
  rng = np.random.default_rng(2)
  for k in (2, 3, 21):
    sigmas, ys = [], []
    for eps in (1e-3, 1e-4, 1e-5, 1e-6):
      near0 = references.near_vertex(rng, 8, k, 0, eps, "mixed")
      near0b = references.near_vertex(rng, 8, k, 0, eps / 7.0, "mixed")
      near1 = references.near_vertex(rng, 8, k, 1, eps, "mixed")
      inner = references.simplex(rng, (8,), k)
      for s, y in (
          (near0, near0b),
          (near0, near1),
          (near0, inner),
          (inner, near1),
      ):
        sigmas.append(s)
        ys.append(y)
    sigma, y = np.concatenate(sigmas), np.concatenate(ys)
    expected = references.cross_entropy(name, sigma, y)
    _assert_close(BATCH.values(name, sigma, y), expected, msg=f"K={k}")


def _all_h(sigma, y):
  """``[4, ...]``: the four cross-entropies stacked."""
  return jnp.stack([losses.cross_entropy(n)(sigma, y) for n in NAMES])


def test_cross_entropy_vmap_matches_batched_call():
  rng = np.random.default_rng(3)
  sigma = jnp.asarray(references.simplex(rng, (2, 3, 4), 3))
  y = jnp.asarray(references.simplex(rng, (2, 3, 4), 3))
  eager = _all_h(sigma, y)
  mapped = jax.jit(jax.vmap(_all_h, out_axes=1))(sigma, y)
  np.testing.assert_allclose(mapped, eager, rtol=1e-6, atol=1e-7)
  for index, name in enumerate(NAMES):
    _assert_close(eager[index], references.cross_entropy(name, sigma, y))


def _values_and_grads(sigma, y, ls, ly):
  """Per cross-entropy: H(σ, y), ∂/∂(σ, y), and ∂/∂ logits through softmax."""
  out = {}
  for name in NAMES:
    fn = losses.cross_entropy(name)
    out[name] = (
        fn(sigma, y),
        references.sum_grads(fn, sigma, y),
        references.logit_grads(fn, ls, ly),
    )
  return out


class CrossEntropyVariantsTest(chex.TestCase):
  """jit and no-jit agree (values and gradients) and match the reference."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_value_and_grads_match_eager(self):
    rng = np.random.default_rng(4)
    sigma = references.simplex(rng, (2, 3, 4), 3)
    y = references.simplex(rng, (2, 3, 4), 3)
    # Saturated logits: exact, partly orthogonal one-hots after softmax.
    ls = references.saturated_logits(rng, (2, 3, 4), 3)
    ly = references.saturated_logits(rng, (2, 3, 4), 3)
    out = self.variant(_values_and_grads)(sigma, y, ls, ly)
    eager = _values_and_grads(*map(jnp.asarray, (sigma, y, ls, ly)))
    chex.assert_trees_all_close(out, eager, rtol=1e-6, atol=1e-6)
    chex.assert_tree_all_finite(out)
    for name in NAMES:
      _assert_close(out[name][0], references.cross_entropy(name, sigma, y))


# ----------------------------------------------------------------------------
# Cross-entropies: gradients and finiteness.


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_gradients_match_finite_differences(name):
  rng = np.random.default_rng(5)
  for k in (2, 3, 21):
    sigma = references.simplex(rng, (8,), k)
    # Peaked points too, kept off the boundary so the stencil resolves them.
    y = references.floor_simplex(
        np.concatenate([
            references.simplex(rng, (4,), k),
            references.simplex(rng, (4,), k, 0.3),
        ])
    )
    gs, gy = BATCH.grads(name, sigma, y)
    fd_s, fd_y = references.central_differences(
        lambda s, y: references.cross_entropy(name, s, y), sigma, y
    )
    np.testing.assert_allclose(
        gs, fd_s, rtol=1e-4, atol=1e-5, err_msg=f"dσ K={k}"
    )
    np.testing.assert_allclose(
        gy, fd_y, rtol=1e-4, atol=1e-5, err_msg=f"dy K={k}"
    )


@pytest.mark.parametrize("name", NAMES)
def test_cross_entropy_finite_at_one_hots_and_saturated_softmax(name):
  k = 3
  sigma, y, _ = references.one_hot_pairs(k)
  inner = references.simplex(np.random.default_rng(6), (9,), k)
  for s, t in ((sigma, y), (sigma, inner), (inner, y)):
    chex.assert_tree_all_finite(
        (BATCH.values(name, s, t), BATCH.grads(name, s, t))
    )
  # Through softmax of huge logits (exact one-hots in float32).
  for scale in (30.0, 60.0, 1e4):
    # Value and gradients of every padded row (padding: uniform logits).
    value_and_grads = BATCH.all_logit_grads(
        references.pad_rows(scale * (2 * sigma - 1)),
        references.pad_rows(scale * (2 * y - 1)),
    )
    chex.assert_tree_all_finite(value_and_grads[NAMES.index(name)])


# ----------------------------------------------------------------------------
# Partial cross-entropy.


def test_partial_cross_entropy_matches_reference():
  rng = np.random.default_rng(7)
  logits = (3.0 * rng.standard_normal(SHAPE + (3,))).astype(np.float32)
  labels = references.random_labels(rng, SHAPE, 3)
  assert {0, 1, 2, UNLABELED, PADDING} <= set(np.unique(labels))
  out = losses.partial_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
  assert out.shape == ()
  _assert_close(out, references.partial_cross_entropy(logits, labels))
  # Changing logits of ignored pixels changes nothing.
  ignored = (labels == UNLABELED) | (labels == PADDING)
  other = np.where(ignored[..., None], 100.0 * logits, logits)
  _assert_close(
      losses.partial_cross_entropy(jnp.asarray(other), jnp.asarray(labels)),
      references.partial_cross_entropy(logits, labels),
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
  labels = references.random_labels(rng, SHAPE, 3)
  logits = (1e4 * np.sign(rng.standard_normal(SHAPE + (3,)))).astype(np.float32)
  value, grad = jax.value_and_grad(losses.partial_cross_entropy)(
      jnp.asarray(logits), jnp.asarray(labels)
  )
  chex.assert_tree_all_finite((value, grad))
  _assert_close(value, references.partial_cross_entropy(logits, labels))


# ----------------------------------------------------------------------------
# Self-labeling loss.


def _sl_inputs(seed, scale=2.0, alpha=0.5):
  """Logits, soft labels y (Dirichlet(α)) and scribbles of a loss test."""
  rng = np.random.default_rng(seed)
  logits = (scale * rng.standard_normal(SHAPE + (3,))).astype(np.float32)
  y = references.simplex(rng, SHAPE, 3, alpha=alpha)
  return logits, y, references.random_labels(rng, SHAPE, 3)


@pytest.mark.parametrize("name", NAMES)
def test_self_labeling_loss_matches_reference(name):
  logits, y, labels = _sl_inputs(10)
  for eta in (0.3, 1.7):
    out = losses.self_labeling_loss(
        *map(jnp.asarray, (logits, y, labels)), cross_entropy=name, eta=eta
    )
    assert out.shape == ()
    expected = references.self_labeling_loss(logits, y, labels, name, eta)
    _assert_close(out, expected)


def test_self_labeling_loss_default_is_cce_with_eta_0_3():
  logits, y, labels = _sl_inputs(11, scale=1.0, alpha=1.0)
  out = losses.self_labeling_loss(
      jnp.asarray(logits), jnp.asarray(y), jnp.asarray(labels)
  )
  expected = references.self_labeling_loss(logits, y, labels, "cce", 0.3)
  _assert_close(out, expected)


@pytest.mark.parametrize("name", NAMES)
def test_self_labeling_loss_gradients(name):
  """No gradient into y; d/dlogits matches central differences."""
  logits, y, labels = _sl_inputs(12)

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
  ref = lambda l: references.self_labeling_loss(l, y, labels, name, 0.7)
  for seed in range(3):
    direction = np.random.default_rng(100 + seed).standard_normal(logits.shape)
    h = 1e-5
    fd = (ref(logits + h * direction) - ref(logits - h * direction)) / (2 * h)
    _assert_close(
        np.sum(np.asarray(g_logits, np.float64) * direction), fd, rtol=1e-4
    )


def test_self_labeling_loss_finite_at_one_hots():
  rng = np.random.default_rng(13)
  labels = references.random_labels(rng, SHAPE, 3)
  logits = references.saturated_logits(rng, SHAPE, 3)
  y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, SHAPE)]
  for name in NAMES:
    value, grad = jax.value_and_grad(losses.self_labeling_loss)(
        *map(jnp.asarray, (logits, y, labels)), cross_entropy=name
    )
    chex.assert_tree_all_finite((value, grad))


# ----------------------------------------------------------------------------
# Gradient-descent loss (paper eq. 4).


def _gd_inputs(seed=14):
  rng = np.random.default_rng(seed)
  shape = SHAPE
  logits = (2.0 * rng.standard_normal(shape + (3,))).astype(np.float32)
  labels = references.random_labels(
      rng, shape, 3, p_scribble=0.25, p_padding=0.0
  )
  references.add_padding(labels, (2, 3))  # padding bands, as crops add
  image = references.smooth_image(rng, shape, noise=12, left=60)
  return logits, image, labels


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_regularized_loss_matches_brute_force(relaxation, neighborhood):
  logits, image, labels = _gd_inputs()
  kwargs = dict(eta=0.4, lam=2.5, sigma_rgb=7.0)
  out = _gd(
      *map(jnp.asarray, (logits, image, labels)),
      relaxation=relaxation,
      neighborhood=neighborhood,
      **kwargs,
  )
  assert out.shape == ()
  expected = references.regularized_loss(
      logits, image, labels, relaxation, neighborhood, **kwargs
  )
  _assert_close(out, expected)


def test_regularized_loss_defaults():
  logits, image, labels = _gd_inputs(15)
  out = _gd(
      jnp.asarray(logits), jnp.asarray(image), jnp.asarray(labels)
  )
  expected = references.regularized_loss(
      logits, image, labels, "cd", "nn4", eta=0.3, lam=6.0, sigma_rgb=9.0
  )
  _assert_close(out, expected)


# The relaxations with the most guarded logs and roots (the others are covered
# by the finite-difference tests of potts.py and the finiteness test below).
@pytest.mark.parametrize("relaxation", ["nq", "cd", "lq"])
def test_regularized_loss_gradients(relaxation):
  """d/dlogits vs central differences of the brute force; 0 on padding."""
  logits, image, labels = _gd_inputs(16)
  kwargs = dict(eta=0.4, lam=2.5, sigma_rgb=7.0)

  def loss(logits):
    return _gd(
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
      references.regularized_loss(
          logits + h * direction, image, labels, relaxation, "nn8", **kwargs
      )
      - references.regularized_loss(
          logits - h * direction, image, labels, relaxation, "nn8", **kwargs
      )
  ) / (2 * h)
  _assert_close(np.sum(grad * direction), fd, rtol=1e-4)


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
def test_regularized_loss_finite_at_saturated_logits(neighborhood):
  rng = np.random.default_rng(18)
  _, image, labels = _gd_inputs(18)
  # Neighbouring pixels with different argmax: orthogonal one-hot pairs.
  logits = references.saturated_logits(rng, labels.shape, 3)
  for relaxation in RELAXATIONS:
    value, grad = jax.value_and_grad(_gd)(
        *map(jnp.asarray, (logits, image, labels)),
        relaxation=relaxation,
        neighborhood=neighborhood,
    )
    chex.assert_tree_all_finite((value, grad))
