"""The per-device train and eval steps (the design's *pmapped step*).

Each function here sees one device's slice of the global batch and talks to
the others only through collectives over :data:`potts_jax.parallel.AXIS`;
:class:`potts_jax.parallel.DataParallel` runs it under ``jax.shard_map`` (the
default) or ``jax.pmap``. The train state is a plain dict pytree (see
:mod:`potts_jax.train`):

* ``params`` and ``batch_stats``: the model's ``nnx.Param`` and
  ``nnx.BatchStat`` states (``nnx.split``), replicated;
* ``opt_state``: the optax state; ``step``: int32 scalar; ``rng``: a
  ``uint32[2]`` key.

Methods (paper Table 4), ``config.method``:

* ``pce``: partial cross-entropy on the scribbles (stage 1);
* ``gd``: the regularised loss of eq. 4 on the network output
  (:func:`potts_jax.losses.regularized_loss`);
* ``soft_sl``: the pseudo-labels ``y`` solved on this batch by
  :func:`potts_jax.solver.solve` from the (stop-gradient) network logits, then
  the self-labeling loss :func:`potts_jax.losses.self_labeling_loss`;
* ``hard_sl``: the same with ``y = onehot(argmax y)``;
* ``hard_sl_gc``: the same with ``y`` the one-hot of the graph-cut labelling
  (:func:`potts_jax.graphcut.hard_labels_graphcut`: alpha-expansion of
  ``η H_CE + λ P_BL`` on ``config.neighborhood``, ``nn4`` or ``nn8``). The
  cuts run **on the host CPU** through ``jax.pure_callback``, each device's
  images one after another, outside XLA: the step waits for them.

The network runs once per step: ``jax.vjp`` of the forward pass gives the
logits, the solver runs on them outside differentiation, and the loss's
gradient w.r.t. the logits is pulled back through the network. Loss means are
global-batch means (``axis_name``, see :mod:`potts_jax.losses`), so gradients
are ``lax.psum``-ed and the step on N devices equals the step on one device
with the same global batch. ``config.loss_normalization`` scales the whole
loss of every method (:func:`potts_jax.losses.normalization_scale`):
``pixel_mean`` keeps those means, ``batch_mean`` (the paper's code lineage)
divides them by the global batch size.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from potts_jax import graphcut
from potts_jax import losses
from potts_jax import metrics
from potts_jax import pretrained
from potts_jax import solver
from potts_jax import warm_start as warm
from potts_jax.parallel import AXIS

METHODS = ("pce", "gd", "soft_sl", "hard_sl", "hard_sl_gc")

_MEAN = pretrained.IMAGENET_MEAN * 255.0
_STD = pretrained.IMAGENET_STD * 255.0


def normalize(image: jax.Array) -> jax.Array:
  """ImageNet normalisation of ``[..., 3]`` RGB in 0..255 (the network input)."""
  return (image - _MEAN) / _STD


def solver_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword options of :func:`potts_jax.solver.solve` in ``config``."""
  options = dict(relaxation=config.relaxation,
                 cross_entropy=config.cross_entropy,
                 neighborhood=config.neighborhood, eta=config.eta,
                 lam=config.lam, sigma_rgb=config.sigma_rgb,
                 num_steps=config.solver_steps,
                 step_size=config.solver_step_size)
  if config.neighborhood == "dense":
    options.update(dense_options(config))
  method = config.get("solver_method", "gd")
  if method == "adam" and config.neighborhood == "dense":
    # The same update through optax: solver method "adam" is grid-only.
    options["optimizer"] = _adam(config.get("solver_adam_lr", 0.1))
  elif method == "adam":  # Native on CPU (potts_jax.cpu_solver).
    options.update(method="adam",
                   adam_step_size=config.get("solver_adam_lr", 0.1))
  elif method != "gd":
    options["method"] = method
  warm_start = config.get("solver_warm_start", "")
  if warm_start:
    try:
      warm.check_warm_start(warm_start, config.solver_warm_start_steps,
                            config.neighborhood)
    except ValueError as e:
      raise ValueError(f"config.solver_warm_start / solver_warm_start_steps: "
                       f"{e}") from None
    options.update(warm_start=warm_start,
                   warm_start_steps=config.solver_warm_start_steps)
  return options


