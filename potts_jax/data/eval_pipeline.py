"""Eval batches: the eval split's examples, by protocol, in batches.

:func:`full_image_batches` groups images of one exact shape (no padding:
the logits of an image do not depend on its batch-mates),
:func:`center_crop_batches` scores rloss's FixScaleCrop
(:func:`fix_scale_crop`), :func:`eval_batches` pads every image to a common
size with the padding code 254 (the ``padded`` protocol). Each host reads its
share of the split (:func:`potts_jax.data.pipeline.host_indices`); batches
carry ``image`` float32 ``[B, h, w, 3]`` in 0..255, ``mask`` and
``scribbles`` int32 ``[B, h, w]`` and the unpadded ``size`` of each image.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from potts_jax.data.augmentation import LABEL_KEYS
from potts_jax.data.augmentation import read_example
from potts_jax.labels import PADDING
from potts_jax.data.pipeline import host_indices
from potts_jax.data.pipeline import host_share


def pad_examples(
    examples: Sequence[dict[str, Any]],
    shape: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
  """Stacks examples of different sizes, padding at the bottom and right.

  Args:
    examples: outputs of :func:`~potts_jax.data.augmentation.read_example`.
    shape: ``(H, W)`` to pad to; the largest height and width by default.

  Returns:
    ``image`` ``[B, H, W, 3]`` float32 in 0..255 (0 on padding), ``mask`` and
    ``scribbles`` ``[B, H, W]`` int32 (254 on padding).

  Raises:
    ValueError: an example does not fit in ``shape``.
  """
  if shape is None:
    shape = (max(e["mask"].shape[0] for e in examples),
             max(e["mask"].shape[1] for e in examples))
  h, w = shape
  batch = {"image": np.zeros((len(examples), h, w, 3), np.float32),
           "mask": np.full((len(examples), h, w), PADDING, np.int32),
           "scribbles": np.full((len(examples), h, w), PADDING, np.int32)}
  for b, e in enumerate(examples):
    eh, ew = e["mask"].shape
    if eh > h or ew > w:
      raise ValueError(f"example {e.get('name', '')!r} of size {(eh, ew)} "
                       f"does not fit in {tuple(shape)}")
    for key in ("image",) + LABEL_KEYS:
      batch[key][b, :eh, :ew] = e[key]
  return batch


# A padding example: no pixels, so that it is all padding once stacked.
_EMPTY = {"image": np.zeros((0, 0, 3), np.uint8),
          "mask": np.zeros((0, 0), np.uint8),
          "scribbles": np.zeros((0, 0), np.uint8), "name": ""}


def eval_batches(
    source: Any,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    pad_to: tuple[int, int] | None = None,
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
  """Padded evaluation batches of this host, in source order.

  The ``padded`` protocol (and, with ``transform``, the ``center_crop`` one,
  see :func:`center_crop_batches`): the padding is part of the network's input,
  so a prediction depends on it (ASPP's image pooling averages over the whole
  padded map; convolutions near the image's bottom and right borders see the
  zeros) and, without ``pad_to``, on the batch-mates that set the padded size.
  :func:`full_image_batches` has no padding.

  Labels are never resized. Each batch is padded to the largest height and
  width among its examples (or to ``pad_to``), image 0 and labels 254. Every
  host yields the same number of batches, ``ceil(ceil(n / process_count) /
  batch_size)``: the last batch (and, on a host with one example fewer than
  others, possibly one more) is filled with padding examples — all pixels
  padding, ``valid`` False, name ``""`` — so that every host enters every
  step. Sizes still differ across hosts unless ``pad_to`` is given; give it
  (e.g. ``(512, 512)`` for VOC) when the batches go through :func:`to_global`
  on several hosts.

  Args:
    source: the random-access source (see the module docstring).
    batch_size: examples per host-local batch.
    process_index: this host; ``jax.process_index()`` by default.
    process_count: the number of hosts; ``jax.process_count()`` by default.
    pad_to: ``(H, W)`` to pad every batch to; the batch's largest by default.
    transform: applied to each example (an output of
      :func:`~potts_jax.data.augmentation.read_example`) before padding.

  Yields:
    Dicts with ``image`` ``[B, H, W, 3]`` float32 in 0..255, ``mask`` and
    ``scribbles`` ``[B, H, W]`` int32, ``valid`` ``[B]`` bool, ``size``
    ``[B, 2]`` int32 (each example's ``(h, w)`` before padding, ``(0, 0)``
    for padding examples) and ``name`` ``[B]`` object array of ``str``.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size {batch_size} must be positive")
  n = len(source)
  process_index, process_count = host_share(n, process_index, process_count)
  indices = host_indices(n, process_index, process_count)
  per_host = -(-n // process_count)
  num_batches = -(-per_host // batch_size)
  for start in range(0, num_batches * batch_size, batch_size):
    chunk = indices[start:start + batch_size]
    examples = [read_example(source[int(i)]) for i in chunk]
    if transform is not None:
      examples = [transform(e) for e in examples]
    if examples:
      shape = pad_to or (max(e["mask"].shape[0] for e in examples),
                         max(e["mask"].shape[1] for e in examples))
    else:
      shape = pad_to or (1, 1)
    yield _eval_batch(examples, batch_size, shape)


def _eval_batch(examples: Sequence[dict[str, Any]], batch_size: int,
                shape: tuple[int, int]) -> dict[str, Any]:
  """``examples`` padded to ``shape`` and filled with padding examples."""
  missing = batch_size - len(examples)
  batch = pad_examples(list(examples) + [_EMPTY] * missing, shape)
  batch["valid"] = np.arange(batch_size) < len(examples)
  batch["size"] = np.array([e["mask"].shape for e in examples]
                           + [(0, 0)] * missing, np.int32).reshape(-1, 2)
  names = [e["name"] for e in examples] + [""] * missing
  batch["name"] = np.array(names, dtype=object)
  return batch


def example_shapes(source: Any) -> list[tuple[int, int]]:
  """``(H, W)`` of every example of ``source`` (reads them all)."""
  return [read_example(source[i])["mask"].shape for i in range(len(source))]


def full_image_batches(
    source: Any,
    *,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    shapes: Sequence[tuple[int, int]] | None = None,
) -> Iterator[dict[str, Any]]:
  """Evaluation batches of the ``full`` protocol: every image unpadded.

  Examples are grouped by exact shape (groups in order of first appearance in
  the source, source order within a group) and a batch holds images of one
  shape only, so no image is padded. In eval mode the network treats the
  images of a batch independently (BatchNorm uses its running statistics,
  ASPP's image pooling averages each image's own map), so each prediction
  equals the network's output on that image alone, at batch 1, unpadded: the
  protocol of full-image evaluation at batch 1 (robust_trust_region), batched.

  Padding an image to a larger bucket cannot give that equality, even with
  ASPP's pooling masked to the valid region: the network's bilinear resizes
  (ASPP output to the decoder's stride 4, logits to the input size) map
  ``ceil(h / 16)`` to ``ceil(h / 4)`` rows in one case and the bucket's rows in
  the other, with different sampling positions, and every zero-padded
  convolution would also need its padding re-zeroed after each layer. The
  price of exactness is one compilation per distinct image shape (batches are
  filled with padding examples to ``batch_size``, so not one per partial
  batch).

  Hosts: each global chunk of ``batch_size * process_count`` examples of a
  shape is split strided over the hosts, so every host yields the same number
  of batches, with the same shapes, in the same order (some all padding
  examples), as :func:`to_global` and the collectives of the eval step need;
  every host therefore needs the shapes of the whole source.

  Args:
    source: the random-access source (see the module docstring).
    batch_size: examples per host-local batch.
    process_index: this host; ``jax.process_index()`` by default.
    process_count: the number of hosts; ``jax.process_count()`` by default.
    shapes: ``(H, W)`` of every example (:func:`example_shapes`, which reads
      the whole source, by default; pass it to evaluate again cheaply).

  Yields:
    Dicts as :func:`eval_batches`' with ``H, W`` the batch's one image shape.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size {batch_size} must be positive")
  n = len(source)
  process_index, process_count = host_share(n, process_index, process_count)
  if shapes is None:
    shapes = example_shapes(source)
  if len(shapes) != n:
    raise ValueError(f"{len(shapes)} shapes for a source of {n} examples")
  groups: dict[tuple[int, int], list[int]] = {}
  for i, shape in enumerate(shapes):
    groups.setdefault(tuple(int(d) for d in shape), []).append(i)
  per_step = batch_size * process_count
  for shape, indices in groups.items():
    for start in range(0, len(indices), per_step):
      chunk = indices[start:start + per_step][process_index::process_count]
      examples = [read_example(source[i]) for i in chunk]
      for e in examples:
        if e["mask"].shape != shape:
          raise ValueError(f"example {e['name']!r} has shape "
                           f"{e['mask'].shape}, not the {shape} given")
      yield _eval_batch(examples, batch_size, shape)


def fix_scale_crop(example: dict[str, Any], crop_size: int) -> dict[str, Any]:
  """rloss's evaluation transform ``FixScaleCrop(crop_size)``, in numpy / PIL.

  The short side is resized to ``crop_size`` (the long one to
  ``int(long * crop_size / short)``; image PIL bilinear, labels PIL nearest),
  then the centre ``crop_size x crop_size`` square is cut, its corner at
  ``int(round((side - crop_size) / 2))`` (Python's round, half to even, as
  rloss's). The crop always lies inside the resized image, so nothing is
  padded; the metric is computed on the crop, at the resized resolution
  (what lies outside the centre square is not evaluated).

  Args:
    example: an output of :func:`~potts_jax.data.augmentation.read_example`.
    crop_size: the side of the square.

  Returns:
    The example with ``image`` ``[crop, crop, 3]`` uint8, ``mask`` and
    ``scribbles`` ``[crop, crop]`` uint8.
  """
  h, w = example["mask"].shape
  if w > h:
    oh, ow = crop_size, int(1.0 * w * crop_size / h)
  else:
    oh, ow = int(1.0 * h * crop_size / w), crop_size
  x1 = int(round((ow - crop_size) / 2.0))
  y1 = int(round((oh - crop_size) / 2.0))
  out = dict(example)
  for key in ("image",) + LABEL_KEYS:
    resample = Image.BILINEAR if key == "image" else Image.NEAREST
    resized = np.asarray(Image.fromarray(example[key]).resize((ow, oh),
                                                              resample))
    out[key] = resized[y1:y1 + crop_size, x1:x1 + crop_size]
  return out


def center_crop_batches(
    source: Any,
    *,
    batch_size: int,
    crop_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, Any]]:
  """Evaluation batches of the ``center_crop`` protocol (rloss's).

  Each example through :func:`fix_scale_crop`, in source order; every batch
  is ``[B, crop_size, crop_size]`` (one compilation) and holds no padding but
  that of the padding examples filling the last batch.

  Args:
    source: the random-access source (see the module docstring).
    batch_size: examples per host-local batch.
    crop_size: the side of the square crops.
    process_index: this host; ``jax.process_index()`` by default.
    process_count: the number of hosts; ``jax.process_count()`` by default.

  Yields:
    Dicts as :func:`eval_batches`'.
  """
  if crop_size < 1:
    raise ValueError(f"crop_size {crop_size} must be positive")
  return eval_batches(
      source, batch_size=batch_size, process_index=process_index,
      process_count=process_count, pad_to=(crop_size, crop_size),
      transform=lambda e: fix_scale_crop(e, crop_size))
