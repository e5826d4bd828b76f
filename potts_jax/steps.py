"""The per-device train and eval steps (the design's *pmapped step*).

Each function here sees one device's slice of the global batch and talks to
the others only through collectives over :data:`potts_jax.parallel.AXIS`;
:class:`potts_jax.parallel.DataParallel` runs it under ``jax.shard_map`` (the
default) or ``jax.pmap``. The train state is a plain dict pytree (see
:mod:`potts_jax.train`):

* ``params`` and ``batch_stats``: the model's ``nnx.Param`` and
  ``nnx.BatchStat`` states (``nnx.split``), replicated;
* ``opt_state``: the optax state; ``step``: int32 scalar; ``rng``: a
  ``uint32[2]`` key; ``nonfinite_steps``: int32, consecutive skipped steps.

A step whose loss terms or gradient norm are not finite is not applied
(:func:`guard_nonfinite`, on the device, no extra host sync); the loop reads
the count with the logged scalars and stops after
``config.max_nonfinite_steps`` consecutive ones (:func:`check_nonfinite`,
``config.nonfinite``).

Methods (paper Table 4), ``config.loss.method``:

* ``pce``: partial cross-entropy on the scribbles (stage 1);
* ``gd``: the regularised loss of eq. 4 on the network output
  (:func:`potts_jax.losses.regularized_loss`);
* ``soft_sl``: the pseudo-labels ``y`` solved on this batch by
  :func:`potts_jax.solver.solve` from the (stop-gradient) network logits, then
  the self-labeling loss :func:`potts_jax.losses.self_labeling_loss`;
* ``hard_sl``: the same with ``y = onehot(argmax y)``;
* ``hard_sl_gc``: the same with ``y`` the one-hot of the graph-cut labelling
  (:func:`potts_jax.baselines.graphcut.hard_labels_graphcut`:
  alpha-expansion of ``η H_CE + λ P_BL`` on ``config.energy.neighborhood``,
  ``nn4`` or ``nn8``). The cuts run **on the host CPU** through
  ``jax.pure_callback``, each device's images one after another, outside
  XLA: the step waits for them.

The network runs once per step: ``jax.vjp`` of the forward pass gives the
logits, the solver runs on them outside differentiation, and the loss's
gradient w.r.t. the logits is pulled back through the network. Loss means are
global-batch means (``axis_name``, see :mod:`potts_jax.losses`), so gradients
are ``lax.psum``-ed and the step on N devices equals the step on one device
with the same global batch. ``config.loss.normalization`` scales the whole
loss of every method (:func:`potts_jax.losses.normalization_scale`):
``pixel_mean`` keeps those means, ``batch_mean`` (the paper's code lineage)
divides them by the global batch size.

The energy and the solver come from the config's ``energy`` and ``solver``
sections, which are the fields of :class:`potts_jax.solver.EnergyParams` and
:class:`potts_jax.solver.SolverOptions` (:func:`energy_and_options`);
:func:`check_config` checks them once, before training.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, NamedTuple

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from potts_jax.baselines import graphcut
from potts_jax import losses
from potts_jax import metrics
from potts_jax.models import pretrained
from potts_jax import solver
from potts_jax.parallel import AXIS
from potts_jax.solver import checks as solver_checks
from potts_jax.solver import options as options_lib

METHODS = ("pce", "gd", "soft_sl", "hard_sl", "hard_sl_gc")

_MEAN = pretrained.IMAGENET_MEAN * 255.0
_STD = pretrained.IMAGENET_STD * 255.0


def normalize(image: jax.Array) -> jax.Array:
  """ImageNet normalisation of ``[..., 3]`` RGB in 0..255 (the network input)."""
  return (image - _MEAN) / _STD


def energy_and_options(config: ml_collections.ConfigDict
                       ) -> tuple[solver.EnergyParams, solver.SolverOptions]:
  """The solver's energy and options: ``config.energy``, ``config.solver``."""
  return (solver.EnergyParams(**config.energy),
          solver.SolverOptions(**config.solver))


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ValueError`` naming the config key of a bad method,
  normalisation, energy or solver option (what the step would fail on, or
  silently ignore, later).

  The energy is checked for the methods that use it, the solver's options
  for those that solve (:func:`potts_jax.solver.checks.check`).
  """
  method = config.loss.method
  if method not in METHODS:
    raise ValueError(f"config.loss.method must be one of {METHODS}; got "
                     f"{method!r}")
  if config.loss.normalization not in losses.NORMALIZATIONS:
    raise ValueError(f"config.loss.normalization must be one of "
                     f"{losses.NORMALIZATIONS}; got "
                     f"{config.loss.normalization!r}")
  if config.nonfinite not in NONFINITE_POLICIES:
    raise ValueError(f"config.nonfinite must be one of {NONFINITE_POLICIES}; "
                     f"got {config.nonfinite!r}")
  if (not isinstance(config.max_nonfinite_steps, int)
      or config.max_nonfinite_steps < 1):
    raise ValueError("config.max_nonfinite_steps must be an int >= 1; got "
                     f"{config.max_nonfinite_steps!r}")
  if method == "pce":
    return
  if method == "hard_sl_gc" and config.energy.neighborhood == "dense":
    raise ValueError("config.energy.neighborhood: loss.method hard_sl_gc cuts "
                     "a grid graph; expected nn4 or nn8, got 'dense'")
  energy, options = energy_and_options(config)
  try:
    if method in ("soft_sl", "hard_sl"):
      solver_checks.check(energy, options)
    else:  # gd, hard_sl_gc: the energy alone.
      solver_checks.check_energy(energy)
  except ValueError as e:
    raise ValueError(f"{_keys_named(str(e))}: {e}") from None


def _keys_named(message: str) -> str:
  """The ``config.energy.*`` / ``config.solver.*`` keys a solver error
  names (by their field names), else both sections."""
  keys = [f"config.{section}.{name}"
          for section, names in (("energy", options_lib.ENERGY_FIELDS),
                                 ("solver", options_lib.SOLVER_FIELDS))
          for name in names if re.search(rf"\b{name}\b", message)]
  return ", ".join(keys) or "config.energy / config.solver"


class ModelDef(NamedTuple):
  """What rebuilds the model from a train state: ``nnx.split``'s graph
  definition and the RNG-stream state (dropout is reseeded every step from
  the state's ``rng``, so the streams are constants, not train state)."""

  graphdef: Any
  rngs: Any

  def merge(self, params: Any, batch_stats: Any) -> nnx.Module:
    # Fresh Variables, created in the caller's trace, so that BatchNorm and
    # nnx.reseed may update them there.
    copy = lambda tree: jax.tree.map(lambda x: x, tree)
    return nnx.merge(self.graphdef, copy(params), copy(batch_stats),
                     copy(self.rngs))


def pseudo_labels(logits: jax.Array, image: jax.Array, labels: jax.Array,
                  method: str, energy: solver.EnergyParams,
                  options: solver.SolverOptions) -> jax.Array:
  """``y`` of ``soft_sl`` / ``hard_sl`` / ``hard_sl_gc`` for this device's
  batch, no gradient (``hard_sl_gc``: graph cut on the host; any other
  ``method``: the soft ``y``)."""
  if method == "hard_sl_gc":
    return graphcut.hard_labels_graphcut(
        logits, image, labels, eta=energy.eta, lam=energy.lam,
        sigma_rgb=energy.sigma_rgb, neighborhood=energy.neighborhood)
  y = solver.solve(jax.lax.stop_gradient(logits), image, labels, energy,
                   options)
  return solver.hard_labels(y) if method == "hard_sl" else y


#: What the loop does after non-finite steps (:func:`check_nonfinite`).
NONFINITE_POLICIES = ("stop", "skip")
#: The train state's entries a skipped (non-finite) step leaves unchanged.
_UPDATED = ("params", "batch_stats", "opt_state")


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], *,
               graphdef: Any, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict
               ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One optimiser step, per device (run it through ``DataParallel.step``).

  Args:
    state: the replicated train state (module docstring).
    batch: this device's ``image`` ``[b, h, w, 3]`` float32 0..255 and
      ``scribbles`` ``[b, h, w]`` int32 (class, 255 unlabeled, 254 padding);
      ``mask`` (dense GT) is used only by ``config.input.full_supervision``.
    graphdef: the model's :class:`ModelDef`.
    tx: the optimiser.
    config: the run's config (``loss``, ``energy``, ``solver``; checked by
      :func:`check_config`).

  Returns:
    ``(new_state, metrics)``: metrics (``loss``, the loss optimised, in the
    units of ``config.loss.normalization``; ``pce``, the partial
    cross-entropy's pixel mean whatever the normalisation; and for the
    self-labeling methods ``energy``, the mean energy of ``y`` per image:
    the solver's ``E(y)`` for ``soft_sl``; for the hard methods the discrete
    energy ``η Σ -ln σ_i^{l_i} + λ Σ w_ij [l_i ≠ l_j]`` (H_CE + P_BL of the
    one-hot ``y``, what the graph cut minimises) rather than a log relaxation
    at one-hot points); ``grad_norm``, the global norm of the gradient; and
    ``nonfinite_steps`` (:func:`guard_nonfinite`)) are global-batch values,
    equal on every device.
  """
  method = config.loss.method
  if method not in METHODS:
    raise ValueError(f"config.loss.method must be one of {METHODS}; got "
                     f"{method!r}")
  energy, options = energy_and_options(config)
  image = batch["image"]
  labels = batch["mask" if config.input.full_supervision else "scribbles"]
  device = jax.lax.axis_index(AXIS)
  # The global batch size: this device's images times the devices.
  scale = losses.normalization_scale(
      config.loss.normalization, image.shape[0] * jax.lax.axis_size(AXIS))
  key = jax.random.fold_in(jax.random.fold_in(
      jax.random.wrap_key_data(state["rng"]), state["step"]), device)

  def forward(params):
    model = graphdef.merge(params, state["batch_stats"])
    nnx.reseed(model, dropout=key)
    model.train()
    logits = model(normalize(image))
    return logits, nnx.state(model, nnx.BatchStat)

  logits, pull_back, batch_stats = jax.vjp(forward, state["params"],
                                           has_aux=True)
  metrics = {}
  if method in ("soft_sl", "hard_sl", "hard_sl_gc"):
    y = pseudo_labels(logits, image, labels, method, energy, options)
    # One-hot y of the hard methods: the discrete Potts energy.
    metric = energy if method == "soft_sl" else dataclasses.replace(
        energy, relaxation="bl", cross_entropy="ce")
    values = solver.energy(y, jax.lax.stop_gradient(logits), image, labels,
                           metric)
    metrics["energy"] = jax.lax.pmean(jnp.mean(values), AXIS)

    def loss_fn(logits):
      return losses.self_labeling_loss(
          logits, y, labels, cross_entropy=energy.cross_entropy,
          eta=energy.eta, axis_name=AXIS)
  elif method == "gd":
    def loss_fn(logits):
      return losses.regularized_loss(logits, image, labels, energy,
                                     axis_name=AXIS)
  else:
    def loss_fn(logits):
      return losses.partial_cross_entropy(logits, labels, axis_name=AXIS)

  if scale != 1.0:  # batch_mean: every term of the loss, divided by B.
    unscaled_fn = loss_fn
    loss_fn = lambda logits: scale * unscaled_fn(logits)
  loss, dlogits = jax.value_and_grad(loss_fn)(logits)
  (grads,) = pull_back(dlogits)
  grads = jax.lax.psum(grads, AXIS)
  metrics["loss"] = jax.lax.psum(loss, AXIS)
  if method == "pce":
    metrics["pce"] = metrics["loss"] if scale == 1.0 else (
        metrics["loss"] / scale)
  else:
    metrics["pce"] = jax.lax.psum(
        losses.partial_cross_entropy(logits, labels, axis_name=AXIS), AXIS)
  metrics["grad_norm"] = optax.tree_utils.tree_norm(grads)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  new_state = dict(state, params=optax.apply_updates(state["params"], updates),
                   batch_stats=batch_stats, opt_state=opt_state)
  return guard_nonfinite(state, new_state, metrics)


def guard_nonfinite(state: dict[str, Any], new_state: dict[str, Any],
                    metrics: dict[str, jax.Array]
                    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """Keeps ``state`` where a step's loss terms or gradient are not finite.

  A step whose metrics (loss, pCE, energy, gradient norm: global values,
  equal on every device) and new parameters are all finite returns
  ``new_state``; otherwise
  the parameters, batch statistics and optimiser state stay those of
  ``state`` (the update is skipped), and only the step counter advances (the
  batch is consumed). ``nonfinite_steps`` counts consecutive skipped steps
  in the state and the metrics; the training loop reads it with the logged
  scalars and stops by ``config.nonfinite`` (:mod:`potts_jax.train`).

  Returns:
    ``(state, metrics)`` with ``step`` and ``nonfinite_steps`` updated.
  """
  checks = [jnp.isfinite(v) for v in metrics.values()]
  checks += [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(
      new_state["params"])]  # An update can overflow finite parameters.
  finite = jnp.all(jnp.stack(checks))
  kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                      {k: new_state[k] for k in _UPDATED},
                      {k: state[k] for k in _UPDATED})
  bad = jnp.where(finite, 0, state["nonfinite_steps"] + 1).astype(jnp.int32)
  metrics = dict(metrics, nonfinite_steps=bad)
  return dict(new_state, **kept, step=state["step"] + 1,
              nonfinite_steps=bad), metrics


class NonFiniteError(RuntimeError):
  """Training stopped: too many consecutive steps had non-finite values."""


def check_nonfinite(config: ml_collections.ConfigDict, step: int,
                    scalars: dict[str, float], ckpt: Any) -> None:
  """Logs skipped non-finite steps; stops the run by ``config.nonfinite``.

  Args:
    config: the run's config (``nonfinite``, ``max_nonfinite_steps``).
    step: the step just taken.
    scalars: its host metrics (:func:`potts_jax.steps.train_step`);
      ``nonfinite_steps`` is removed from them.
    ckpt: the run's :class:`potts_jax.checkpointing.Checkpointer`.

  Raises:
    NonFiniteError: with ``nonfinite="stop"``, after
      ``max_nonfinite_steps`` consecutive skipped steps; names the steps, the
      non-finite terms and the last finite checkpoint.
  """
  bad = int(scalars.pop("nonfinite_steps", 0))
  if not bad:
    return
  terms = ", ".join(f"{k} {v}" for k, v in sorted(scalars.items()))
  first = step - bad + 1
  logging.warning("step %d: non-finite loss or gradient (%s); update skipped "
                  "(%d consecutive since step %d)", step, terms, bad, first)
  if config.nonfinite == "stop" and bad >= config.max_nonfinite_steps:
    saved = ckpt.all_steps()
    last = (os.path.join(ckpt.directory, str(saved[-1])) if saved
            else f"none in {ckpt.directory}")
    raise NonFiniteError(
        f"stage {config.name or '(unnamed)'}: steps {first}-{step} had "
        f"non-finite values ({terms}; {bad} consecutive steps, "
        f"config.max_nonfinite_steps={config.max_nonfinite_steps}); their "
        f"updates were not applied. Last finite checkpoint: {last}. Lower "
        "config.optim.lr or check the data; config.nonfinite='skip' goes on.")


def predict(state: dict[str, Any], image: jax.Array, *, graphdef: Any,
            scales: tuple[float, ...] = (1.0,), flip: bool = False
            ) -> jax.Array:
  """Class probabilities ``[b, h, w, K]`` of the network in eval mode.

  Args:
    state: the train state.
    image: ``[b, h, w, 3]`` float32 0..255.
    graphdef: the model's :class:`ModelDef`.
    scales: input scales whose probabilities are averaged (``(1.0,)``: the
      paper's single-scale protocol); each is resized back to ``[h, w]``.
    flip: also average the horizontally flipped input's probabilities.
  """
  model = graphdef.merge(state["params"], state["batch_stats"])
  model.eval()
  b, h, w, _ = image.shape
  total = 0.0
  for scale in scales:
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = normalize(image if scale == 1.0 else
                  jax.image.resize(image, (b,) + size + (3,), "bilinear"))
    views = [x, x[:, :, ::-1]] if flip else [x]
    for i, view in enumerate(views):
      p = jax.nn.softmax(model(view), axis=-1)
      p = p[:, :, ::-1] if i else p
      if scale != 1.0:
        p = jax.image.resize(p, (b, h, w, p.shape[-1]), "bilinear")
      total = total + p
  return total / (len(scales) * (2 if flip else 1))


def eval_step(state: dict[str, Any], batch: dict[str, jax.Array], *,
              graphdef: Any, num_classes: int,
              scales: tuple[float, ...] = (1.0,), flip: bool = False
              ) -> jax.Array:
  """The confusion matrix ``[K, K]`` (rows GT) of the global batch, per device.

  Pixels whose GT is not a class (255 ignore, 254 padding, padding examples)
  are not counted (:func:`potts_jax.metrics.confusion_matrix`). Returns the
  ``lax.psum`` over devices.
  """
  probs = predict(state, batch["image"], graphdef=graphdef, scales=scales,
                  flip=flip)
  return jax.lax.psum(metrics.confusion_matrix(
      jnp.argmax(probs, -1), batch["mask"], num_classes), AXIS)
