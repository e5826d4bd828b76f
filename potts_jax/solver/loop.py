"""The solver's loops: one jitted ``fori_loop`` per method (:mod:`potts_jax.solver`).

:func:`solve_batch` is the single jitted entry point: it builds the problem
(:func:`potts_jax.solver.objective.build_problem`), picks the update of
``method`` (:mod:`potts_jax.solver.updates`) and runs it as one
``lax.fori_loop`` (or ``lax.scan`` when the energies are recorded); on the
CPU, ``gd`` and ``adam`` on a grid can run as one native call instead
(:mod:`potts_jax.solver.native`, ``SolverOptions.kernel``). The
:class:`~potts_jax.solver.options.EnergyParams` and
:class:`~potts_jax.solver.options.SolverOptions` pytrees carry the traced
values (η, λ, σ, step sizes) and the static names and step counts. With
``warm_start="coarse"`` the same loop first runs on the 2x2-pooled problem
(:mod:`potts_jax.solver.warm_start`), inside the same jitted function.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from potts_jax.dense import bilateral
from potts_jax.solver import native
from potts_jax import platforms
from potts_jax import potts
from potts_jax.solver import objective as terms
from potts_jax.solver import updates
from potts_jax.solver import warm_start as warm
def _dense_optimizer(options):
  """The optax transformation of a dense solve; None for plain descent."""
  if options.method == "adam":  # Built here: its step sizes are traced.
    num_steps = max(options.num_steps - 1, 1)
    return optax.adam(
        lambda n: options.adam_step_size * options.adam_decay ** (
            n / num_steps),
        b1=updates.ADAM_B1, b2=updates.ADAM_B2, eps=updates.ADAM_EPS)
  return options.optimizer


def _solve_dense(logits, prob, graph, lam, options, *, relaxation,
                 cross_entropy, record):
  """The loop on the logits, ``∂E/∂l`` by autodiff (module docstring)."""
  step_size, num_steps = options.step_size, options.num_steps
  optimizer = _dense_optimizer(options)
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
    updates_, state = optimizer.update(g, state, l)
    return (optax.apply_updates(l, updates_), state), e

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


def _grid_solve(prob, v0, *, options, relaxation, cross_entropy, num_steps,
                record, logits0=None):
  """``num_steps`` steps of ``options.method`` from ``v0`` on a grid problem.

  Args:
    prob: the problem (:class:`potts_jax.solver.objective.Problem`).
    v0: ``[B, H, W, K]`` initial ``y``, scribble reset applied.
    options: the checked :class:`potts_jax.solver.options.SolverOptions`.
    relaxation, cross_entropy: the energy's names.
    num_steps: steps of this loop (the options' or the warm start's).
    record: also return the energy after every step.
    logits0: ``[B, H, W, K]`` initial logits of ``method="optax"`` (the
      network's); None: ``ln v0``.

  Returns:
    ``(y [B, H, W, K] with the reset applied, energies or None)``.
  """
  step_terms = functools.partial(
      terms.logit_step, prob=prob, relaxation=relaxation,
      cross_entropy=cross_entropy,
  )
  method, optimizer, kernel = options.method, options.optimizer, options.kernel
  to_y = None  # Methods on v: y = v / Σ_k v.
  if method in updates.MIRROR_METHODS:
    direction = functools.partial(
        updates.mirror_direction, prob=prob, relaxation=relaxation,
        cross_entropy=cross_entropy)
    carry0, step, to_v = updates.mirror_loop(
        method, v0, direction, options.mirror_step_size, options.momentum)
  elif method == "gd":
    carry0, step, to_v = updates.gd_loop(v0, step_terms, options.step_size)
  elif method == "adam":
    carry0, step, to_v = updates.adam_loop(
        v0, step_terms, options.adam_step_size, options.adam_decay,
        num_steps)
  else:  # optax on the logits.
    def to_y(carry):
      return terms.reset(jax.nn.softmax(carry[0]), prob)

    def step(carry):
      l, state = carry
      grad, _ = step_terms(to_y(carry))
      updates_, state = optimizer.update(grad, state, l)
      return optax.apply_updates(l, updates_), state

    if logits0 is None:
      logits0 = potts.safe_log(v0)
    carry0 = (logits0, optimizer.init(logits0))
  if to_y is None:
    def to_y(carry):
      v = to_v(carry)
      return v / jnp.sum(v, axis=-1, keepdims=True)

  energy_fn = functools.partial(
      terms.energy_value, prob=prob, relaxation=relaxation,
      cross_entropy=cross_entropy,
  )
  if record:
    def body(carry, _):
      return step(carry), energy_fn(to_y(carry))

    carry, energies = jax.lax.scan(body, carry0, None, length=num_steps)
    y = terms.reset(to_y(carry), prob)
    energies = jnp.concatenate([energies, energy_fn(y)[None]], axis=0)
    return y, energies

  def xla_loop(carry):
    return jax.lax.fori_loop(0, num_steps, lambda _, c: step(c), carry)

  if (method in native.METHODS
      and native.applies(v0.shape[-1], kernel)):
    def native_loop(carry):
      return native.descend(
          to_v(carry), prob.sigma, prob.log_sigma,
          jnp.stack(prob.weights, axis=-1), prob.unary_weight, prob.free,
          options.adam_step_size if method == "adam" else options.step_size,
          num_steps=num_steps, relaxation=relaxation,
          cross_entropy=cross_entropy, method=method,
          decay=options.adam_decay, b1=updates.ADAM_B1, b2=updates.ADAM_B2,
          adam_eps=updates.ADAM_EPS)

    # The same v from either branch; y from it as in to_y. The branch is
    # chosen for the platform the program is lowered for.
    v = platforms.on_cpu(native_loop, lambda c: to_v(xla_loop(c)), carry0)
    y = v / jnp.sum(v, axis=-1, keepdims=True)
  else:
    y = to_y(xla_loop(carry0))
  return terms.reset(y, prob), None


@functools.partial(jax.jit, static_argnames=("record",))
def solve_batch(logits, image, labels, energy, options, *, record):
  """The solver for one batch (see :func:`potts_jax.solver.solve`).

  Args:
    logits, image, labels: as in :func:`potts_jax.solver.solve`.
    energy: :class:`potts_jax.solver.options.EnergyParams`, checked.
    options: :class:`potts_jax.solver.options.SolverOptions`, checked
      (:func:`potts_jax.solver.checks.check`).
    record: also return the energy after every step.

  Returns ``(y, energies or None, lattice points per image or None)``;
  ``energies`` ``[num_steps + 1, B]`` are those of the fine loop (after a
  warm start, ``energies[0]`` is the energy of its start).
  """
  e, o = energy, options
  prob = terms.build_problem(logits, image, labels, e.neighborhood,
                             e.sigma_rgb, e.eta, e.lam)
  names = dict(relaxation=e.relaxation, cross_entropy=e.cross_entropy)
  if e.neighborhood == "dense":
    graph = bilateral.prepare(
        image, labels, sigma_xy=e.sigma_xy, sigma_rgb=e.sigma_rgb,
        scale_factor=e.scale_factor, capacity=e.lattice_capacity)
    y, energies = _solve_dense(logits, prob, graph, e.lam, o, record=record,
                               **names)
    return y, energies, graph.lattice.num_points
  loop = functools.partial(_grid_solve, options=o, **names)
  v0 = terms.reset(prob.sigma, prob)
  logits0 = jax.lax.stop_gradient(logits).astype(jnp.float32)
  if o.warm_start == "coarse":
    logits_c, image_c, labels_c = warm.coarse_inputs(prob.sigma, image, labels)
    prob_c = terms.build_problem(logits_c, image_c, labels_c, e.neighborhood,
                                 e.sigma_rgb, e.eta,
                                 e.lam * warm.COARSE_LAMBDA_SCALE)
    y_c, _ = loop(prob_c, terms.reset(prob_c.sigma, prob_c),
                  num_steps=o.warm_start_steps, record=False)
    v0 = terms.reset(warm.fine_start(y_c, prob.sigma), prob)
    logits0 = None
  y, energies = loop(prob, v0, num_steps=o.num_steps, record=record,
                     logits0=logits0)
  return jax.lax.stop_gradient(y), energies, None
