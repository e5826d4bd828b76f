"""The grain input pipeline: a random-access source to train and eval batches.

A *source* is anything with ``__len__`` and ``__getitem__(i) -> dict`` (what
``tfds.data_source(...)`` returns for the project's TFDS builders, or a plain
list of dicts in the tests). Each example holds numpy arrays:

* ``image`` ``[H, W, 3]`` uint8 RGB photo;
* ``mask`` ``[H, W]`` (or ``[H, W, 1]``) uint8 class ids, 255 ignore;
* ``scribbles`` same shape, class ids, 255 unlabeled;
* optionally ``name`` (``str`` or ``bytes``).

Training (:func:`train_dataset`) reads and augments every example with
:mod:`potts_jax.data.augmentation` (flip, scale, pad, crop, blur), all in
numpy / PIL so that no JAX computation runs in the workers (grain itself
imports jax; this module uses it only in the host-side :func:`to_global` and
for the default process index).

Every random choice of an example comes from
``np.random.default_rng([seed, epoch, index])`` with ``index`` the example's
index in the source, so that batches depend neither on the number of workers
nor on the order in which they run.

Batches hold ``image`` float32 ``[B, h, w, 3]`` in 0..255, ``mask`` and
``scribbles`` int32 ``[B, h, w]``. Images are *not* ImageNet-normalised here:
the affinities of the solver need the raw 0..255 image (ARCHITECTURE §2), so
the normalisation is left to the consumer (the train / eval step, just before
the network).

Hosts: each host reads the examples ``process_index::process_count`` of the
source (a strided split: disjoint, together covering everything; when the
length is not a multiple of ``process_count`` the first ``len % count`` hosts
get one example more). :func:`to_global` assembles the host-local batches into
global arrays sharded over the mesh.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Sequence

from absl import flags
import grain
import numpy as np
from PIL import Image

from potts_jax.data.augmentation import LABEL_KEYS
from potts_jax.data.augmentation import augment
from potts_jax.data.augmentation import read_example
from potts_jax.labels import PADDING


def _host_share(n: int, process_index: int | None,
                process_count: int | None) -> tuple[int, int]:
  """``(process_index, process_count)``, from JAX when not given."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (lazy: no JAX in workers)
    process_index = (jax.process_index() if process_index is None
                     else process_index)
    process_count = (jax.process_count() if process_count is None
                     else process_count)
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in "
                     f"[0, process_count={process_count})")
  if n < process_count:
    raise ValueError(f"the source has {n} examples, fewer than "
                     f"process_count={process_count}: some host would get none")
  return process_index, process_count


