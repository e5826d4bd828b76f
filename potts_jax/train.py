"""Training: the model, optimiser and train state of a config, and the loop.

``train_and_evaluate(config, workdir)`` runs one stage (``config.method``) or,
when ``config.stages`` lists several, each in ``workdir/<stage name>`` with
stage ``k > 0`` initialised from stage ``k - 1`` (paper appendix C: stage 1
partial CE, stage 2 self-labeling from the stage-1 checkpoint). A stage:

1. opens the data (:func:`potts_jax.data.sources.open_sources`), builds the
   DeepLabV3+ (:func:`build_model`), loads ImageNet backbone weights
   (``config.pretrained_dir``) or the previous stage (``config.init_from``);
2. splits it into the plain-pytree train state (:func:`create_state`) and
   resumes from the newest checkpoint in the workdir, model and data iterator
   together (:mod:`potts_jax.checkpointing`);
3. runs the per-device :func:`potts_jax.steps.train_step` through
   :class:`potts_jax.parallel.DataParallel` (``config.parallel``) until
   ``config.total_steps``, logging a progress line and TensorBoard scalars
   every ``log_every`` steps, images every ``image_every``, saving every
   ``checkpoint_every`` and on SIGTERM (then it returns), evaluating every
   ``eval_every``;
4. evaluates on the whole eval split by ``config.eval_protocol``
   (:func:`eval_dataset`: ``full``, ``center_crop`` or ``padded``; every
   number is logged with :func:`protocol`, which names it) and writes
   ``workdir/metrics.json``; with ``eval_every``, each evaluation is also
   appended to ``workdir/evaluations.jsonl`` and the record holds the final
   (``miou``, ``final_miou``) and the best (``best_miou``, ``best_step``)
   val mIoU (:func:`with_best`).

A stage whose workdir holds a ``metrics.json`` of its final step is not
re-run (so a two-stage run, or a sweep, resumes where it stopped).
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from potts_jax import checkpointing
from potts_jax import metrics
from potts_jax import parallel
from potts_jax import steps
from potts_jax.data import augmentation
from potts_jax.data import pipeline
from potts_jax.data import sources as sources_lib
from potts_jax.models import deeplabv3plus

train_step = steps.train_step
eval_step = steps.eval_step


def build_model(config: ml_collections.ConfigDict, num_classes: int
                ) -> deeplabv3plus.DeepLabV3Plus:
  """The DeepLabV3+ of ``config.model`` (SyncBN over ``data`` by default)."""
  m = config.model
  return deeplabv3plus.DeepLabV3Plus(
      m.backbone, num_classes, output_stride=m.output_stride, width=m.width,
      channels=m.channels, low_level_channels=m.low_level_channels,
      dropout_rate=m.dropout_rate,
      sync_bn_axis=parallel.AXIS if m.sync_bn else None,
      rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))


def learning_rate(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Poly decay ``lr · (1 - step / total_steps) ^ power``, per step."""
  return optax.polynomial_schedule(
      init_value=config.lr, end_value=0.0, power=config.poly_power,
      transition_steps=max(1, config.total_steps))


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """SGD of the lineage: momentum, weight decay on every parameter, head ×10.

  torch's ``SGD(momentum=0.9, weight_decay=5e-4)`` on two parameter groups
  (backbone at ``lr``, ASPP + decoder at ``head_lr_mult · lr``), as
  rloss / DeepLab-pytorch: the decay ``wd · p`` is added to the gradient of
  every parameter (BatchNorm scales and biases included) before the momentum.
  """
  schedule = learning_rate(config)

  def group(mult):
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(lambda step: mult * schedule(step),
                  momentum=config.momentum or None))

  return optax.multi_transform(
      {"backbone": group(1.0), "head": group(config.head_lr_mult)},
      deeplabv3plus.param_labels)


