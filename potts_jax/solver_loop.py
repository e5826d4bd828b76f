"""The solver's loops: one jitted ``fori_loop`` per method (:mod:`potts_jax.solver`).

:func:`solve_batch` is the single jitted entry point: it builds the problem
(:func:`potts_jax.solver_terms.build_problem`), picks the update of
``method`` (:mod:`potts_jax.updates`) and runs it as one
``lax.fori_loop`` (or ``lax.scan`` when the energies are recorded); on the
CPU backend plain descent on a grid runs as one native call instead
(:mod:`potts_jax.cpu_solver`). Values (η, λ, step sizes) are traced, names,
``num_steps`` and the optimizer object are static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from potts_jax import bilateral
from potts_jax import cpu_solver
from potts_jax import solver_terms as terms
from potts_jax import updates


def _solve_dense(logits, prob, graph, lam, step_size, *, relaxation,
                 cross_entropy, num_steps, optimizer, record):
  """The loop on the logits, ``∂E/∂l`` by autodiff (module docstring)."""
  energy_fn = functools.partial(
      terms.dense_energy_value, prob=prob, graph=graph, lam=lam,
      relaxation=relaxation, cross_entropy=cross_entropy)

  def to_y(l):
    return terms.reset(jax.nn.softmax(l), prob)

  def value_and_grad(l):
    e, vjp = jax.vjp(lambda l: energy_fn(to_y(l)), l)
    return e, vjp(jnp.ones_like(e))[0]

  def step(carry):
    if optimizer is None:
      e, g = value_and_grad(carry)
      return carry - step_size * g, e
    l, state = carry
    e, g = value_and_grad(l)
    updates, state = optimizer.update(g, state, l)
    return (optax.apply_updates(l, updates), state), e

  logits = jax.lax.stop_gradient(logits).astype(jnp.float32)
  carry = logits if optimizer is None else (logits, optimizer.init(logits))
  if record:
    carry, energies = jax.lax.scan(lambda c, _: step(c), carry, None,
                                   length=num_steps)
  else:
    carry = jax.lax.fori_loop(0, num_steps, lambda _, c: step(c)[0], carry)
    energies = None
  y = to_y(carry if optimizer is None else carry[0])
  if record:
    energies = jnp.concatenate([energies, energy_fn(y)[None]], axis=0)
  return jax.lax.stop_gradient(y), energies


@functools.partial(
    jax.jit,
    static_argnames=(
        "relaxation", "cross_entropy", "neighborhood", "num_steps",
        "optimizer", "record", "kernel", "scale_factor", "lattice_capacity",
        "method",
    ),
)
def solve_batch(
    logits, image, labels, eta, lam, sigma_rgb, step_size, sigma_xy,
    mirror_step_size, momentum, *, relaxation, cross_entropy, neighborhood,
    num_steps, optimizer, record, kernel, scale_factor, lattice_capacity,
    method,
):
  """The loop. Plain descent runs on ``y`` directly (see :func:`solve`).

  Returns ``(y, energies or None, lattice points per image or None)``.
  """
  prob = terms.build_problem(logits, image, labels, neighborhood, sigma_rgb, eta,
                        lam)
  if neighborhood == "dense":
    graph = bilateral.prepare(
        image, labels, sigma_xy=sigma_xy, sigma_rgb=sigma_rgb,
        scale_factor=scale_factor, capacity=lattice_capacity)
    y, energies = _solve_dense(
        logits, prob, graph, lam, step_size, relaxation=relaxation,
        cross_entropy=cross_entropy, num_steps=num_steps,
        optimizer=optimizer, record=record)
    return y, energies, graph.lattice.num_points
  logits = jax.lax.stop_gradient(logits).astype(jnp.float32)
  step_terms = functools.partial(
      terms.logit_step, prob=prob, relaxation=relaxation,
      cross_entropy=cross_entropy,
  )

  if method in updates.MIRROR_METHODS:
    direction = functools.partial(
        updates.mirror_direction, prob=prob, relaxation=relaxation,
        cross_entropy=cross_entropy)
    carry0, step, to_y = updates.mirror_loop(
        method, prob, direction, mirror_step_size, momentum)
  elif method == "gd":
    # l ← l - t ∂E/∂l  ⇔  y ← y ⊙ exp(-t ∂E/∂l) / Σ_k(...), exactly, since
    # softmax(l + δ) ∝ softmax(l) ⊙ exp(δ). The carry is the unnormalised
    # v = y ⊙ exp(δ); the next step's single reduction pass gets Σv with the
    # other sums, so the loop never writes a normalised copy: one exp per
    # element and step, no softmax max/sum passes. Labeled pixels stay
    # one-hot because their step is zero.
    def to_y(v):
      return v / jnp.sum(v, axis=-1, keepdims=True)

    def step(v):
      grad, r = step_terms(v)
      return r[..., None] * v * jnp.exp(-step_size * grad)

    carry0 = terms.reset(prob.sigma, prob)
  else:
    def to_y(carry):
      return terms.reset(jax.nn.softmax(carry[0]), prob)

    def step(carry):
      l, state = carry
      grad, _ = step_terms(to_y(carry))
      updates, state = optimizer.update(grad, state, l)
      return optax.apply_updates(l, updates), state

    carry0 = (logits, optimizer.init(logits))

  energy_fn = functools.partial(
      terms.energy_value, prob=prob, relaxation=relaxation,
      cross_entropy=cross_entropy,
  )
  if record:
    def body(carry, _):
      return step(carry), energy_fn(to_y(carry))

    carry, energies = jax.lax.scan(body, carry0, None, length=num_steps)
  else:
    def xla_loop(carry):
      return jax.lax.fori_loop(0, num_steps, lambda _, c: step(c), carry)

    if (method == "gd" and kernel == "auto"
        and cpu_solver.applies(logits.shape[-1])):
      def native_loop(v):
        return cpu_solver.descend(
            v, prob.sigma, prob.log_sigma, jnp.stack(prob.weights, axis=-1),
            prob.unary_weight, prob.free, step_size, num_steps=num_steps,
            relaxation=relaxation, cross_entropy=cross_entropy)

      carry = jax.lax.platform_dependent(carry0, cpu=native_loop,
                                         default=xla_loop)
    else:
      carry = xla_loop(carry0)
    energies = None
  y = terms.reset(to_y(carry), prob)
  if record:
    energies = jnp.concatenate([energies, energy_fn(y)[None]], axis=0)
  return jax.lax.stop_gradient(y), energies, None
