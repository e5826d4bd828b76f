"""Tests of potts_jax.cpu_solver: the native CPU loop against the XLA loop.

``test_solver.py`` checks both loops against a textbook autodiff solver; here
the native loop meets the XLA loop on the cases the kernel handles apart: every
relaxation and cross-entropy over more steps, class counts that fill 1, 3 and
more than 4 vectors of 8 lanes, batches that split unevenly over threads,
zero steps, vmap, and a build that fails; and the same for ``method="adam"``
(Adam on the logits, the kernel's second update) and the coarse warm start.
"""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import cpu_solver
from potts_jax import solver
from tests.test_solver import _problem, CROSS_ENTROPIES, RELAXATIONS


def test_native_loop_builds_here():
  # CI and this machine have a C++ compiler: the fast path must be taken.
  assert cpu_solver.available()


def _both(logits, image, labels, **options):
  native = solver.solve(logits, image, labels, kernel="native", **options)
  xla = solver.solve(logits, image, labels, kernel="xla", **options)
  return native, xla


_CASES = ([(r, "cce", "nn8") for r in RELAXATIONS]
          + [("cd", c, "nn4") for c in CROSS_ENTROPIES])


@pytest.mark.parametrize("relaxation, cross_entropy, neighborhood", _CASES)
def test_native_equals_xla_loop(relaxation, cross_entropy, neighborhood):
  logits, image, labels = _problem(b=2, h=9, w=11, k=5)
  native, xla = _both(logits, image, labels, relaxation=relaxation,
                      cross_entropy=cross_entropy, neighborhood=neighborhood,
                      num_steps=40)
  chex.assert_tree_all_finite(native)
  chex.assert_trees_all_close(native, xla, atol=2e-5, rtol=0)
  np.testing.assert_allclose(np.sum(native, -1), 1.0, atol=1e-5)


@pytest.mark.parametrize("b, k", [(3, 8), (1, 21), (2, 40), (5, 3)])
def test_class_counts_and_batch_splits(b, k):
  # k = 8: one full vector; 21: three, padded; 40: five (the loop that is
  # not unrolled); b = 3 and 5 split unevenly over the threads.
  logits, image, labels = (x[:b] for x in _problem(b=max(b, 2), h=6, w=13,
                                                   k=k))
  native, xla = _both(logits, image, labels, neighborhood="nn8", num_steps=25)
  chex.assert_trees_all_close(native, xla, atol=2e-5, rtol=0)


def _smooth(logits, image, labels):
  # Sizeable affinities everywhere, so that no gradient is ~0 at the start
  # (where Adam's first step, g / |g|, would be rounding noise and the two
  # loops could not agree).
  return logits, image * 0.1, labels


@pytest.mark.parametrize("relaxation, cross_entropy, neighborhood", _CASES)
def test_native_adam_equals_xla_adam(relaxation, cross_entropy, neighborhood):
  logits, image, labels = _smooth(*_problem(b=2, h=9, w=11, k=5))
  native, xla = _both(logits, image, labels, relaxation=relaxation,
                      cross_entropy=cross_entropy, neighborhood=neighborhood,
                      num_steps=40, method="adam")
  chex.assert_tree_all_finite(native)
  chex.assert_trees_all_close(native, xla, atol=5e-5, rtol=0)
  np.testing.assert_allclose(np.sum(native, -1), 1.0, atol=1e-5)


@pytest.mark.parametrize("b, k", [(3, 8), (1, 21), (2, 40), (5, 3)])
def test_native_adam_class_counts_and_batch_splits(b, k):
  logits, image, labels = _smooth(*(x[:b] for x in _problem(
      b=max(b, 2), h=6, w=13, k=k)))
  native, xla = _both(logits, image, labels, neighborhood="nn8", num_steps=25,
                      method="adam", adam_step_size=0.05, adam_decay=0.1)
  chex.assert_trees_all_close(native, xla, atol=5e-5, rtol=0)


