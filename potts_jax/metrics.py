"""Segmentation metrics and metric writers.

* :func:`confusion_matrix` — a jittable ``[K, K]`` confusion matrix of one
  batch (rows: ground truth, columns: prediction), ignoring every label outside
  ``0..K-1`` (255 unlabeled / ignore, 254 padding).
* :class:`ConfusionMatrix` — host-side (numpy int64) accumulation over a whole
  split; :func:`summarize` turns the matrix into mIoU, per-class IoU, pixel
  accuracy and mean class accuracy.
* :class:`MetricWriter` — scalars and images to TensorBoard (tensorboardX) and
  to the absl log, written by process 0 only.
* :class:`ProgressLogger` — the training progress line (step, losses, imgs/s,
  ETA).
* :func:`write_metrics_json` — the run's ``DIR/metrics.json``, written
  atomically.

IoU convention (the standard PASCAL VOC one): for class ``k``,
``IoU_k = cm[k, k] / (sum_j cm[k, j] + sum_i cm[i, k] - cm[k, k])``. A class
whose union is 0 (absent from both the ground truth and the predictions of
the whole split) has IoU NaN and is excluded from the mean; every other class
counts, including one that is predicted but never present in the ground truth
(IoU 0). Mean accuracy likewise averages the recall ``cm[k, k] / sum_j cm[k,
j]`` over the classes present in the ground truth only.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from potts_jax import files


def confusion_matrix(predictions: jax.Array, labels: jax.Array,
                     num_classes: int) -> jax.Array:
  """The confusion matrix of a batch of predictions.

  Pure ``jnp`` and jittable (``num_classes`` static). Pixels whose label is
  outside ``0..num_classes-1`` (255 ignore, 254 padding, negative values) do
  not count; predictions outside that range count in no column either (they
  cannot come from an ``argmax`` over ``num_classes`` logits).

  Args:
    predictions: ``[B, H, W]`` (any shape) integer predicted classes.
    labels: same shape, integer ground-truth classes.
    num_classes: ``K``, a Python int.

  Returns:
    ``[K, K]`` int32, ``cm[i, j]`` = number of valid pixels of ground truth
    ``i`` predicted as ``j``. int32 holds up to 2**31 - 1 pixels per batch; sum
    batches on the host in int64 (:class:`ConfusionMatrix`).
  """
  if predictions.shape != labels.shape:
    raise ValueError(f"predictions {predictions.shape} and labels "
                     f"{labels.shape} must have the same shape")
  k = int(num_classes)
  labels = jnp.asarray(labels).astype(jnp.int32).reshape(-1)
  predictions = jnp.asarray(predictions).astype(jnp.int32).reshape(-1)
  valid = ((labels >= 0) & (labels < k) & (predictions >= 0)
           & (predictions < k))
  index = jnp.where(valid, labels * k + predictions, 0)
  counts = jnp.zeros((k * k,), jnp.int32).at[index].add(
      valid.astype(jnp.int32))
  return counts.reshape(k, k)


class ConfusionMatrix:
  """Host-side accumulation of confusion matrices over a split (int64).

  Multi-host: pass :meth:`update` matrices that are already summed over all
  hosts (e.g. the output of a jitted step whose confusion matrix is reduced
  over the global batch, fetched with ``jax.device_get`` /
  ``multihost_utils.process_allgather``). This class never communicates.
  """

  def __init__(self, num_classes: int):
    self.num_classes = int(num_classes)
    self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

  def update(self, cm: Any) -> None:
    """Adds a ``[K, K]`` matrix (numpy or a fully addressable jax array)."""
    cm = np.asarray(cm)
    if cm.shape != self.matrix.shape:
      raise ValueError(f"confusion matrix of shape {cm.shape}, expected "
                       f"{self.matrix.shape}")
    self.matrix += cm.astype(np.int64)

  def reset(self) -> None:
    self.matrix[...] = 0

  def summarize(self, class_names: Sequence[str] | None = None
                ) -> dict[str, Any]:
    """:func:`summarize` of the accumulated matrix."""
    return summarize(self.matrix, class_names)


def summarize(cm: Any, class_names: Sequence[str] | None = None
              ) -> dict[str, Any]:
  """Metrics of a confusion matrix (see the module docstring for IoU NaNs).

  Args:
    cm: ``[K, K]`` counts, rows ground truth, columns prediction.
    class_names: ``K`` names; ``"0".."K-1"`` by default.

  Returns:
    A dict with ``miou`` (float, the mean of the non-NaN IoUs; NaN if there
    are none), ``iou`` (``dict[name, float]``, NaN for classes with union 0),
    ``pixel_accuracy`` (trace / total; NaN when no pixel counts),
    ``mean_accuracy`` (mean recall over classes present in the ground truth),
    ``num_pixels`` (int, the valid pixels), ``gt_pixels`` and
    ``pred_pixels`` (``dict[name, int]``) and ``num_classes_present`` (int,
    the classes that enter the mean IoU).
  """
  cm = np.asarray(cm, dtype=np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion matrix must be [K, K], got {cm.shape}")
  k = cm.shape[0]
  if class_names is None:
    class_names = [str(i) for i in range(k)]
  if len(class_names) != k:
    raise ValueError(f"{len(class_names)} class names for {k} classes")
  tp = np.diag(cm)
  gt = cm.sum(axis=1)
  pred = cm.sum(axis=0)
  union = gt + pred - tp
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
    recall = np.where(gt > 0, tp / np.where(gt > 0, gt, 1), np.nan)
  total = cm.sum()
  present = ~np.isnan(iou)
  return {
      "miou": float(np.mean(iou[present])) if present.any() else math.nan,
      "iou": {name: float(v) for name, v in zip(class_names, iou)},
      "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
      "mean_accuracy": (float(np.nanmean(recall)) if (gt > 0).any()
                        else math.nan),
      "num_pixels": int(total),
      "gt_pixels": {name: int(v) for name, v in zip(class_names, gt)},
      "pred_pixels": {name: int(v) for name, v in zip(class_names, pred)},
      "num_classes_present": int(present.sum()),
  }


def _to_json(value: Any) -> Any:
  """NaN / inf → None, numpy scalars and arrays → Python values."""
  if isinstance(value, Mapping):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json(v) for v in value]
  if isinstance(value, np.ndarray):
    return _to_json(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_metrics_json(path: str | os.PathLike, record: Mapping[str, Any]
                       ) -> str:
  """Writes ``record`` as JSON atomically (temporary file + ``os.replace``).

  ``path`` is the file, or a directory (then ``path/metrics.json``). NaN and
  infinities become ``null`` (strict JSON). The record of a run holds at least
  ``step``, ``miou``, ``iou`` (per class), ``pixel_accuracy`` and
  ``protocol`` (e.g. ``"full image, single scale, 255 ignored, val, 1449
  images"``); this function does not check the keys.

  Returns:
    The path written.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.json")
  text = json.dumps(_to_json(dict(record)), indent=2, sort_keys=True,
                    allow_nan=False)
  files.atomic_write(path, lambda f: f.write((text + "\n").encode()))
  return path


def read_metrics_json(path: str | os.PathLike) -> dict[str, Any]:
  """Reads :func:`write_metrics_json`'s file (``null`` stays ``None``)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.json")
  with open(path) as f:
    return json.load(f)


class MetricWriter:
  """Scalars and images to TensorBoard (tensorboardX) and the absl log.

  Only an ``enabled`` writer (by default: process 0) creates the event file
  and writes; the others accept every call and do nothing, so that all hosts
  can run the same code.

  Args:
    logdir: the TensorBoard directory (created).
    enabled: whether this process writes; ``jax.process_index() == 0`` by
      default.
    log_scalars: also log every scalar dict with ``absl.logging.info``.
  """

  def __init__(self, logdir: str | os.PathLike, *, enabled: bool | None = None,
               log_scalars: bool = True):
    self.logdir = os.fspath(logdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.log_scalars = log_scalars
    self._writer = None
    if self.enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      os.makedirs(self.logdir, exist_ok=True)
      self._writer = SummaryWriter(self.logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes ``{name: number}`` (numpy / jax scalars allowed) at ``step``."""
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    for name, value in values.items():
      self._writer.add_scalar(name, value, int(step))
    if self.log_scalars:
      logging.info("[%d] %s", int(step),
                   ", ".join(f"{k}={v:.6g}" for k, v in values.items()))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    """Writes ``{name: [H, W, 3] or [N, H, W, 3] uint8}`` at ``step``."""
    if not self.enabled:
      return
    for name, image in images.items():
      image = np.asarray(image)
      if image.dtype != np.uint8:
        raise ValueError(f"image {name!r} must be uint8, got {image.dtype}")
      if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        self._writer.add_image(name, image, int(step), dataformats="HWC")
      elif image.ndim == 4 and image.shape[-1] in (1, 3, 4):
        self._writer.add_images(name, image, int(step), dataformats="NHWC")
      else:
        raise ValueError(f"image {name!r} must be [H, W, 3] or [N, H, W, 3],"
                         f" got {image.shape}")

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None
    self.enabled = False

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = max(0, int(round(seconds)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}"


def progress_line(step: int, total_steps: int, losses: Mapping[str, Any],
                  images_per_sec: float | None, eta_seconds: float | None
                  ) -> str:
  """``"step 120/1000 loss=0.5123 pce=0.41 | 23.4 imgs/s | ETA 0:10:02"``."""
  width = len(str(total_steps))
  parts = [f"step {step:>{width}d}/{total_steps}"]
  if losses:
    parts.append(" ".join(f"{k}={float(np.asarray(v)):.4g}"
                          for k, v in losses.items()))
  line = " ".join(parts)
  if images_per_sec is not None:
    line += f" | {images_per_sec:.1f} imgs/s"
  if eta_seconds is not None:
    line += f" | ETA {_duration(eta_seconds)}"
  return line


class ProgressLogger:
  """Throughput and ETA of the training loop, as one log line.

  The rate is measured between consecutive :meth:`line` calls (so the first
  call, which usually includes compilation, only starts the clock).

  Args:
    total_steps: the last step of the run.
    batch_size: global images per step.
    clock: a monotonic clock in seconds (``time.monotonic``; injectable for
      tests).
  """

  def __init__(self, total_steps: int, batch_size: int, *,
               clock: Callable[[], float] = time.monotonic):
    self.total_steps = int(total_steps)
    self.batch_size = int(batch_size)
    self._clock = clock
    self._last: tuple[int, float] | None = None
    self.images_per_sec: float | None = None

  def line(self, step: int, losses: Mapping[str, Any] | None = None) -> str:
    """The progress line at ``step`` (and updates the rate)."""
    now = self._clock()
    eta = None
    if self._last is not None:
      last_step, last_time = self._last
      if step > last_step and now > last_time:
        steps_per_sec = (step - last_step) / (now - last_time)
        self.images_per_sec = steps_per_sec * self.batch_size
        eta = (self.total_steps - step) / steps_per_sec
    self._last = (int(step), now)
    return progress_line(int(step), self.total_steps, losses or {},
                         self.images_per_sec, eta)

  def log(self, step: int, losses: Mapping[str, Any] | None = None) -> str:
    """:meth:`line`, also logged with ``absl.logging.info``."""
    text = self.line(step, losses)
    logging.info("%s", text)
    return text
