"""The soft pseudo-label solver (paper Appendix B) and its energy.

For one batch, with the network output ``σ = softmax(logits)`` fixed, the
pseudo-labels minimise (ARCHITECTURE §3, a sum, not a mean)::

    E(y) = η Σ_{i valid, unlabeled} H(σ_i, y_i) + λ Σ_{(i,j)∈N} w_ij P(y_i, y_j)

with ``y_i`` pinned to the one-hot of its scribble on labeled pixels. The solver
optimises logits ``l`` (initialised from the network logits) by ``num_steps``
steps of: ``y = softmax(l)``; ``y = where(labeled, onehot, y)`` (the scribble
reset); ``l -= step_size * ∂E/∂l``.

How it is computed (same iterates as the textbook autodiff loop, measured in
``benchmarks/solver.py``):

* ``∂E/∂l`` is analytic: every Potts relaxation is a function of
  ``s = y_iᵀy_j, a = ‖y_i‖², b = ‖y_j‖²`` (:data:`potts_jax.potts.STATS`), so
  the pair gradient is ``f_s y_j + 2 f_a y_i`` with scalar partials from a
  ``vjp`` on ``[B, H, W]`` planes (:func:`neighborhoods.potts_terms`), and the
  softmax Jacobian ``y ⊙ (g - yᵀg)`` takes ``yᵀg`` from the same scalars.
* Plain descent runs on ``y`` itself: ``l ← l - t∂E/∂l`` is exactly
  ``y ← y ⊙ exp(-t∂E/∂l) / Σ_k(...)`` because ``softmax(l + δ) ∝ softmax(l) ⊙
  exp(δ)``. One ``exp`` per element and step, no softmax max/sum passes, and
  labeled pixels stay one-hot because their step is zero. With an optax
  ``optimizer`` the loop keeps the logits and their optimizer state instead.
* ``neighborhood="dense"`` (:mod:`potts_jax.bilateral`, ``bl`` and ``q``
  only) runs the textbook loop on the logits in XLA: the lattice is built
  once per call, and each step takes ``∂E/∂l`` by autodiff through the
  softmax, the reset and the unary term, with the dense Potts gradient from
  one permutohedral filtering (its ``custom_vjp``). The dense sum runs over
  ordered pairs ``i ≠ j`` (each unordered pair twice), so λ must be far
  smaller than on a grid.
* On the CPU backend, plain descent on a grid runs as one native call
  (:mod:`potts_jax.cpu_solver`, ``native/grid_solver.cc``): the same
  formulas, one sweep over the rows of each image per step, images spread
  over threads (1.5-2.3x the XLA:CPU loop, benchmarks/RESULTS.md). Other backends, the optax path,
  :func:`solve_with_energies` and ``kernel="xla"`` use the XLA loop.
* ``method=`` selects the update (:mod:`potts_jax.updates`): ``"gd"`` (the
  above), ``"optax"`` (``optimizer`` on the logits), ``"mirror"`` and
  ``"mirror_momentum"`` (exponentiated gradient on ``y``, plain or with
  heavy-ball momentum; XLA loop, grid neighbourhoods).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from potts_jax import bilateral
from potts_jax import cpu_solver
from potts_jax import labels as label_codes
from potts_jax import losses
from potts_jax import neighborhoods
from potts_jax import potts
from potts_jax import updates

Array = jnp.ndarray


def validate_inputs(logits: Any, image: Any, labels: Any) -> None:
  """Raises ``ValueError`` naming the offending shape or label value.

  Shapes are always checked; label values only when ``labels`` is concrete
  (inside ``jit`` the caller's data pipeline is responsible for them).

  Args:
    logits: ``[B, H, W, K]``.
    image: ``[B, H, W, C]``.
    labels: ``[B, H, W]`` int with values in ``0..K-1``, 254 or 255.
  """
  if np.ndim(logits) != 4:
    raise ValueError(
        f"logits must be [B, H, W, K]; got shape {np.shape(logits)}"
    )
  b, h, w, k = np.shape(logits)
  if np.ndim(image) != 4 or tuple(np.shape(image)[:3]) != (b, h, w):
    raise ValueError(
        f"image must be [B, H, W, C] = [{b}, {h}, {w}, C] to match logits "
        f"{np.shape(logits)}; got shape {np.shape(image)}"
    )
  if tuple(np.shape(labels)) != (b, h, w):
    raise ValueError(
        f"labels must be [B, H, W] = [{b}, {h}, {w}] to match logits "
        f"{np.shape(logits)}; got shape {np.shape(labels)}"
    )
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(
        f"labels must be integers; got dtype {jnp.result_type(labels)}"
    )
  if isinstance(labels, jax.core.Tracer):
    return
  values = np.unique(np.asarray(labels))
  bad = values[
      ((values < 0) | (values >= k))
      & (values != label_codes.PADDING)
      & (values != label_codes.UNLABELED)
  ]
  if bad.size:
    raise ValueError(
        f"labels hold value(s) {bad[:10].tolist()}; expected a class in "
        f"0..{k - 1} (K={k} from logits), {label_codes.UNLABELED} "
        f"(unlabeled) or {label_codes.PADDING} (padding)"
    )


KERNELS = ("auto", "xla")


def _check_options(relaxation, cross_entropy, neighborhood, num_steps, kernel):
  if kernel not in KERNELS:
    raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
  potts.check_name(relaxation)
  losses.check_name(cross_entropy)
  neighborhoods.check_neighborhood(neighborhood)
  if neighborhood == "dense":
    bilateral.check_relaxation(relaxation)
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
    raise ValueError(f"num_steps must be an int >= 0; got {num_steps!r}")


class _Problem(NamedTuple):
  """The fixed data of one pseudo-label problem (NHWC)."""

  sigma: Array  # [B, H, W, K] network prediction softmax(logits).
  log_sigma: Array  # [B, H, W, K] guarded ln σ (used by H_CE only).
  onehot: Array  # [B, H, W, K] one-hot of the scribble, 0 elsewhere.
  labeled: Array  # [B, H, W, 1] bool: scribbled pixels.
  free: Array  # [B, H, W] float: 1 where the solver may move y.
  unary_weight: Array  # [B, H, W] float: η on valid unlabeled pixels, else 0.
  weights: tuple  # per offset [B, H, W] λ·w_ij (0 where no pair).


def _build_problem(logits, image, labels, neighborhood, sigma_rgb, eta, lam):
  k = logits.shape[-1]
  labels = jnp.asarray(labels, jnp.int32)
  labeled = label_codes.scribbled(labels)
  onehot = jax.nn.one_hot(jnp.where(labeled, labels, 0), k, dtype=jnp.float32)
  onehot = onehot * labeled[..., None]
  if neighborhood == "dense":  # λ and the pairs live in a DenseGraph.
    weights = jnp.zeros(labels.shape + (0,), jnp.float32)
  else:
    weights = lam * neighborhoods.affinities(
        image, labels, neighborhood=neighborhood, sigma_rgb=sigma_rgb
    )
  sigma = jax.nn.softmax(jax.lax.stop_gradient(logits).astype(jnp.float32))
  return _Problem(
      sigma=sigma,
      log_sigma=potts.safe_log(sigma),
      onehot=onehot,
      labeled=labeled[..., None],
      free=(~labeled).astype(jnp.float32),
      unary_weight=eta * label_codes.unlabeled(labels).astype(jnp.float32),
      weights=tuple(weights[..., d] for d in range(weights.shape[-1])),
  )


def _reset(y: Array, prob: _Problem) -> Array:
  """The scribble reset ``where(labeled, onehot, y)``."""
  return jnp.where(prob.labeled, prob.onehot, y)


# Unary terms. For H(σ, y) with weight m = η·[valid unlabeled] and y = r v
# (see _logit_step), each cross-entropy gives (a) K-sized basis arrays, whose
# channel sums come out of the step's single reduction pass, and (b) from
# those sums, per-pixel coefficients with y ⊙ ∂(mH)/∂y = Σ coef · basis and
# the scalar yᵀ∂(mH)/∂y, so no second reduction over K is needed. Guards
# follow potts.safe_log (zero slope below EPS); for H_RCE the guard tests the
# unnormalised v = y·Σv (Σv ≈ 1).
def _sigma_v(v, prob):
  return (prob.sigma * v,)


def _cce_terms(r, prob, stats, sums):
  del stats
  u = sums[0] * r  # σᵀy
  _, vjp = jax.vjp(lambda x: -potts.safe_log(x), u)
  c = vjp(prob.unary_weight)[0]  # -m/u
  return c * u, (c * r,)


def _ce_basis(v, prob):
  return (v * prob.log_sigma,)


def _ce_terms(r, prob, stats, sums):
  del stats
  m = prob.unary_weight
  return -m * r * sums[0], (-m * r,)


def _rce_basis(v, prob):
  return (prob.sigma * (v > potts.EPS),)


def _rce_terms(r, prob, stats, sums):
  del r, stats
  m = prob.unary_weight
  return -m * sums[0], (-m,)


def _q_basis(v, prob):
  return (v * v, prob.sigma * v)


def _q_terms(r, prob, stats, sums):
  m = prob.unary_weight
  # y ⊙ (y - σ) = r² v² - r σ v.
  return m * (stats.a - sums[1] * r), (m * r * r, -m * r)


_UNARY = {
    "cce": (_sigma_v, _cce_terms),
    "ce": (_ce_basis, _ce_terms),
    "rce": (_rce_basis, _rce_terms),
    "q": (_q_basis, _q_terms),
}


def _logit_step(v, prob, relaxation, cross_entropy):
  """``(∂E/∂l, r)`` at ``y = r v``, ``r = 1/Σ_k v``; 0 where reset.

  ``∂E/∂l = y ⊙ (g - yᵀg)`` with ``g = ∂E/∂y``. Every reduction over ``K``
  happens in one pass (:func:`neighborhoods.pair_pass`) over ``v``, its
  shifts and ``σ``; the per-pixel coefficients are then materialised
  (``optimization_barrier``) so that the one ``K``-sized pass that follows
  reads them instead of recomputing them for every class.

  Args:
    v: ``[B, H, W, K]`` nonnegative, unnormalised iterate.
    prob: the problem.
    relaxation, cross_entropy: names.

  Returns:
    ``(∂E/∂l [B, H, W, K], r [B, H, W])``.
  """
  basis_fn, terms_fn = _UNARY[cross_entropy]
  r, stats, coefficients, diag, ydotg, unary_sums = neighborhoods.pair_pass(
      v, prob.weights, potts.STATS[relaxation], basis_fn(v, prob))
  u_ydotg, u_coefficients = terms_fn(r, prob, stats, unary_sums)
  directions = [d for d, _ in coefficients]
  # v goes through the barrier too, so that the K-sized products below are
  # recomputed inside the update pass rather than shared (and materialised).
  fields = jax.lax.optimization_barrier((
      v, r, diag, r * (ydotg + u_ydotg), prob.free,
      tuple(c for _, c in coefficients), u_coefficients,
  ))
  v, r, diag, r_ydotg, free, c_pairs, u_coefficients = fields
  g = neighborhoods.apply_coefficients(
      v, r, tuple(zip(directions, c_pairs)), diag
  )
  # y ⊙ g - y yᵀg with y = r v, the unary part given as coef · basis.
  grad = v * (r[..., None] * g - r_ydotg[..., None])
  for c, b in zip(u_coefficients, basis_fn(v, prob)):
    grad = grad + c[..., None] * b
  return free[..., None] * grad, r


def _energy_value(y, prob, relaxation, cross_entropy):
  """E(y) ``[B]`` (the weights in ``prob`` already carry η and λ)."""
  h = losses.cross_entropy(cross_entropy)
  unary = jnp.sum(prob.unary_weight * h(prob.sigma, y), axis=(1, 2))
  pairs = neighborhoods.grid_energy(
      y, jnp.stack(prob.weights, axis=-1), potts.relaxation(relaxation)
  )
  return unary + pairs


def _dense_energy_value(y, prob, graph, lam, relaxation, cross_entropy):
  """E(y) ``[B]`` with the dense Potts term."""
  h = losses.cross_entropy(cross_entropy)
  unary = jnp.sum(prob.unary_weight * h(prob.sigma, y), axis=(1, 2))
  return unary + lam * bilateral.dense_energy(y, graph, relaxation)


def _solve_dense(logits, prob, graph, lam, step_size, *, relaxation,
                 cross_entropy, num_steps, optimizer, record):
  """The loop on the logits, ``∂E/∂l`` by autodiff (module docstring)."""
  energy_fn = functools.partial(
      _dense_energy_value, prob=prob, graph=graph, lam=lam,
      relaxation=relaxation, cross_entropy=cross_entropy)

  def to_y(l):
    return _reset(jax.nn.softmax(l), prob)

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
def _solve(
    logits, image, labels, eta, lam, sigma_rgb, step_size, sigma_xy,
    mirror_step_size, momentum, *, relaxation, cross_entropy, neighborhood,
    num_steps, optimizer, record, kernel, scale_factor, lattice_capacity,
    method,
):
  """The loop. Plain descent runs on ``y`` directly (see :func:`solve`).

  Returns ``(y, energies or None, lattice points per image or None)``.
  """
  prob = _build_problem(logits, image, labels, neighborhood, sigma_rgb, eta,
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
      _logit_step, prob=prob, relaxation=relaxation,
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

    carry0 = _reset(prob.sigma, prob)
  else:
    def to_y(carry):
      return _reset(jax.nn.softmax(carry[0]), prob)

    def step(carry):
      l, state = carry
      grad, _ = step_terms(to_y(carry))
      updates, state = optimizer.update(grad, state, l)
      return optax.apply_updates(l, updates), state

    carry0 = (logits, optimizer.init(logits))

  energy_fn = functools.partial(
      _energy_value, prob=prob, relaxation=relaxation,
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
  y = _reset(to_y(carry), prob)
  if record:
    energies = jnp.concatenate([energies, energy_fn(y)[None]], axis=0)
  return jax.lax.stop_gradient(y), energies, None


def _run(logits, image, labels, *, relaxation, cross_entropy, neighborhood,
         eta, lam, sigma_rgb, num_steps, step_size, optimizer, record,
         kernel="auto", sigma_xy=100.0, scale_factor=1.0,
         lattice_capacity=None, method="gd",
         mirror_step_size=updates.MIRROR_STEP_SIZE,
         momentum=updates.MOMENTUM):
  _check_options(relaxation, cross_entropy, neighborhood, num_steps, kernel)
  method = updates.check_method(method, cross_entropy, neighborhood,
                                optimizer)
  validate_inputs(logits, image, labels)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  y, energies, points = _solve(
      logits, image, labels, f32(eta), f32(lam), f32(sigma_rgb), f32(step_size),
      f32(sigma_xy), f32(mirror_step_size), f32(momentum),
      relaxation=relaxation, cross_entropy=cross_entropy,
      neighborhood=neighborhood, num_steps=int(num_steps), optimizer=optimizer,
      record=record, kernel=kernel, scale_factor=float(scale_factor),
      lattice_capacity=lattice_capacity, method=method,
  )
  if points is not None and lattice_capacity is not None:
    bilateral.check_num_points(points, lattice_capacity,
                               np.prod(np.shape(labels)[1:]))
  return y, energies


def solve(
    logits: Array,
    image: Array,
    labels: Array,
    *,
    relaxation: str = "cd",
    cross_entropy: str = "cce",
    neighborhood: str = "nn4",
    eta: float = 0.3,
    lam: float = 6.0,
    sigma_rgb: float = 9.0,
    num_steps: int = 200,
    step_size: float = 0.075,
    optimizer: optax.GradientTransformation | None = None,
    kernel: str = "auto",
    sigma_xy: float = 100.0,
    scale_factor: float = 1.0,
    lattice_capacity: int | None = None,
    method: str = "gd",
    mirror_step_size: float = updates.MIRROR_STEP_SIZE,
    momentum: float = updates.MOMENTUM,
) -> Array:
  """Soft pseudo-labels for one batch (paper Appendix B).

  Jitted; changing ``eta``, ``lam``, ``sigma_rgb``, ``step_size``,
  ``mirror_step_size`` or ``momentum`` does not retrace, changing a name,
  ``num_steps``, ``method`` or the optimizer object does. Usable
  inside ``jit``, ``vmap`` and ``shard_map`` (it never communicates).

  Args:
    logits: ``[B, H, W, K]`` network logits; also the solver's initialisation.
    image: ``[B, H, W, C]`` RGB in 0..255.
    labels: ``[B, H, W]`` int: class, 255 unlabeled, 254 padding.
    relaxation: Potts relaxation, see :func:`potts_jax.potts.relaxation`.
    cross_entropy: H, see :func:`potts_jax.losses.cross_entropy`.
    neighborhood: ``nn4``, ``nn8`` or ``dense`` (relaxations ``bl``, ``q``).
    eta: weight of the cross-entropy term.
    lam: weight of the Potts term.
    sigma_rgb: colour bandwidth of the affinities.
    num_steps: number of gradient steps (static).
    step_size: plain gradient-descent step on the logits.
    optimizer: optional optax transformation used instead of plain descent
      (``step_size`` is then ignored; build it once and reuse it, as a new
      object retraces).
    kernel: ``auto`` runs plain descent on the CPU backend as one native call
      (:mod:`potts_jax.cpu_solver`, same iterates up to float32 rounding)
      when it could be built, and the XLA loop elsewhere; ``xla`` always
      runs the XLA loop.
    sigma_xy: spatial bandwidth of ``dense`` in pixels (100 on VOC).
    scale_factor: static; ``dense`` filters at this fraction of the size
      (:func:`potts_jax.bilateral.prepare`).
    lattice_capacity: static lattice slots per image for ``dense``; None is
      the bound 6HW that never overflows. An overflow raises ValueError
      outside ``jit`` (inside, the extra lattice points are dropped).
    method: the update (:mod:`potts_jax.updates`): ``"gd"`` plain descent
      on the logits with ``step_size``; ``"optax"`` ``optimizer`` on the
      logits (also selected by passing ``optimizer`` alone);
      ``"mirror"`` exponentiated gradient on ``y`` with
      ``mirror_step_size``; ``"mirror_momentum"`` the same with heavy-ball
      momentum ``momentum`` (the fastest, benchmarks/RESULTS.md). The mirror
      methods take ``cross_entropy`` ``cce``, ``ce`` or ``q`` and ``nn4`` or
      ``nn8``, and always run the XLA loop.
    mirror_step_size: step ``t`` of the mirror methods.
    momentum: heavy-ball ``β`` of ``"mirror_momentum"``.

  Returns:
    ``[B, H, W, K]`` float32 pseudo-labels on the simplex, scribbled pixels
    one-hot, no gradient.
  """
  y, _ = _run(
      logits, image, labels, relaxation=relaxation, cross_entropy=cross_entropy,
      neighborhood=neighborhood, eta=eta, lam=lam, sigma_rgb=sigma_rgb,
      num_steps=num_steps, step_size=step_size, optimizer=optimizer,
      record=False, kernel=kernel, sigma_xy=sigma_xy,
      scale_factor=scale_factor, lattice_capacity=lattice_capacity,
      method=method, mirror_step_size=mirror_step_size, momentum=momentum,
  )
  return y


def solve_with_energies(logits: Array, image: Array, labels: Array, **options):
  """Like :func:`solve`, also returning the energy after every step.

  Returns:
    ``(y, energies)``: ``y`` ``[B, H, W, K]`` and ``energies``
    ``[num_steps + 1, B]``, ``energies[t]`` the energy after ``t`` steps.
  """
  full = dict(relaxation="cd", cross_entropy="cce", neighborhood="nn4",
              eta=0.3, lam=6.0, sigma_rgb=9.0, num_steps=200, step_size=0.075,
              optimizer=None, kernel="auto", sigma_xy=100.0, scale_factor=1.0,
              lattice_capacity=None, method="gd",
              mirror_step_size=updates.MIRROR_STEP_SIZE,
              momentum=updates.MOMENTUM)
  unknown = set(options) - set(full)
  if unknown:
    raise TypeError(f"unknown solver option(s) {sorted(unknown)}")
  full.update(options)
  return _run(logits, image, labels, record=True, **full)


def energy(
    y: Array,
    logits: Array,
    image: Array,
    labels: Array,
    *,
    relaxation: str = "cd",
    cross_entropy: str = "cce",
    neighborhood: str = "nn4",
    eta: float = 0.3,
    lam: float = 6.0,
    sigma_rgb: float = 9.0,
    sigma_xy: float = 100.0,
    scale_factor: float = 1.0,
    lattice_capacity: int | None = None,
    **unused: Any,
) -> Array:
  """E(y) per image, the objective :func:`solve` minimises.

  ``η Σ_{i valid, unlabeled} H(σ_i, y_i) + λ Σ_{(i,j)} w_ij P(y_i, y_j)`` with
  ``σ = softmax(logits)``. ``y`` is taken as given (no scribble reset).
  Solver-only options (``num_steps``, ``step_size``, ``optimizer``,
  ``kernel``, ``method``, ``mirror_step_size``, ``momentum``) are accepted and ignored so that one options dict serves both
  functions. ``sigma_xy``, ``scale_factor`` and ``lattice_capacity`` are
  those of ``neighborhood="dense"`` (see :func:`solve`).

  Returns:
    ``[B]`` float32.
  """
  extra = set(unused) - {"num_steps", "step_size", "optimizer", "kernel",
                         "method", "mirror_step_size", "momentum"}
  if extra:
    raise TypeError(f"unknown energy option(s) {sorted(extra)}")
  potts.check_name(relaxation)
  losses.check_name(cross_entropy)
  neighborhoods.check_neighborhood(neighborhood)
  if neighborhood == "dense":
    bilateral.check_relaxation(relaxation)
  validate_inputs(logits, image, labels)
  if np.shape(y) != np.shape(logits):
    raise ValueError(
        f"y must have the shape of logits {np.shape(logits)}; got {np.shape(y)}"
    )
  prob = _build_problem(jnp.asarray(logits), image, labels, neighborhood,
                        sigma_rgb, eta, lam)
  if neighborhood == "dense":
    graph = bilateral.prepare(image, labels, sigma_xy=sigma_xy,
                              sigma_rgb=sigma_rgb, scale_factor=scale_factor,
                              capacity=lattice_capacity)
    return _dense_energy_value(jnp.asarray(y, jnp.float32), prob, graph,
                               jnp.asarray(lam, jnp.float32), relaxation,
                               cross_entropy)
  return _energy_value(
      jnp.asarray(y, jnp.float32), prob, relaxation, cross_entropy
  )


def hard_labels(y: Array) -> Array:
  """``onehot(argmax y)``: hard pseudo-labels for hard self-labeling.

  Args:
    y: ``[..., K]`` soft labels.

  Returns:
    ``[..., K]`` float32 one-hot.
  """
  return jax.nn.one_hot(jnp.argmax(y, axis=-1), y.shape[-1], dtype=jnp.float32)
