"""Tests of potts_jax.solver.native: the native CPU loop against the XLA loop.

The XLA loop (``kernel="xla"``, ``potts_jax/solver/loop.py``) is tested
against the textbook loop ``potts_jax/solver/reference.py`` in
``test_reference.py``; here the native loop (``kernel="native"``) must
compute the XLA loop's iterates for every relaxation × cross-entropy ×
neighbourhood × update rule it runs (6 × 4 × 2 × 2 = 96 cases), and on what
the kernel handles apart: class counts that fill 1, 3 and more than 4
vectors of 8 lanes, batches that split unevenly over threads, zero steps,
vmap, the coarse warm start. The tables the Python side passes to the kernel
as integer codes are compared, in order, with the enums parsed out of
``grid_solver.cc``. Where the loop cannot be built these tests fail (never
skip): ``kernel="native"`` raises then.
"""

import re
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import solver
from potts_jax.data import synthetic
from potts_jax.solver import loop as solver_loop
from potts_jax.solver import native
from potts_jax.solver import updates
from tests.references import CROSS_ENTROPIES
from tests.references import RELAXATIONS

_problem = synthetic.grid_problem


def test_native_loop_builds_here():
  # CI and this machine have a C++ compiler: the fast path must be taken.
  # build() raises naming the compiler command and its error output.
  assert native.build().is_file()
  assert native.available()


def test_native_kernel_lowers_to_the_ffi_call_for_the_cpu_only():
  # kernel="native" must run the kernel, not fall back to the XLA loop
  # (which would make every equality below hold trivially); a program
  # lowered for another platform gets the XLA loop (potts_jax.platforms).
  args = _problem() + (solver.EnergyParams(),)

  def lowered(kernel, platform="cpu"):
    options = solver.SolverOptions(num_steps=2, kernel=kernel)
    exported = jax.export.export(
        solver_loop.solve_batch, platforms=(platform,),
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(
            native.TARGET)])
    return exported(*args, options, record=False).mlir_module()

  assert native.TARGET in lowered("native")
  assert native.TARGET not in lowered("xla")
  assert "stablehlo.while" in lowered("xla")
  on_gpu = lowered("native", "cuda")
  assert native.TARGET not in on_gpu and "stablehlo.while" in on_gpu


def _enum(name: str) -> list[str]:
  """The enumerators of ``enum name { ... };`` in grid_solver.cc, in order."""
  source = native.SOURCE.read_text()
  found = re.findall(rf"\benum\s+{name}\s*\{{([^}}]*)\}}", source)
  assert len(found) == 1, f"expected one enum {name} in {native.SOURCE}"
  names = []
  for position, item in enumerate(found[0].split(",")):
    ident, _, value = (part.strip() for part in item.partition("="))
    # An explicit value must be the position: the codes are the indices.
    assert value in ("", str(position)), (name, ident, value)
    names.append(ident)
  return names


def _python_name(ident: str) -> str:
  """``kCd`` -> ``cd``; a trailing ``H`` (``kCceH``, ``kQH``) marks an H."""
  assert ident.startswith("k"), ident
  return re.sub(r"H$", "", ident[1:]).lower()


def test_code_tables_match_the_kernel_enums_in_order():
  assert [_python_name(n) for n in _enum("Relaxation")] == list(
      native.RELAXATIONS)
  assert [_python_name(n) for n in _enum("CrossEntropy")] == list(
      native.CROSS_ENTROPIES)
  assert [_python_name(n) for n in _enum("Method")] == list(native.METHODS)
  # The kernel runs every relaxation and cross-entropy the library accepts.
  assert sorted(native.RELAXATIONS) == sorted(RELAXATIONS)
  assert sorted(native.CROSS_ENTROPIES) == sorted(CROSS_ENTROPIES)
  assert set(native.METHODS) <= set(updates.METHODS)
  # MAX_CLASSES is kMaxVectors * kLanes.
  source = native.SOURCE.read_text()
  vectors = int(re.search(r"kMaxVectors = (\d+);", source).group(1))
  lanes = int(re.search(r"kLanes = (\d+);", source).group(1))
  assert native.MAX_CLASSES == vectors * lanes


def _both(logits, image, labels, **options):
  native_y = solver.solve(logits, image, labels, kernel="native", **options)
  xla_y = solver.solve(logits, image, labels, kernel="xla", **options)
  return native_y, xla_y


def _smooth(logits, image, labels):
  # Sizeable affinities everywhere, so that no gradient is ~0 at the start
  # (where Adam's first step, g / |g|, would be rounding noise and the two
  # loops could not agree).
  return logits, image * 0.1, labels


def _start(logits, labels):
  """The loops' starting point in numpy: softmax, one-hot on scribbles."""
  e = np.exp(logits - logits.max(-1, keepdims=True))
  y = e / e.sum(-1, keepdims=True)
  scribbled = labels < 254
  y[scribbled] = np.eye(logits.shape[-1])[labels[scribbled]]
  return y


