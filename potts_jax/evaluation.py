"""Evaluation: the eval protocols, the evaluation loop and its records.

:func:`eval_dataset` turns the eval split into batches by
``config.eval.protocol``: ``full`` (every image at its own size, unpadded:
the logits equal single-image inference), ``center_crop`` (rloss's
FixScaleCrop) or ``padded``; :func:`protocol` names it in the string logged
with every number; :func:`evaluate` accumulates the confusion matrix over
the split; :func:`with_best` keeps the final and the best val mIoU of a run
(``evaluations.jsonl``); :func:`write_figure` draws a few examples.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from potts_jax import faults
from potts_jax import metrics
from potts_jax import parallel
from potts_jax import steps
from potts_jax.data import augmentation
from potts_jax.data import eval_pipeline
EVAL_PROTOCOLS = ("full", "center_crop", "padded")


def eval_dataset(source: Any, config: ml_collections.ConfigDict, *,
                 batch_size: int, cache: dict[str, Any] | None = None,
                 process_index: int | None = None,
                 process_count: int | None = None) -> Any:
  """The host-local eval batches of ``config.eval.protocol``.

  * ``full``: every image at its own size, unpadded, batched only with images
    of the same shape (:func:`potts_jax.data.eval_pipeline.full_image_batches`):
    each prediction equals the network's on the image alone; one compilation
    per distinct shape.
  * ``center_crop``: rloss's ``FixScaleCrop(config.eval.crop_size)``: short
    side resized to the crop size, the centre square scored
    (:func:`potts_jax.data.eval_pipeline.center_crop_batches`).
  * ``padded``: images padded at the bottom and right with zeros to
    ``config.eval.pad_to`` (or to the largest of each batch), labels ignored
    there; the padding enters the network
    (:func:`potts_jax.data.eval_pipeline.eval_batches`).

  Args:
    source: the eval source.
    config: the run's config (``eval.protocol``, ``eval.crop_size``,
      ``eval.pad_to``).
    batch_size: examples per host-local batch.
    cache: a dict kept between evaluations of the same source (``full``
      stores the example shapes there, so that they are read once).
    process_index: this host; ``jax.process_index()`` by default.
    process_count: the number of hosts; ``jax.process_count()`` by default.

  Returns:
    An iterator of batches (see :func:`potts_jax.data.eval_pipeline.eval_batches`).

  Raises:
    ValueError: an unknown ``eval.protocol``.
  """
  name = config.eval.protocol
  hosts = dict(process_index=process_index, process_count=process_count)
  if name == "full":
    cache = {} if cache is None else cache
    if "shapes" not in cache:
      cache["shapes"] = eval_pipeline.example_shapes(source)
    return eval_pipeline.full_image_batches(source, batch_size=batch_size,
                                       shapes=cache["shapes"], **hosts)
  if name == "center_crop":
    return eval_pipeline.center_crop_batches(
        source, batch_size=batch_size, crop_size=config.eval.crop_size,
        **hosts)
  if name == "padded":
    pad_to = tuple(config.eval.pad_to) or None
    return eval_pipeline.eval_batches(source, batch_size=batch_size, pad_to=pad_to,
                                 **hosts)
  raise ValueError(f"config.eval.protocol {name!r}; expected one of "
                   f"{EVAL_PROTOCOLS}")


def evaluate(par: parallel.DataParallel, eval_fn: Any, state: Any,
             source: Any, config: ml_collections.ConfigDict, num_classes: int,
             cache: dict[str, Any] | None = None) -> np.ndarray:
  """The confusion matrix ``[K, K]`` of the whole eval split (every host).

  ``cache``: see :func:`eval_dataset`.
  """
  faults.maybe_fail("evaluation")
  per_host = config.eval.batch_size // jax.process_count()
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
  (``config.eval.scales``, ``config.eval.flip``), each example's map cut
  back to its size before padding.

  Args:
    graphdef: the model's :class:`potts_jax.steps.ModelDef`.
    state: a host (unreplicated) train state.
    source: the eval source.
    config: the run's config.
    batch_size: examples per batch; ``config.eval.batch_size`` by default.

  Yields:
    ``(name, probs [h, w, K] float32, mask [h, w] int32)`` per example, in the
    protocol's order (``full``: grouped by shape).
  """
  fn = jax.jit(functools.partial(
      steps.predict, graphdef=graphdef, scales=tuple(config.eval.scales),
      flip=config.eval.flip))
  for batch in eval_dataset(source, config,
                            batch_size=batch_size or config.eval.batch_size,
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
  scales = tuple(config.eval.scales)
  name = config.eval.protocol
  batch = config.eval.batch_size
  if name == "full":
    view = ("full image, {scales} (each image at its own size, unpadded, "
            "batched only with images of its size)")
  elif name == "center_crop":
    crop = config.eval.crop_size
    view = (f"rloss centre crop, {{scales}} (FixScaleCrop {crop}: short side "
            f"resized to {crop}, image bilinear, labels nearest; the centre "
            f"{crop}x{crop} square scored at that resolution)")
  elif name == "padded":
    if config.eval.pad_to:
      h, w = config.eval.pad_to
      where = f"the top left of a {h}x{w} zero canvas"
    else:
      where = (f"the top left of a zero canvas the size of the largest image "
               f"of its batch of {batch}, in source order")
    view = (f"padded, {{scales}} (each image at {where}, labels ignored "
            "outside it; the padding enters the network: ASPP image pooling, "
            "border convolutions)")
  else:
    raise ValueError(f"config.eval.protocol {name!r}; expected one of "
                     f"{EVAL_PROTOCOLS}")
  scale_text = ("single scale" if scales == (1.0,) else f"scales {scales}"
                ) + (", flip" if config.eval.flip else "")
  return (f"{config.eval.split} of {description}; "
          f"{view.format(scales=scale_text)}; 255 ignored; mIoU over "
          "classes present in GT or prediction")


#: Per-stage log of the evaluations of ``eval.every`` (one JSON a line).
EVALUATIONS = "evaluations.jsonl"


def evaluation_record(record: dict[str, Any]) -> dict[str, Any]:
  """``{step, miou, pixel_accuracy}`` of a record, JSON-ready (NaN: None)."""
  number = lambda x: None if x is None or not np.isfinite(x) else float(x)
  return {"step": int(record["step"]), "miou": number(record["miou"]),
          "pixel_accuracy": number(record["pixel_accuracy"])}


def read_evaluations(path: str) -> list[dict[str, Any]]:
  """The entries of an :data:`EVALUATIONS` file (``[]`` when absent).

  A last line cut off by a kill during its append is dropped (with a
  warning); a bad line before it is an error naming the file and line.
  """
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    lines = [line for line in f.read().split("\n") if line.strip()]
  entries = []
  for number, line in enumerate(lines, 1):
    try:
      entries.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number < len(lines):
        raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
      logging.warning("%s: dropping its cut-off last line %r", path, line)
  return entries


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
  by_step[int(record["step"])] = evaluation_record(record)
  evaluations = [by_step[k] for k in sorted(by_step)]
  # An mIoU of None (NaN) never wins; max keeps the first maximum.
  best = max(evaluations,
             key=lambda e: -1.0 if e["miou"] is None else e["miou"])
  return dict(record, final_miou=record["miou"], best_miou=best["miou"],
              best_step=best["step"],
              best_pixel_accuracy=best["pixel_accuracy"],
              evaluations=evaluations)


def examples(graphdef, state, batch, config, count=1) -> list[dict]:
  """Image / scribbles / mask / pseudo-labels / prediction of a few examples.

  ``state`` is a host copy; ``batch`` a host-local numpy batch. The
  pseudo-labels are the solver's ``y`` from the network's current logits, as
  the self-labeling step computes them.
  """
  image = jnp.asarray(batch["image"][:count], jnp.float32)
  scribbles = jnp.asarray(batch["scribbles"][:count], jnp.int32)
  logits = _logits_fn(graphdef)(state, image)
  y = steps.pseudo_labels(logits, image, scribbles, config.loss.method,
                          *steps.energy_and_options(config))
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


def example_images(examples: list[dict], num_classes: int) -> dict[str, np.ndarray]:
  """TensorBoard images (uint8 ``[N, H, W, 3]``) of :func:`_examples`."""
  from potts_jax.plots import viz  # pylint: disable=g-import-not-at-top
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
  from potts_jax.plots import viz  # pylint: disable=g-import-not-at-top
  read = [augmentation.read_example(source[i])
          for i in range(min(count, len(source)))]
  by_size = {}
  for ex in read:  # One call per image size (eval images may differ).
    by_size.setdefault(ex["image"].shape, []).append(ex)
  rows = []
  for group in by_size.values():
    batch = {k: np.stack([ex[k] for ex in group])
             for k in ("image", "scribbles", "mask")}
    rows += examples(graphdef, state, batch, config, count=len(group))
  viz.save_figure(viz.training_figure(rows, title=title), path)