def host_indices(n: int, process_index: int | None = None,
                 process_count: int | None = None) -> np.ndarray:
  """Indices of the examples of one host: ``process_index::process_count``.

  Args:
    n: the length of the source.
    process_index: this host; ``jax.process_index()`` by default.
    process_count: the number of hosts; ``jax.process_count()`` by default.

  Returns:
    ``[n_host]`` int64 source indices, increasing. The hosts' sets are
    disjoint and together cover ``range(n)``; the first ``n % process_count``
    hosts hold one index more than the others.
  """
  process_index, process_count = _host_share(n, process_index, process_count)
  return np.arange(process_index, n, process_count, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class _Augment(grain.transforms.MapWithIndex):
  """Reads and augments the example at position ``k`` of the repeated stream.

  The element is the source index (after the per-epoch shuffle); ``k //
  per_epoch`` is the epoch.
  """

  source: Any
  per_epoch: int
  seed: int
  crop_size: int
  scale_range: tuple[float, float]
  flip: bool
  blur_prob: float

  def map_with_index(self, k: int, index: Any) -> dict[str, np.ndarray]:
    index = int(index)
    epoch = k // self.per_epoch
    rng = np.random.default_rng([self.seed, epoch, index])
    return augment(read_example(self.source[index]), rng,
                   crop_size=self.crop_size, scale_range=self.scale_range,
                   flip=self.flip, blur_prob=self.blur_prob)


def _stack(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {key: np.stack([e[key] for e in examples])
          for key in ("image", "mask", "scribbles")}


def train_map_dataset(
    source: Any,
    *,
    crop_size: int,
    batch_size: int,
    seed: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    blur_prob: float = 0.0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
) -> grain.MapDataset:
  """The training batches of this host as a random-access ``MapDataset``.

  The host's examples (:func:`host_indices`) are shuffled per epoch by
  ``seed`` (grain's ``shuffle`` before ``repeat``, which reseeds every epoch),
  augmented by :func:`augment` and batched with the remainder dropped;
  batches run across epoch boundaries. Hosts may hold one example more than
  others (see :func:`host_indices`), so with a finite ``num_epochs`` their
  batch counts can differ by one: multi-host training runs for a number of
  steps with ``num_epochs=None``.

  Args:
    source: the random-access source (see the module docstring).
    crop_size: side of the square crops.
    batch_size: examples per host-local batch.
    seed: the seed of the shuffle and of the augmentation.
    scale_range: ``(low, high)`` of the short side's scale ``s``.
    flip: random horizontal flips.
    blur_prob: probability of blurring an image.
    process_index: this host; ``jax.process_index()`` by default.
    process_count: the number of hosts; ``jax.process_count()`` by default.
    num_epochs: epochs over the host's share; ``None`` repeats forever.

  Returns:
    A ``MapDataset`` of dicts ``image`` ``[B, crop, crop, 3]`` float32,
    ``mask`` and ``scribbles`` ``[B, crop, crop]`` int32.
  """
  if crop_size < 1 or batch_size < 1:
    raise ValueError(f"crop_size {crop_size} and batch_size {batch_size} must "
                     "be positive")
  low, high = scale_range
  if not 0 < low <= high:
    raise ValueError(f"scale_range {scale_range} must satisfy 0 < low <= high")
  if not 0.0 <= blur_prob <= 1.0:
    raise ValueError(f"blur_prob {blur_prob} is not in [0, 1]")
  indices = host_indices(len(source), process_index, process_count)
  if num_epochs is not None and num_epochs * len(indices) < batch_size:
    raise ValueError(f"{num_epochs} epoch(s) of {len(indices)} examples make "
                     f"no full batch of {batch_size}")
  dataset = grain.MapDataset.source(indices).shuffle(seed=seed)
  dataset = dataset.repeat(num_epochs)
  dataset = dataset.map_with_index(_Augment(
      source=source, per_epoch=len(indices), seed=seed, crop_size=crop_size,
      scale_range=(float(low), float(high)), flip=flip, blur_prob=blur_prob))
  return dataset.batch(batch_size, drop_remainder=True, batch_fn=_stack)


def train_dataset(
    source: Any,
    *,
    crop_size: int,
    batch_size: int,
    seed: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    blur_prob: float = 0.0,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    num_threads: int = 2,
) -> grain.IterDataset:
  """The training batches of this host, ready to iterate and checkpoint.

  :func:`train_map_dataset` (whose arguments these are) turned into an
  ``IterDataset``: ``iterator = iter(dataset)`` is a grain
  ``DatasetIterator`` whose ``get_state()`` / ``set_state(state)`` save and
  restore the position, so that a fresh iterator given a saved state yields
  the same batches as the original from that point. Batching happens before
  the workers split the stream, so the batches are the same for every
  ``worker_count``.

  Args:
    source: the random-access source (see the module docstring).
    crop_size: side of the square crops.
    batch_size: examples per host-local batch.
    seed: the seed of the shuffle and of the augmentation.
    scale_range: ``(low, high)`` of the short side's scale ``s``.
    flip: random horizontal flips.
    blur_prob: probability of blurring an image.
    process_index: this host; ``jax.process_index()`` by default.
    process_count: the number of hosts; ``jax.process_count()`` by default.
    num_epochs: epochs over the host's share; ``None`` repeats forever.
    worker_count: worker processes (grain ``mp_prefetch``, spawned; the source
      and transforms are pickled to them); 0 works in this process. Outside
      an absl app, absl's flags are marked parsed (with their defaults), as
      grain's workers read them.
    worker_buffer_size: batches each worker prepares ahead.
    num_threads: threads reading and augmenting in each process.

  Returns:
    A ``grain.IterDataset`` of the batches of :func:`train_map_dataset`.
  """
  dataset = train_map_dataset(
      source, crop_size=crop_size, batch_size=batch_size, seed=seed,
      scale_range=scale_range, flip=flip, blur_prob=blur_prob,
      process_index=process_index, process_count=process_count,
      num_epochs=num_epochs)
  iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=num_threads, prefetch_buffer_size=max(1, 2 * num_threads)))
  if worker_count < 0:
    raise ValueError(f"worker_count {worker_count} is negative")
  if worker_count > 0:
    # grain's worker processes read absl flags (their defaults are wanted);
    # outside an absl app (tests, notebooks) the flags are not parsed yet.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return iter_dataset


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
  process_index, process_count = _host_share(n, process_index, process_count)
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
  process_index, process_count = _host_share(n, process_index, process_count)
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


def to_global(batch: dict[str, Any], mesh: Any,
              axis: str = "data") -> dict[str, Any]:
  """Host-local numpy batches to global arrays sharded along the batch axis.

  Every host calls it with its own batch (same shapes on every host); the
  global batch is the hosts' batches concatenated in process order, sharded
  over ``mesh`` axis ``axis`` (``jax.make_array_from_process_local_data``).

  Args:
    batch: dict of host-local arrays ``[B, ...]``; entries that are not
      numeric or bool arrays (the eval ``name``) are returned unchanged.
    mesh: a ``jax.sharding.Mesh``.
    axis: the mesh axis the batch dimension is split over.

  Returns:
    The dict with each numeric entry a global ``jax.Array`` of shape
    ``[B * process_count, ...]`` and sharding ``NamedSharding(mesh,
    P(axis))``.
  """
  import jax  # pylint: disable=g-import-not-at-top  (lazy: no JAX in workers)

  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
  out = {}
  for key, value in batch.items():
    array = np.asarray(value)
    if array.dtype.kind in "biuf":
      out[key] = jax.make_array_from_process_local_data(sharding, array)
    else:
      out[key] = value
  return out
