"""Training: the model, optimiser and train state of a config, and the loop.

``train_and_evaluate(config, workdir)`` runs one stage (``config.loss.method``)
or, when ``config.stages`` lists several, each in ``workdir/<stage name>``
with stage ``k > 0`` initialised from stage ``k - 1`` (paper appendix C:
stage 1 partial CE, stage 2 self-labeling from the stage-1 checkpoint). A
stage is the config with the stage's overrides, dotted keys such as
``{"name": "stage2", "loss.method": "soft_sl", "optim.lr": 0.0007}``
(:func:`with_overrides`); every stage's config is checked
(:func:`potts_jax.steps.check_config`) before the first one trains. A stage:

1. opens the data (:func:`potts_jax.data.sources.open_sources`), builds the
   DeepLabV3+ (:func:`build_model`), loads ImageNet backbone weights
   (``config.model.pretrained_dir``) or the previous stage
   (``config.init_from``);
2. splits it into the plain-pytree train state (:func:`create_state`) and
   resumes from the newest checkpoint in the workdir, model and data iterator
   together (:mod:`potts_jax.checkpointing`);
3. runs the per-device :func:`potts_jax.steps.train_step` through
   :class:`potts_jax.parallel.DataParallel` (``config.parallel``) until
   ``config.total_steps``, logging a progress line and TensorBoard scalars
   every ``log_every`` steps, images every ``image_every``, saving every
   ``checkpoint_every`` and on SIGTERM (then it returns), evaluating every
   ``config.eval.every``;
4. evaluates on the whole eval split by ``config.eval.protocol``
   (:func:`eval_dataset`: ``full``, ``center_crop`` or ``padded``; every
   number is logged with :func:`protocol`, which names it) and writes
   ``workdir/metrics.json``; with ``eval.every``, each evaluation is also
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
from typing import Any, Mapping

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from potts_jax import checkpointing
from potts_jax import evaluation
from potts_jax import faults
from potts_jax import metrics
from potts_jax import parallel
from potts_jax import steps
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
      init_value=config.optim.lr, end_value=0.0,
      power=config.optim.poly_power,
      transition_steps=max(1, config.total_steps))


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> optax.GradientTransformation:
  """SGD of the lineage (``config.optim``): momentum, weight decay on every
  parameter, head ×10.

  torch's ``SGD(momentum=0.9, weight_decay=5e-4)`` on two parameter groups
  (backbone at ``lr``, ASPP + decoder at ``head_lr_mult · lr``), as
  rloss / DeepLab-pytorch: the decay ``wd · p`` is added to the gradient of
  every parameter (BatchNorm scales and biases included) before the momentum.
  """
  schedule = learning_rate(config)
  optim = config.optim

  def group(mult):
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay),
        optax.sgd(lambda step: mult * schedule(step),
                  momentum=optim.momentum or None))

  return optax.multi_transform(
      {"backbone": group(1.0), "head": group(optim.head_lr_mult)},
      deeplabv3plus.param_labels)


def create_state(model: nnx.Module, tx: optax.GradientTransformation,
                 seed: int) -> tuple[steps.ModelDef, dict[str, Any]]:
  """``(model_def, state)``: the model split into the plain train state.

  ``state`` holds ``params`` (``nnx.Param``), ``batch_stats``
  (``nnx.BatchStat``), ``opt_state``, ``step`` (int32), ``nonfinite_steps``
  (int32, consecutive skipped steps: :func:`potts_jax.steps.guard_nonfinite`)
  and ``rng``
  (``uint32[2]`` key data); ``model_def`` (:class:`potts_jax.steps.ModelDef`)
  the rest of the model.
  """
  graphdef, params, batch_stats, rngs = nnx.split(model, nnx.Param,
                                                  nnx.BatchStat, ...)
  state = {"params": params, "batch_stats": batch_stats,
           "opt_state": tx.init(params), "step": jnp.int32(0),
           "nonfinite_steps": jnp.int32(0),
           "rng": jax.random.key_data(jax.random.key(seed))}
  return steps.ModelDef(graphdef, rngs), state


def with_overrides(config: ml_collections.ConfigDict,
                   overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A locked copy of ``config`` with ``overrides`` (a stage's) applied.

  Args:
    config: the config.
    overrides: ``{dotted key: value}``, e.g. ``{"loss.method": "soft_sl",
      "optim.lr": 0.0007, "total_steps": 200}``; the value keeps the key's
      type (ConfigDict type safety).

  Raises:
    ValueError: a key the config does not have (a typo would otherwise be
      ignored), naming it and, for a bare key of a section, its full name.
  """
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = out
    for part in path:
      if isinstance(node, ml_collections.ConfigDict):
        node = node.get(part)
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ValueError(f"unknown config key {key!r}{_did_you_mean(out, key)}")
    node[leaf] = value
  out.lock()
  return out


