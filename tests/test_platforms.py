"""Tests of potts_jax.platforms: the form per platform is chosen at lowering.

On this CPU machine: the CPU branch runs (eagerly and jitted), a program
lowered for another platform (``jax.export`` for ``cuda`` / ``tpu``, which
needs no such device) holds only the default branch, and the depthwise
convolution of the models computes, jitted and differentiated, exactly what
its CPU form computes alone. (The solver's choice is tested the same way in
tests/test_cpu_solver.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from potts_jax import platforms
from potts_jax.models import layers


def _cpu(x):
  return x + 1.0


def _default(x):
  return jnp.cos(x)


def test_the_cpu_branch_runs_here_eagerly_and_jitted():
  x = jnp.arange(3.0)
  np.testing.assert_array_equal(platforms.on_cpu(_cpu, _default, x), x + 1.0)
  jitted = jax.jit(lambda x: platforms.on_cpu(_cpu, _default, x))
  np.testing.assert_array_equal(jitted(x), x + 1.0)


@pytest.mark.parametrize("platform, present, absent", [
    ("cpu", "stablehlo.add", "stablehlo.cosine"),
    ("cuda", "stablehlo.cosine", "stablehlo.add"),
    ("tpu", "stablehlo.cosine", "stablehlo.add"),
])
def test_only_the_branch_of_the_lowering_platform_is_lowered(platform, present,
                                                             absent):
  fn = jax.jit(lambda x: platforms.on_cpu(_cpu, _default, x))
  text = jax.export.export(fn, platforms=(platform,))(
      jnp.zeros(3)).mlir_module()
  assert present in text and absent not in text


def _depthwise():
  conv = layers.conv(6, 6, 3, stride=2, groups=6, rngs=nnx.Rngs(0))
  assert isinstance(conv, layers.DepthwiseConv)
  graphdef, state = nnx.split(conv)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 8, 6))
  return conv, (lambda state, x: nnx.merge(graphdef, state)(x)), state, x


@pytest.mark.parametrize("platform, convolutions", [
    ("cpu", False), ("cuda", True), ("tpu", True)])
def test_depthwise_conv_lowers_one_form_per_platform(platform, convolutions):
  _, apply, state, x = _depthwise()
  for fn in (apply, jax.grad(lambda s, x: jnp.sum(jnp.sin(apply(s, x))))):
    text = jax.export.export(jax.jit(fn), platforms=(platform,))(
        state, x).mlir_module()
    assert ("stablehlo.convolution" in text) == convolutions


def test_jitted_depthwise_conv_is_its_cpu_form_exactly():
  conv, apply, state, x = _depthwise()

  def shifted(kernel, x):
    return layers.shifted_depthwise(x, kernel, strides=conv.strides,
                                    padding=conv.padding,
                                    dilation=conv.kernel_dilation)

  kernel = conv.kernel[...]
  np.testing.assert_array_equal(jax.jit(apply)(state, x),
                                jax.jit(shifted)(kernel, x))
  loss = lambda f: lambda w, x: jnp.sum(jnp.sin(f(w, x)))
  got = jax.jit(jax.grad(loss(apply), argnums=(0, 1)))(state, x)
  want = jax.jit(jax.grad(loss(shifted), argnums=(0, 1)))(kernel, x)
  np.testing.assert_array_equal(got[0]["kernel"][...], want[0])
  np.testing.assert_array_equal(got[1], want[1])