def dense_options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The ``dense`` neighbourhood's options in ``config``, as keywords of
  :func:`potts_jax.solver.solve` and
  :func:`potts_jax.losses.regularized_loss`."""
  capacity = config.get("dense_capacity", 0)
  if capacity is not None and (not isinstance(capacity, int) or capacity < 0):
    raise ValueError(f"config.dense_capacity must be an int >= 0 (0 = the "
                     f"bound 6N); got {capacity!r}")
  return dict(sigma_xy=config.get("sigma_xy", 100.0),
              scale_factor=config.get("dense_scale_factor", 1.0),
              lattice_capacity=capacity or None)


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float) -> optax.GradientTransformation:
  # One object per rate: a new optimizer object would retrace the solver.
  return optax.adam(learning_rate)


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
                  config: ml_collections.ConfigDict) -> jax.Array:
  """``y`` of ``soft_sl`` / ``hard_sl`` / ``hard_sl_gc`` for this device's
  batch, no gradient (``hard_sl_gc``: graph cut on the host)."""
  if config.method == "hard_sl_gc":
    return graphcut.hard_labels_graphcut(
        logits, image, labels, eta=config.eta, lam=config.lam,
        sigma_rgb=config.sigma_rgb, neighborhood=config.neighborhood)
  y = solver.solve(jax.lax.stop_gradient(logits), image, labels,
                   **solver_options(config))
  return solver.hard_labels(y) if config.method == "hard_sl" else y


def train_step(state: dict[str, Any], batch: dict[str, jax.Array], *,
               graphdef: Any, tx: optax.GradientTransformation,
               config: ml_collections.ConfigDict
               ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
  """One optimiser step, per device (run it through ``DataParallel.step``).

  Args:
    state: the replicated train state (module docstring).
    batch: this device's ``image`` ``[b, h, w, 3]`` float32 0..255 and
      ``scribbles`` ``[b, h, w]`` int32 (class, 255 unlabeled, 254 padding);
      ``mask`` (dense GT) is used only by ``config.full_supervision``.
    graphdef: the model's :class:`ModelDef`.
    tx: the optimiser.
    config: ``method`` and the solver / loss options.

  Returns:
    ``(new_state, metrics)``: metrics (``loss``, the loss optimised, in the
    units of ``config.loss_normalization``; ``pce``, the partial
    cross-entropy's pixel mean whatever the normalisation; and for the
    self-labeling methods ``energy``, the mean energy of ``y`` per image:
    the solver's ``E(y)`` for ``soft_sl``; for the hard methods the discrete
    energy ``η Σ -ln σ_i^{l_i} + λ Σ w_ij [l_i ≠ l_j]`` (H_CE + P_BL of the
    one-hot ``y``, what the graph cut minimises) rather than a log relaxation
    at one-hot points) are global-batch values, equal on every device.
  """
  if config.method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {config.method!r}")
  image = batch["image"]
  labels = batch["mask"] if config.get("full_supervision") else batch["scribbles"]
  device = jax.lax.axis_index(AXIS)
  # The global batch size: this device's images times the devices.
  scale = losses.normalization_scale(
      config.get("loss_normalization", "pixel_mean"),
      image.shape[0] * jax.lax.axis_size(AXIS))
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
  if config.method in ("soft_sl", "hard_sl", "hard_sl_gc"):
    y = pseudo_labels(logits, image, labels, config)
    options = {k: v for k, v in solver_options(config).items()
               if k not in ("num_steps", "step_size")}
    if config.method != "soft_sl":  # One-hot y: the discrete Potts energy.
      options.update(relaxation="bl", cross_entropy="ce")
    energy = solver.energy(y, jax.lax.stop_gradient(logits), image, labels,
                           **options)
    metrics["energy"] = jax.lax.pmean(jnp.mean(energy), AXIS)

    def loss_fn(logits):
      return losses.self_labeling_loss(
          logits, y, labels, cross_entropy=config.cross_entropy,
          eta=config.eta, axis_name=AXIS)
  elif config.method == "gd":
    def loss_fn(logits):
      return losses.regularized_loss(
          logits, image, labels, relaxation=config.relaxation,
          neighborhood=config.neighborhood, eta=config.eta, lam=config.lam,
          sigma_rgb=config.sigma_rgb, axis_name=AXIS,
          **(dense_options(config) if config.neighborhood == "dense"
             else {}))
  else:
    def loss_fn(logits):
      return losses.partial_cross_entropy(logits, labels, axis_name=AXIS)

  if scale != 1.0:  # batch_mean: every term of the loss, divided by B.
    unscaled_fn = loss_fn
    loss_fn = lambda logits: scale * unscaled_fn(logits)
  loss, dlogits = jax.value_and_grad(loss_fn)(logits)
  (grads,) = pull_back(dlogits)
  grads = jax.lax.psum(grads, AXIS)
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  metrics["loss"] = jax.lax.psum(loss, AXIS)
  if config.method == "pce":
    metrics["pce"] = metrics["loss"] if scale == 1.0 else (
        metrics["loss"] / scale)
  else:
    metrics["pce"] = jax.lax.psum(
        losses.partial_cross_entropy(logits, labels, axis_name=AXIS), AXIS)
  new_state = dict(state, params=params, batch_stats=batch_stats,
                   opt_state=opt_state, step=state["step"] + 1)
  return new_state, metrics


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