def create_state(model: nnx.Module, tx: optax.GradientTransformation,
                 seed: int) -> tuple[steps.ModelDef, dict[str, Any]]:
  """``(model_def, state)``: the model split into the plain train state.

  ``state`` holds ``params`` (``nnx.Param``), ``batch_stats``
  (``nnx.BatchStat``), ``opt_state``, ``step`` (int32) and ``rng``
  (``uint32[2]`` key data); ``model_def`` (:class:`potts_jax.steps.ModelDef`)
  the rest of the model.
  """
  graphdef, params, batch_stats, rngs = nnx.split(model, nnx.Param,
                                                  nnx.BatchStat, ...)
  state = {"params": params, "batch_stats": batch_stats,
           "opt_state": tx.init(params), "step": jnp.int32(0),
           "rng": jax.random.key_data(jax.random.key(seed))}
  return steps.ModelDef(graphdef, rngs), state


#: ``config.eval_protocol`` values (:func:`eval_dataset`, :func:`protocol`).
EVAL_PROTOCOLS = ("full", "center_crop", "padded")


def eval_dataset(source: Any, config: ml_collections.ConfigDict, *,
                 batch_size: int, cache: dict[str, Any] | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Any:
  """The host-local eval batches of ``config.eval_protocol``.

  * ``full``: every image at its own size, unpadded, batched only with images
    of the same shape (:func:`potts_jax.data.pipeline.full_image_batches`):
    each prediction equals the network's on the image alone; one compilation
    per distinct shape.
  * ``center_crop``: rloss's ``FixScaleCrop(config.eval_crop_size)``: short
    side resized to the crop size, the centre square scored
    (:func:`potts_jax.data.pipeline.center_crop_batches`).
  * ``padded``: images padded at the bottom and right with zeros to
    ``config.eval_pad_to`` (or to the largest of each batch), labels ignored
    there; the padding enters the network
    (:func:`potts_jax.data.pipeline.eval_batches`).

  Args:
    source: the eval source.
    config: the run's config (``eval_protocol``, ``eval_crop_size``,
      ``eval_pad_to``).
    batch_size: examples per host-local batch.
    cache: a dict kept between evaluations of the same source (``full``
      stores the example shapes there, so that they are read once).
    process_index: this host; ``jax.process_index()`` by default.
    process_count: the number of hosts; ``jax.process_count()`` by default.

  Returns:
    An iterator of batches (see :func:`potts_jax.data.pipeline.eval_batches`).

  Raises:
    ValueError: an unknown ``eval_protocol``.
  """
  name = config.get("eval_protocol", "padded")
  hosts = dict(process_index=process_index, process_count=process_count)
  if name == "full":
    cache = {} if cache is None else cache
    if "shapes" not in cache:
      cache["shapes"] = pipeline.example_shapes(source)
    return pipeline.full_image_batches(source, batch_size=batch_size,
                                       shapes=cache["shapes"], **hosts)
  if name == "center_crop":
    return pipeline.center_crop_batches(
        source, batch_size=batch_size, crop_size=config.eval_crop_size,
        **hosts)
  if name == "padded":
    pad_to = tuple(config.eval_pad_to) if config.get("eval_pad_to") else None
    return pipeline.eval_batches(source, batch_size=batch_size, pad_to=pad_to,
                                 **hosts)
  raise ValueError(f"eval_protocol {name!r}; expected one of "
                   f"{EVAL_PROTOCOLS}")


def evaluate(par: parallel.DataParallel, eval_fn: Any, state: Any,
             source: Any, config: ml_collections.ConfigDict, num_classes: int,
             cache: dict[str, Any] | None = None) -> np.ndarray:
  """The confusion matrix ``[K, K]`` of the whole eval split (every host).

  ``cache``: see :func:`eval_dataset`.
  """
  per_host = config.eval_batch_size // jax.process_count()
  confusion = metrics.ConfusionMatrix(num_classes)
  for batch in eval_dataset(source, config, batch_size=per_host, cache=cache):
    cm = par.unreplicate(eval_fn(state, par.put_batch(batch)))
    confusion.update(np.asarray(cm))
  return confusion.matrix


def predictions(graphdef: Any, state: Any, source: Any,
                config: ml_collections.ConfigDict, *,
                batch_size: int | None = None) -> Any:
  """Per-image class probabilities of the eval path, on one device.

  The batches of :func:`eval_dataset` through :func:`potts_jax.steps.predict`
  (``config.eval_scales``, ``config.eval_flip``), each example's map cut
  back to its size before padding.

  Args:
    graphdef: the model's :class:`potts_jax.steps.ModelDef`.
    state: a host (unreplicated) train state.
    source: the eval source.
    config: the run's config.
    batch_size: examples per batch; ``config.eval_batch_size`` by default.

  Yields:
    ``(name, probs [h, w, K] float32, mask [h, w] int32)`` per example, in the
    protocol's order (``full``: grouped by shape).
  """
  fn = jax.jit(functools.partial(
      steps.predict, graphdef=graphdef, scales=tuple(config.eval_scales),
      flip=config.eval_flip))
  for batch in eval_dataset(source, config,
                            batch_size=batch_size or config.eval_batch_size,
                            process_index=0, process_count=1):
    probs = np.asarray(fn(state, jnp.asarray(batch["image"])))
    for b in np.flatnonzero(batch["valid"]):
      h, w = batch["size"][b]
      yield batch["name"][b], probs[b, :h, :w], batch["mask"][b, :h, :w]


def protocol(config: ml_collections.ConfigDict, description: str) -> str:
  """The evaluation protocol, logged next to every number.

  Names the eval protocol (:func:`eval_dataset`) precisely: what the network
  sees of each image and what is scored.
  """
  scales = tuple(config.eval_scales)
  name = config.get("eval_protocol", "padded")
  batch = config.eval_batch_size
  if name == "full":
    view = ("full image, {scales} (each image at its own size, unpadded, "
            "batched only with images of its size)")
  elif name == "center_crop":
    crop = config.eval_crop_size
    view = (f"rloss centre crop, {{scales}} (FixScaleCrop {crop}: short side "
            f"resized to {crop}, image bilinear, labels nearest; the centre "
            f"{crop}x{crop} square scored at that resolution)")
  elif name == "padded":
    if config.get("eval_pad_to"):
      h, w = config.eval_pad_to
      where = f"the top left of a {h}x{w} zero canvas"
    else:
      where = (f"the top left of a zero canvas the size of the largest image "
               f"of its batch of {batch}, in source order")
    view = (f"padded, {{scales}} (each image at {where}, labels ignored "
            "outside it; the padding enters the network: ASPP image pooling, "
            "border convolutions)")
  else:
    raise ValueError(f"eval_protocol {name!r}; expected one of "
                     f"{EVAL_PROTOCOLS}")
  scale_text = ("single scale" if scales == (1.0,) else f"scales {scales}"
                ) + (", flip" if config.eval_flip else "")
  return (f"{config.eval_split} of {description}; "
          f"{view.format(scales=scale_text)}; 255 ignored; mIoU over "
          "classes present in GT or prediction")


#: Per-stage log of the evaluations of ``eval_every`` (one JSON a line).
EVALUATIONS = "evaluations.jsonl"


def _evaluation(record: dict[str, Any]) -> dict[str, Any]:
  """``{step, miou, pixel_accuracy}`` of a record, JSON-ready (NaN: None)."""
  number = lambda x: None if x is None or not np.isfinite(x) else float(x)
  return {"step": int(record["step"]), "miou": number(record["miou"]),
          "pixel_accuracy": number(record["pixel_accuracy"])}


def read_evaluations(path: str) -> list[dict[str, Any]]:
  """The entries of an :data:`EVALUATIONS` file (``[]`` when absent)."""
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def with_best(record: dict[str, Any], history: list[dict[str, Any]]
              ) -> dict[str, Any]:
  """The final ``record`` with the best of the run's evaluations added.

  ``miou`` stays the final mIoU (also as ``final_miou``); ``best_miou``,
  ``best_step`` and ``best_pixel_accuracy`` are those of the evaluation with
  the highest mIoU (the earliest on ties), which is chosen on the eval split
  itself, as rloss reports it: an optimistic number. ``evaluations`` lists
  ``{step, miou, pixel_accuracy}`` by step; a step evaluated twice (a run
  resumed from an earlier checkpoint) counts once, its latest entry.

  Args:
    record: the final evaluation's record (``step``, ``miou``,
      ``pixel_accuracy``, ...).
    history: the entries of every evaluation of the stage, the final one
      included (:func:`read_evaluations` plus this process's).

  Returns:
    A new record.
  """
  by_step = {int(e["step"]): e for e in history}
  by_step[int(record["step"])] = _evaluation(record)
  evaluations = [by_step[k] for k in sorted(by_step)]
  # An mIoU of None (NaN) never wins; max keeps the first maximum.
  best = max(evaluations,
             key=lambda e: -1.0 if e["miou"] is None else e["miou"])
  return dict(record, final_miou=record["miou"], best_miou=best["miou"],
              best_step=best["step"],
              best_pixel_accuracy=best["pixel_accuracy"],
              evaluations=evaluations)


def _examples(graphdef, state, batch, config, count=1) -> list[dict]:
  """Image / scribbles / mask / pseudo-labels / prediction of a few examples.

  ``state`` is a host copy; ``batch`` a host-local numpy batch. The
  pseudo-labels are the solver's ``y`` from the network's current logits, as
  the self-labeling step computes them.
  """
  image = jnp.asarray(batch["image"][:count], jnp.float32)
  scribbles = jnp.asarray(batch["scribbles"][:count], jnp.int32)
  logits = _logits_fn(graphdef)(state, image)
  y = steps.pseudo_labels(logits, image, scribbles, config)
  probs = jax.nn.softmax(logits, axis=-1)
  return [{"image": np.asarray(batch["image"][i]),
           "scribbles": np.asarray(batch["scribbles"][i]),
           "mask": np.asarray(batch["mask"][i]),
           "pseudo_labels": np.asarray(y[i]),
           "prediction": np.asarray(probs[i])} for i in range(len(image))]


_LOGITS_FNS: dict[int, tuple[Any, Any]] = {}


def _logits_fn(graphdef):
  """Jitted eval-mode logits ``[b, h, w, K]`` of a host state (for pictures),
  one per model definition (kept with it, as ``ModelDef`` is not hashable)."""
  if id(graphdef) not in _LOGITS_FNS:
    def logits(state, image):
      model = graphdef.merge(state["params"], state["batch_stats"])
      model.eval()
      return model(steps.normalize(image))
    _LOGITS_FNS[id(graphdef)] = (graphdef, jax.jit(logits))
  return _LOGITS_FNS[id(graphdef)][1]


def _images(examples: list[dict], num_classes: int) -> dict[str, np.ndarray]:
  """TensorBoard images (uint8 ``[N, H, W, 3]``) of :func:`_examples`."""
  from potts_jax import viz  # pylint: disable=g-import-not-at-top
  colours = viz.palette(num_classes)
  stack = lambda f: np.stack([f(ex) for ex in examples])
  return {
      "scribbles": stack(lambda ex: viz.overlay_labels(ex["image"],
                                                       ex["scribbles"],
                                                       colours)),
      "pseudo_labels": stack(lambda ex: viz.colorize(ex["pseudo_labels"],
                                                     colours)),
      "prediction": stack(lambda ex: viz.colorize(ex["prediction"], colours)),
  }


def write_figure(path: str, graphdef, state, source, config, count: int = 4,
                 title: str = "") -> None:
  """A figure of the first ``count`` examples of ``source`` (PNG at ``path``).

  Rows: image + scribbles, ground truth, the pseudo-labels the solver makes
  from the network's logits, and the network's prediction.
  """
  from potts_jax import viz  # pylint: disable=g-import-not-at-top
  examples = [augmentation.read_example(source[i])
              for i in range(min(count, len(source)))]
  by_size = {}
  for ex in examples:  # One call per image size (eval images may differ).
    by_size.setdefault(ex["image"].shape, []).append(ex)
  rows = []
  for group in by_size.values():
    batch = {k: np.stack([ex[k] for ex in group])
             for k in ("image", "scribbles", "mask")}
    rows += _examples(graphdef, state, batch, config, count=len(group))
  viz.save_figure(viz.training_figure(rows, title=title), path)


def _stage_configs(config: ml_collections.ConfigDict, workdir: str):
  """``[(stage config, stage workdir)]`` of a config with ``stages``.

  Raises:
    ValueError: for a stage without a ``name`` or with a key the config does
      not have (a typo would otherwise be ignored).
  """
  out = []
  previous = None
  for i, overrides in enumerate(config.stages):
    overrides = dict(overrides)
    if not overrides.get("name"):
      raise ValueError(f"stages[{i}] has no name: {overrides}")
    unknown = sorted(set(overrides) - set(config) - {"name"})
    if unknown:
      raise ValueError(f"stage {overrides['name']!r} sets unknown config keys "
                       f"{unknown}")
    stage = ml_collections.ConfigDict(config.to_dict())
    del stage["stages"]
    stage.update(overrides)
    if previous is not None and not overrides.get("init_from"):
      stage.init_from = previous
    previous = os.path.join(workdir, overrides["name"])
    out.append((stage, previous))
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict[str, Any]:
  """Trains and evaluates ``config`` in ``workdir`` (module docstring).

  Returns:
    The final metrics record (also in ``workdir/metrics.json``); with
    ``stages``, ``{"stages": {name: record}, **last stage's record}``. A run
    stopped by SIGTERM returns ``{"step": k, "preempted": True}`` after saving
    step ``k``, and starts no further stage.
  """
  if not config.get("stages"):
    return _train_stage(config, workdir)
  records = {}
  for stage, stage_dir in _stage_configs(config, workdir):
    record = _train_stage(stage, stage_dir)
    if record.get("preempted"):
      return dict(record, stage=stage.name)
    records[stage.name] = record
  record = dict(records[config.stages[-1]["name"]], stages=records)
  if jax.process_index() == 0:
    metrics.write_metrics_json(os.path.join(workdir, "metrics.json"), record)
  return record


def _finished(config: ml_collections.ConfigDict, workdir: str
              ) -> dict[str, Any] | None:
  """The record of a stage that already ran to ``total_steps``, else None."""
  path = os.path.join(workdir, "metrics.json")
  if not os.path.isfile(path):
    return None
  record = metrics.read_metrics_json(path)
  return record if record.get("step") == config.total_steps else None


def _train_stage(config: ml_collections.ConfigDict, workdir: str
                 ) -> dict[str, Any]:
  """One stage (module docstring, steps 1-4)."""
  data = sources_lib.open_sources(config)  # Fails before anything is written.
  done = _finished(config, workdir)
  if done is not None:
    logging.info("%s already finished (step %d, mIoU %.4f); not re-run",
                 workdir, done["step"], done["miou"])
    return done
  if config.batch_size % jax.process_count():
    raise ValueError(f"batch_size {config.batch_size} is not a multiple of "
                     f"the {jax.process_count()} processes")
  par = parallel.DataParallel(config.parallel)
  per_host = config.batch_size // jax.process_count()
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  model = build_model(config, data.num_classes)
  if config.get("init_from"):
    step = checkpointing.restore_model(config.init_from, model)
    logging.info("initialised from %s (step %d)", config.init_from, step)
  elif config.model.get("pretrained_dir"):
    from potts_jax import pretrained  # pylint: disable=g-import-not-at-top
    pretrained.load_backbone(model, config.model.pretrained_dir)
  tx = make_optimizer(config)
  graphdef, state = create_state(model, tx, config.seed)
  del model
  train_iter = iter(pipeline.train_dataset(
      data.train, crop_size=config.crop_size, batch_size=per_host,
      seed=config.seed, scale_range=tuple(config.scale_range),
      flip=config.flip, blur_prob=config.blur_prob,
      worker_count=config.worker_count))
  with checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
      save_every=config.checkpoint_every) as ckpt:
    restored = ckpt.restore_latest(state, train_iter)
    if restored is not None:
      state = restored
      logging.info("resumed %s at step %d", workdir, int(state["step"]))
    step = int(state["step"])
    state = par.replicate(state)
    ckpt.install_sigterm_handler()
    return _loop(config, workdir, data, par, graphdef, tx, state, step,
                 train_iter, ckpt)