@pytest.mark.parametrize("method", ["gd", "adam"])
def test_native_warm_start_equals_xla(method):
  logits, image, labels = _smooth(*_problem(b=2, h=9, w=11, k=5))
  native, xla = _both(logits, image, labels, num_steps=20, method=method,
                      warm_start="coarse", warm_start_steps=15)
  chex.assert_trees_all_close(native, xla, atol=5e-5, rtol=0)


def test_adam_step_size_is_a_value_not_a_constant():
  logits, image, labels = _smooth(*_problem())
  a = solver.solve(logits, image, labels, num_steps=5, method="adam",
                   adam_step_size=0.01, kernel="native")
  b = solver.solve(logits, image, labels, num_steps=5, method="adam",
                   adam_step_size=0.2, kernel="native")
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  _, xla = _both(logits, image, labels, num_steps=5, method="adam",
                 adam_step_size=0.2)
  chex.assert_trees_all_close(b, xla, atol=2e-5)


def test_auto_takes_the_native_loop_from_min_classes():
  assert not cpu_solver.applies(cpu_solver.MIN_CLASSES - 1)
  assert cpu_solver.applies(cpu_solver.MIN_CLASSES)
  assert cpu_solver.applies(2, "native")
  assert not cpu_solver.applies(cpu_solver.MIN_CLASSES, "xla")
  assert not cpu_solver.applies(cpu_solver.MAX_CLASSES + 1, "native")
  # Same result either way (the native loop up to float32 rounding).
  logits, image, labels = _problem(k=cpu_solver.MIN_CLASSES)
  auto, xla = (solver.solve(logits, image, labels, num_steps=10, kernel=kernel)
               for kernel in ("auto", "xla"))
  chex.assert_trees_all_close(auto, xla, atol=2e-5)


def test_descend_names_a_bad_method():
  with pytest.raises(ValueError, match="unknown native method 'sgd'"):
    cpu_solver.descend(*([jnp.zeros((1, 2, 2, 2))] * 3),
                       jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 2, 2)),
                       jnp.zeros((1, 2, 2)), 0.1, num_steps=1,
                       relaxation="cd", cross_entropy="cce", method="sgd")


def test_zero_steps_returns_the_reset_prediction():
  logits, image, labels = _problem()
  native, xla = _both(logits, image, labels, num_steps=0)
  chex.assert_trees_all_close(native, xla, atol=1e-7)


def test_vmap_and_jit_over_the_native_loop():
  logits, image, labels = _problem(b=2)
  stacked = [np.stack([x, x[::-1]]) for x in (logits, image, labels)]
  fn = jax.jit(jax.vmap(lambda l, i, s: solver.solve(l, i, s, num_steps=5,
                                                      kernel="native")))
  out = fn(*stacked)
  chex.assert_shape(out, (2, *logits.shape))
  for j in range(2):
    expected = solver.solve(*(x[j] for x in stacked), num_steps=5,
                            kernel="xla")
    chex.assert_trees_all_close(out[j], expected, atol=2e-6)


def test_step_size_is_a_value_not_a_constant():
  logits, image, labels = _problem()
  a = solver.solve(logits, image, labels, num_steps=5, step_size=0.01,
                   kernel="native")
  b = solver.solve(logits, image, labels, num_steps=5, step_size=0.2,
                   kernel="native")
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4
  _, xla = _both(logits, image, labels, num_steps=5, step_size=0.2)
  chex.assert_trees_all_close(b, xla, atol=2e-6)


def test_a_failing_compiler_is_reported_and_falls_back(monkeypatch, tmp_path):
  monkeypatch.setenv("CXX", "false")  # exists, and fails on everything
  monkeypatch.setenv("POTTS_JAX_NATIVE_DIR", str(tmp_path))
  with pytest.raises(RuntimeError, match="compiling .*grid_solver.cc failed"):
    cpu_solver.build()
  with pytest.warns(RuntimeWarning, match="native CPU solver loop is "
                    "unavailable"):
    assert not cpu_solver.available.__wrapped__()


def test_switched_off_by_environment(monkeypatch):
  monkeypatch.setenv("POTTS_JAX_NATIVE", "0")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert not cpu_solver.available.__wrapped__()