def _did_you_mean(config: ml_collections.ConfigDict, key: str) -> str:
  """``"; did you mean 'loss.method'?"`` for a key found in a section."""
  leaf = key.split(".")[-1]
  found = [f"{name}.{leaf}" for name, section in config.items()
           if isinstance(section, ml_collections.ConfigDict)
           and leaf in section]
  return f"; did you mean {' or '.join(map(repr, found))}?" if found else ""


def _stage_configs(config: ml_collections.ConfigDict, workdir: str):
  """``[(stage config, stage workdir)]`` of a config with ``stages``.

  Raises:
    ValueError: for a stage without a ``name`` or with a key the config does
      not have (:func:`with_overrides`).
  """
  out = []
  previous = None
  for i, overrides in enumerate(config.stages):
    overrides = dict(overrides)
    if not overrides.get("name"):
      raise ValueError(f"stages[{i}] has no name: {overrides}")
    try:
      stage = with_overrides(config, {"stages": (), **overrides})
    except ValueError as e:
      raise ValueError(f"stage {overrides['name']!r}: {e}") from None
    if previous is not None and not overrides.get("init_from"):
      stage.init_from = previous
    previous = os.path.join(workdir, overrides["name"])
    out.append((stage, previous))
  return out


def _check(config: ml_collections.ConfigDict, stage: str = "") -> None:
  """:func:`potts_jax.steps.check_config`, the stage named in its error."""
  try:
    steps.check_config(config)
  except ValueError as e:
    raise ValueError(f"stage {stage!r}: {e}" if stage else str(e)) from None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str
                       ) -> dict[str, Any]:
  """Trains and evaluates ``config`` in ``workdir`` (module docstring).

  Returns:
    The final metrics record (also in ``workdir/metrics.json``); with
    ``stages``, ``{"stages": {name: record}, **last stage's record}``. A run
    stopped by SIGTERM returns ``{"step": k, "preempted": True}`` after saving
    step ``k``, and starts no further stage.

  Raises:
    ValueError: a bad config, naming the key (before anything is trained).
  """
  if not config.stages:
    _check(config)
    return _train_stage(config, workdir)
  stages = _stage_configs(config, workdir)
  for stage, _ in stages:
    _check(stage, stage.name)
  records = {}
  for stage, stage_dir in stages:
    record = _train_stage(stage, stage_dir)
    if record.get("preempted"):
      return dict(record, stage=stage.name)
    records[stage.name] = record
    faults.maybe_fail("stage_boundary")
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
  batch_size = config.input.batch_size
  if batch_size % jax.process_count():
    raise ValueError(f"config.input.batch_size {batch_size} is not a "
                     f"multiple of the {jax.process_count()} processes")
  par = parallel.DataParallel(config.parallel)
  per_host = batch_size // jax.process_count()
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  model = build_model(config, data.num_classes)
  if config.init_from:
    step = checkpointing.restore_model(config.init_from, model)
    logging.info("initialised from %s (step %d)", config.init_from, step)
  elif config.model.pretrained_dir:
    from potts_jax.models import pretrained  # pylint: disable=g-import-not-at-top
    pretrained.load_backbone(model, config.model.pretrained_dir)
  tx = make_optimizer(config)
  graphdef, state = create_state(model, tx, config.seed)
  del model
  train_iter = iter(pipeline.train_dataset(
      data.train, crop_size=config.input.crop_size, batch_size=per_host,
      seed=config.seed, scale_range=tuple(config.input.scale_range),
      flip=config.input.flip, blur_prob=config.input.blur_prob,
      worker_count=config.input.worker_count))
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
      scales=tuple(config.eval.scales), flip=config.eval.flip),
      replicated=(True, False))
  writer = metrics.MetricWriter(workdir, log_scalars=False)
  progress = metrics.ProgressLogger(config.total_steps,
                                    config.input.batch_size)
  the_protocol = evaluation.protocol(config, data.description)
  logging.info("stage %s: %s from step %d to %d", config.name,
               config.loss.method, step, config.total_steps)

  eval_cache = {}  # The eval protocol's per-source data (full: shapes).
  history_path = os.path.join(workdir, evaluation.EVALUATIONS)
  every = config.eval.every
  history = evaluation.read_evaluations(history_path) if every else []

  def run_eval():
    cm = evaluation.evaluate(par, eval_fn, state, data.eval, config,
                             data.num_classes, cache=eval_cache)
    record = dict(step=step, **metrics.summarize(cm, data.classes),
                  protocol=the_protocol, method=config.loss.method)
    writer.write_scalars(step, {"eval/miou": record["miou"],
                                "eval/pixel_accuracy":
                                    record["pixel_accuracy"]})
    logging.info("step %d: mIoU %.4f, pixel accuracy %.4f (%s)", step,
                 record["miou"], record["pixel_accuracy"], the_protocol)
    if every:
      entry = evaluation.evaluation_record(record)
      history.append(entry)
      if jax.process_index() == 0:
        with open(history_path, "a") as f:
          f.write(json.dumps(entry) + "\n")
    return record

  while step < config.total_steps:
    batch = next(train_iter)
    state, scalars = train_fn(state, par.put_batch(batch))
    faults.maybe_fail("train_step")
    step += 1
    due = step == config.total_steps or ckpt.due(step)
    if step % config.log_every == 0 or due:
      scalars = jax.tree.map(float, par.unreplicate(scalars))
      steps.check_nonfinite(config, step, scalars, ckpt)
      scalars["lr"] = float(learning_rate(config)(step - 1))
      progress.log(step, scalars)
      writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
    if config.image_every and step % config.image_every == 0:
      host_state = par.unreplicate(state)
      writer.write_images(step, evaluation.example_images(
          evaluation.examples(graphdef, host_state, batch, config, count=2),
          data.num_classes))
    if ckpt.preemption_requested():
      ckpt.save(step, par.unreplicate(state), train_iter, force=True)
      logging.warning("SIGTERM: saved step %d in %s; stopping", step, workdir)
      writer.close()
      return {"step": step, "preempted": True}
    if due:
      ckpt.save(step, par.unreplicate(state), train_iter, force=True)
    if every and step % every == 0 and step < config.total_steps:
      run_eval()
  record = run_eval()
  if every:
    record = evaluation.with_best(record, history)
    logging.info(
        "final %s mIoU %.4f (step %d); best %s mIoU %.4f (step %d), the best "
        "of %d evaluations every %d steps, chosen on the %s split itself "
        "(optimistic) (%s)", config.eval.split, record["final_miou"],
        record["step"], config.eval.split, record["best_miou"],
        record["best_step"], len(record["evaluations"]), every,
        config.eval.split, the_protocol)
  if jax.process_index() == 0:
    if config.figure:
      evaluation.write_figure(os.path.join(workdir, "figure.png"), graphdef,
                   par.unreplicate(state), data.eval, config,
                   title=f"{config.name} {config.loss.method}: "
                   f"{config.eval.split} mIoU {record['miou']:.3f}")
    metrics.write_metrics_json(os.path.join(workdir, "metrics.json"), record)
  writer.close()
  return record
