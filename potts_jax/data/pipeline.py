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
for the default process index). An example that cannot be read or decoded
stops the iteration with :class:`~potts_jax.data.augmentation.ExampleError`,
naming the dataset, the split and the example.

Every random choice of an example comes from
``np.random.default_rng([seed, epoch, index])`` with ``index`` the example's
index in the source, so that batches depend neither on the number of workers
nor on the order in which they run.

Batches hold ``image`` float32 ``[B, h, w, 3]`` in 0..255, ``mask`` and
``scribbles`` int32 ``[B, h, w]``. Images are *not* ImageNet-normalised here:
the affinities of the solver need the raw 0..255 image, so
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
from typing import Any, Sequence

from absl import flags
import grain
import numpy as np

from potts_jax.data.augmentation import augment
from potts_jax.data.augmentation import read_indexed


def host_share(n: int, process_index: int | None,
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
  process_index, process_count = host_share(n, process_index, process_count)
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
    return augment(read_indexed(self.source, index), rng,
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