# Per update rule: its options and the tolerance on y.
_METHODS = {
    "gd": (dict(), 2e-5),
    "adam": (dict(adam_step_size=0.1, adam_decay=0.5), 5e-5),
}


@pytest.mark.parametrize("method", native.METHODS)
@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
@pytest.mark.parametrize("cross_entropy", CROSS_ENTROPIES)
@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_native_equals_xla_loop(relaxation, cross_entropy, neighborhood,
                                method):
  options, atol = _METHODS[method]
  logits, image, labels = _smooth(*_problem(b=2, h=6, w=7, k=5))
  native_y, xla_y = _both(logits, image, labels, relaxation=relaxation,
                          cross_entropy=cross_entropy,
                          neighborhood=neighborhood, num_steps=30,
                          method=method, **options)
  chex.assert_tree_all_finite(native_y)
  chex.assert_trees_all_close(native_y, xla_y, atol=atol, rtol=0)
  np.testing.assert_allclose(np.sum(native_y, -1), 1.0, atol=1e-5)
  # The iterates moved: the comparison is not between two starting points.
  assert np.max(np.abs(np.asarray(xla_y) - _start(logits, labels))) > 1e-2


@pytest.mark.parametrize("method", native.METHODS)
@pytest.mark.parametrize("b, k", [(3, 8), (1, 21), (2, 40), (5, 3)])
def test_class_counts_and_batch_splits(b, k, method):
  # k = 8: one full vector; 21: three, padded; 40: five (the loop that is
  # not unrolled); b = 3 and 5 split unevenly over the threads.
  options, atol = _METHODS[method]
  logits, image, labels = _smooth(*(x[:b] for x in _problem(
      b=max(b, 2), h=6, w=13, k=k)))
  native_y, xla_y = _both(logits, image, labels, neighborhood="nn8",
                          num_steps=25, method=method, **options)
  chex.assert_trees_all_close(native_y, xla_y, atol=atol, rtol=0)


@pytest.mark.parametrize("method", native.METHODS)
def test_native_warm_start_equals_xla(method):
  logits, image, labels = _smooth(*_problem(b=2, h=9, w=11, k=5))
  native_y, xla_y = _both(logits, image, labels, num_steps=20, method=method,
                          warm_start="coarse", warm_start_steps=15)
  chex.assert_trees_all_close(native_y, xla_y, atol=5e-5, rtol=0)


@pytest.mark.parametrize("method, name, small, large, atol", [
    ("gd", "step_size", 0.01, 0.2, 2e-6),
    ("adam", "adam_step_size", 0.01, 0.2, 2e-5),
])
def test_step_size_is_a_value_not_a_constant(method, name, small, large,
                                             atol):
  logits, image, labels = _smooth(*_problem())
  a, b = (solver.solve(logits, image, labels, num_steps=5, method=method,
                       kernel="native", **{name: t}) for t in (small, large))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4
  xla = solver.solve(logits, image, labels, num_steps=5, method=method,
                     kernel="xla", **{name: large})
  chex.assert_trees_all_close(b, xla, atol=atol)


def test_auto_takes_the_native_loop_from_min_classes():
  assert not native.applies(native.MIN_CLASSES - 1)
  assert native.applies(native.MIN_CLASSES)
  assert native.applies(2, "native")
  assert not native.applies(native.MIN_CLASSES, "xla")
  assert not native.applies(native.MAX_CLASSES + 1, "native")
  # Same result either way (the native loop up to float32 rounding).
  logits, image, labels = _problem(k=native.MIN_CLASSES)
  auto, xla = (solver.solve(logits, image, labels, num_steps=10, kernel=kernel)
               for kernel in ("auto", "xla"))
  chex.assert_trees_all_close(auto, xla, atol=2e-5)


def test_descend_names_a_bad_method():
  with pytest.raises(ValueError, match="unknown native method 'sgd'"):
    native.descend(*([jnp.zeros((1, 2, 2, 2))] * 3),
                   jnp.zeros((1, 2, 2, 2)), jnp.zeros((1, 2, 2)),
                   jnp.zeros((1, 2, 2)), 0.1, num_steps=1,
                   relaxation="cd", cross_entropy="cce", method="sgd")


def test_zero_steps_returns_the_reset_prediction():
  logits, image, labels = _problem()
  native_y, xla_y = _both(logits, image, labels, num_steps=0)
  chex.assert_trees_all_close(native_y, xla_y, atol=1e-7)


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


def test_a_failing_compiler_is_reported_and_falls_back(monkeypatch, tmp_path):
  monkeypatch.setenv("CXX", "false")  # exists, and fails on everything
  monkeypatch.setenv("POTTS_JAX_NATIVE_DIR", str(tmp_path))
  with pytest.raises(RuntimeError, match="compiling .*grid_solver.cc failed"):
    native.build()
  with pytest.warns(RuntimeWarning, match="native CPU solver loop is "
                    "unavailable"):
    assert not native.available.__wrapped__()


def test_switched_off_by_environment(monkeypatch):
  monkeypatch.setenv("POTTS_JAX_NATIVE", "0")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert not native.available.__wrapped__()
