r"""TFDS builder ``demo``: a small procedural segmentation dataset (ships as code).

Every example is drawn from ``np.random.default_rng([seed, crc32(split),
index])`` with numpy and PIL only, so it depends on ``(seed, split, index)``
and on nothing else (not on the order of generation, nor on other examples):
no download, no data files.
:func:`~potts_jax.data.demo_scenes.make_example` draws one example,
:class:`DemoSource` serves a split from memory (list-like, for the pipeline,
CI and the README's command without any preparation) and
:class:`DemoSegmentation` writes the same examples as a TFDS ``array_record``
dataset (:func:`prepare` / :func:`load`).

The scenes, their scribbles and the determinism of the examples are
described in :mod:`potts_jax.data.demo_scenes`.

Features of each example (:func:`potts_jax.data.builders.builder_base.segmentation_features`):

- ``image``: ``[H, W, 3]`` uint8 (PNG, so reading back is exact);
- ``mask``: ``[H, W, 1]`` uint8 class ids (no 255: every pixel has a class);
- ``scribbles``: ``[H, W, 1]`` uint8 class ids, 255 unlabeled;
- ``name``: ``"<split>_<index:05d>"``.

``info.metadata``: ``classes`` (names,
:data:`~potts_jax.data.demo_scenes.CLASS_NAMES`), ``num_classes``,
``scribbles`` (``"skeleton"``), ``max_fraction``, ``labeled_fraction``
(``{split: {"mean", "min", "max"}}``), and the config's ``seed``, ``height``,
``width``, ``noise_std``.

Usage::

  from potts_jax.data.builders import demo_builder
  from potts_jax.data import demo_scenes
  example = demo_scenes.make_example(0, seed=0, split="train")
  train = demo_builder.DemoSource("train")          # no preparation
  builder = demo_builder.prepare("/tmp/tfds")       # DATA_DIR/demo/default/1.0.0
  sources = demo_builder.load("/tmp/tfds")          # {"train": ..., "val": ...}

Nothing here imports TensorFlow: the builder writes ``array_record``, read
with :func:`load` (or ``builder.as_data_source(split)``).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from potts_jax.data.builders import builder_base
from potts_jax.data import demo_scenes
SPLITS: tuple[str, ...] = ("train", "val")
SCRIBBLES = "skeleton"


@dataclasses.dataclass(eq=False)
class DemoConfig(tfds.core.BuilderConfig):
  """Configuration of :class:`DemoSegmentation` and :class:`DemoSource`.

  Attributes:
    seed: the dataset's seed.
    height, width: image size.
    num_classes: ``K``, background included (``[2, 8]``).
    train_size, val_size: examples of the ``train`` and ``val`` splits.
    noise_std: per-pixel noise std (0..255 scale).
    max_fraction: bound on the scribbles' labeled share.
  """

  seed: int = 0
  height: int = 96
  width: int = 96
  num_classes: int = 5
  train_size: int = 320
  val_size: int = 64
  noise_std: float = 5.0
  max_fraction: float = 0.03

  def split_size(self, split: str) -> int:
    sizes = {"train": self.train_size, "val": self.val_size}
    if split not in sizes:
      raise ValueError(f"unknown split {split!r}; the demo has {SPLITS}")
    return sizes[split]

  def example_options(self) -> dict[str, Any]:
    return dict(seed=self.seed, height=self.height, width=self.width,
                num_classes=self.num_classes, noise_std=self.noise_std,
                max_fraction=self.max_fraction)


class DemoSource:
  """One split of the demo, generated on access (list-like, picklable).

  ``source[i]`` is :func:`~potts_jax.data.demo_scenes.make_example` ``(i, split=split, **options)``;
  negative indices count from the end. Pass it to
  :func:`potts_jax.data.pipeline.train_dataset` / ``eval_batches`` directly.

  Args:
    split: ``"train"`` or ``"val"``.
    config: a :class:`DemoConfig` (its sizes and options); overridden by
      ``size`` and ``**options``.
    size: the number of examples; the config's split size by default.
    **options: ``seed``, ``height``, ``width``, ``num_classes``,
      ``noise_std``, ``max_fraction`` (see :func:`~potts_jax.data.demo_scenes.make_example`).
  """

  def __init__(self, split: str = "train", config: DemoConfig | None = None,
               *, size: int | None = None, **options: Any):
    config = config or DemoConfig(name="default")
    self.split = split
    self.options = dict(config.example_options(), **options)
    unknown = set(options) - set(config.example_options())
    if unknown:
      raise TypeError(f"unknown options {sorted(unknown)}")
    self.size = config.split_size(split) if size is None else int(size)
    if self.size < 0:
      raise ValueError(f"size {self.size} is negative")
    demo_scenes.check_size(self.options["height"], self.options["width"],
           self.options["num_classes"])

  @property
  def num_classes(self) -> int:
    return self.options["num_classes"]

  @property
  def classes(self) -> list[str]:
    return list(demo_scenes.CLASS_NAMES[:self.num_classes])

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if index < 0:
      index += self.size
    if not 0 <= index < self.size:
      raise IndexError(f"index {index} out of range for {self.size} examples")
    return demo_scenes.make_example(index, split=self.split, **self.options)

  def __repr__(self) -> str:
    return f"DemoSource({self.split!r}, size={self.size}, {self.options})"


class DemoSegmentation(builder_base.ArrayRecordBuilder):
  """The procedural demo dataset (module docstring) as array_record.

  Takes ``config=DemoConfig(...)`` (``"default"`` when omitted) and the usual
  builder arguments.
  """

  name = "demo"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS: list[DemoConfig] = [DemoConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Procedural textured scenes with dense masks and "
        "skeleton scribbles.",
        features=builder_base.segmentation_features(),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated.
    config = self.builder_config
    if not isinstance(config, DemoConfig):
      raise ValueError("DemoSegmentation needs config=DemoConfig(...)")
    demo_scenes.check_size(config.height, config.width, config.num_classes)
    self.info.metadata.update(
        classes=list(demo_scenes.CLASS_NAMES[:config.num_classes]),
        num_classes=config.num_classes, scribbles=SCRIBBLES,
        max_fraction=config.max_fraction, seed=config.seed,
        height=config.height, width=config.width,
        noise_std=config.noise_std, labeled_fraction={})
    return {split: self._generate_examples(split) for split in SPLITS
            if config.split_size(split) > 0}

  def _generate_examples(self, split: str
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    from potts_jax.data import synthetic_scribbles as scribbles_lib  # pylint: disable=g-import-not-at-top

    source = DemoSource(split, self.builder_config)
    fractions = []
    for index in range(len(source)):
      example = source[index]
      fractions.append(scribbles_lib.labeled_fraction(
          example["scribbles"][..., 0], example["mask"][..., 0]))
      yield index, {
          "image": builder_base.encode_png(example["image"]),
          "mask": builder_base.encode_png(example["mask"][..., 0]),
          "scribbles": builder_base.encode_png(example["scribbles"][..., 0]),
          "name": example["name"],
      }
    self.info.metadata["labeled_fraction"][split] = dict(
        mean=float(np.mean(fractions)), min=float(np.min(fractions)),
        max=float(np.max(fractions)))


def config_name(**options: Any) -> str:
  """The default config name of ``options`` (fields of :class:`DemoConfig`).

  ``"default"`` for the defaults, else the non-default options in field
  order, e.g. ``"seed1-height64-num_classes4"`` (``.`` written ``p``).
  """
  defaults = DemoConfig(name="default")
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  fields = [f.name for f in dataclasses.fields(DemoConfig)
            if f.name not in base]
  unknown = set(options) - set(fields)
  if unknown:
    raise TypeError(f"unknown DemoConfig options {sorted(unknown)}")
  parts = [f"{key}{options[key]}" for key in fields
           if key in options and options[key] != getattr(defaults, key)]
  return "-".join(parts).replace(".", "p") if parts else "default"


def prepare(data_dir: str | pathlib.Path, *, name: str | None = None,
            version: str | None = None, **options: Any) -> DemoSegmentation:
  """Builds (or finds already built) the demo dataset.

  Args:
    data_dir: TFDS data directory to write to
      (``DATA_DIR/demo/<name>/<version>/``).
    name: the config name; :func:`config_name` of ``options`` by default
      (``"default"`` without options), so that different options never
      share a prepared directory.
    version: the config's version (``"1.0.0"`` by default).
    **options: fields of :class:`DemoConfig` (``seed``, ``height``,
      ``width``, ``num_classes``, ``train_size``, ``val_size``,
      ``noise_std``, ``max_fraction``).

  Returns:
    The prepared builder; ``builder.as_data_source(split)`` reads it.
  """
  if name is None:
    name = config_name(**options)
  config = DemoConfig(name=name, version=version, **options)
  builder = DemoSegmentation(config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def load(data_dir: str | pathlib.Path, name: str = "default",
         version: str | None = None, *,
         decoders: dict[str, Any] | None = None) -> dict[str, Any]:
  """Random-access sources of a prepared demo dataset.

  Args:
    data_dir: the TFDS data directory given to :func:`prepare`.
    name: the config name.
    version: the version; the newest prepared one by default.
    decoders: TFDS decoders, e.g. ``{"image": tfds.decode.SkipDecoding()}``.

  Returns:
    ``{split: data source}`` (:func:`builder_base.load_prepared`).
  """
  return builder_base.load_prepared(data_dir, DemoSegmentation.name, name,
                                    version, decoders=decoders)