def _loop(config, workdir, data, par, graphdef, tx, state, step, train_iter,
          ckpt) -> dict[str, Any]:
  """Steps 3-4 of the module docstring, from ``step`` (the state replicated)."""
  train_fn = par.step(functools.partial(train_step, graphdef=graphdef, tx=tx,
                                        config=config),
                      replicated=(True, False), donate_argnums=(0,))
  eval_fn = par.step(functools.partial(
      eval_step, graphdef=graphdef, num_classes=data.num_classes,
      scales=tuple(config.eval_scales), flip=config.eval_flip),
      replicated=(True, False))
  writer = metrics.MetricWriter(workdir, log_scalars=False)
  progress = metrics.ProgressLogger(config.total_steps, config.batch_size)
  the_protocol = protocol(config, data.description)
  logging.info("stage %s: %s from step %d to %d", config.get("name", ""),
               config.method, step, config.total_steps)

  eval_cache = {}  # The eval protocol's per-source data (full: shapes).
  history_path = os.path.join(workdir, EVALUATIONS)
  history = read_evaluations(history_path) if config.eval_every else []

  def run_eval():
    cm = evaluate(par, eval_fn, state, data.eval, config, data.num_classes,
                  cache=eval_cache)
    record = dict(step=step, **metrics.summarize(cm, data.classes),
                  protocol=the_protocol, method=config.method)
    writer.write_scalars(step, {"eval/miou": record["miou"],
                                "eval/pixel_accuracy":
                                    record["pixel_accuracy"]})
    logging.info("step %d: mIoU %.4f, pixel accuracy %.4f (%s)", step,
                 record["miou"], record["pixel_accuracy"], the_protocol)
    if config.eval_every:
      entry = _evaluation(record)
      history.append(entry)
      if jax.process_index() == 0:
        with open(history_path, "a") as f:
          f.write(json.dumps(entry) + "\n")
    return record

  while step < config.total_steps:
    batch = next(train_iter)
    state, scalars = train_fn(state, par.put_batch(batch))
    step += 1
    if step % config.log_every == 0 or step == config.total_steps:
      scalars = jax.tree.map(float, par.unreplicate(scalars))
      scalars["lr"] = float(learning_rate(config)(step - 1))
      progress.log(step, scalars)
      writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
    if config.image_every and step % config.image_every == 0:
      host_state = par.unreplicate(state)
      writer.write_images(step, _images(
          _examples(graphdef, host_state, batch, config, count=2),
          data.num_classes))
    if ckpt.preemption_requested():
      ckpt.save(step, par.unreplicate(state), train_iter, force=True)
      logging.warning("SIGTERM: saved step %d in %s; stopping", step, workdir)
      writer.close()
      return {"step": step, "preempted": True}
    if step == config.total_steps or ckpt.due(step):
      ckpt.save(step, par.unreplicate(state), train_iter, force=True)
    if config.eval_every and step % config.eval_every == 0 and (
        step < config.total_steps):
      run_eval()
  record = run_eval()
  if config.eval_every:
    record = with_best(record, history)
    logging.info(
        "final %s mIoU %.4f (step %d); best %s mIoU %.4f (step %d), the best "
        "of %d evaluations every %d steps, chosen on the %s split itself "
        "(optimistic) (%s)", config.eval_split, record["final_miou"],
        record["step"], config.eval_split, record["best_miou"],
        record["best_step"], len(record["evaluations"]), config.eval_every,
        config.eval_split, the_protocol)
  if jax.process_index() == 0:
    if config.get("figure"):
      write_figure(os.path.join(workdir, "figure.png"), graphdef,
                   par.unreplicate(state), data.eval, config,
                   title=f"{config.get('name', '')} {config.method}: "
                   f"{config.eval_split} mIoU {record['miou']:.3f}")
    metrics.write_metrics_json(os.path.join(workdir, "metrics.json"), record)
  writer.close()
  return record
