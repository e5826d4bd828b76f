"""TFDS builders ``cityscapes_block`` and ``ade20k_block``: block scribbles.

Images and dense labels of Cityscapes (19 trainIds) and ADE20k SceneParsing
(150 classes) with the paper's *block scribbles* (appendix C, after TEL,
Liang et al. 2022, and Block Annotation, Lin et al. 2019), written as
array_record. Files are read from a root folder (manual download;
:data:`CITYSCAPES_INSTRUCTIONS`, :data:`ADE20K_INSTRUCTIONS`)::

  cityscapes_block
    ROOT/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png    RGB photo
    ROOT/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png     'L', ids
  ade20k_block
    ROOT/ADEChallengeData2016/images/{training,validation}/<name>.jpg
    ROOT/ADEChallengeData2016/annotations/{training,validation}/<name>.png

``ROOT`` is tfds's ``manual_dir`` or ``BlockConfig.root``. Every image needs
its label file; labels without an image are ignored. Labels (``mask``, 255
ignore): Cityscapes labelIds 0..33 -> trainIds by the official table of
``cityscapesscripts/helpers/labels.py`` (the other ids -> 255); ADE20k 0
("other") -> 255, 1..150 -> 0..149; the class names and these conversions
are in :mod:`potts_jax.data.builders.block_labels`. A value outside those
ranges is an error.

Scribbles: :func:`potts_jax.data.synthetic_scribbles.block_scribbles` of the
mask: the image is tiled into ``block`` x ``block`` squares from the top-left
corner, tiles are taken in a random order until they cover ``fraction`` of
the image (within half a tile), and the mask is kept inside them, 255
elsewhere. The seed of an example is :func:`example_seed` ``(config.seed,
name)``, independent of order and of the other examples. The paper does not
give the block size; ``block`` is 32 px by default.

Configs ``block10``, ``block20``, ``block50`` (:data:`FRACTIONS`; the paper's
Table 6 uses 50%), seed 0; :func:`prepare` builds others under names of
their own (:func:`config_name`). ``info.metadata``: ``num_classes``,
``classes``, ``labels``, ``fraction``, ``block``, ``seed``. Features
(:func:`builder_base.segmentation_features`): ``image`` (the source file's
bytes: reading back is byte-identical), ``mask``, ``scribbles``, ``name``
(``<city>_<seq>_<frame>``, ``ADE_train_<n>``). Splits ``train`` and ``val``
in sorted file order. No TensorFlow: read with :func:`load` or
``builder.as_data_source(split)``::

  from potts_jax.data.builders import block_builders
  block_builders.prepare("/data/cityscapes", "/tmp/tfds",
                         dataset="cityscapes_block", config="block50")
  val = block_builders.load("/tmp/tfds", "block50",
                            dataset="cityscapes_block")["val"]

Bad input fails the preparation with an error naming the folder or file
(missing: ``FileNotFoundError``; undecodable, of another size than its
image, an unknown label value: ``ValueError``); TFDS writes into a temporary
directory renamed only at the end, so nothing readable is left behind.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zlib
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from potts_jax.data import synthetic_scribbles
from potts_jax.data.builders import block_labels, builder_base

FRACTIONS = (0.1, 0.2, 0.5)
"""Labeled shares of the predefined configs ``block10/20/50``."""
DEFAULT_CONFIG = "block50"
SPLITS = ("train", "val")

ADE20K_DIR = "ADEChallengeData2016"
_ADE20K_FOLDERS = {"train": "training", "val": "validation"}

CITYSCAPES_INSTRUCTIONS = """\
Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from
https://www.cityscapes-dataset.com/downloads/ (registration needed) and unzip
both into one root folder (tfds manual_dir, or BlockConfig.root):

  ROOT/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
  ROOT/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png

Only the *_labelIds.png files of gtFine are read (mapped to trainIds here;
no cityscapesscripts conversion needed).
"""

ADE20K_INSTRUCTIONS = f"""\
Download ADEChallengeData2016.zip (the MIT SceneParsing benchmark,
http://sceneparsing.csail.mit.edu/) and unzip it into a root folder (tfds
manual_dir, or BlockConfig.root):

  ROOT/{ADE20K_DIR}/images/{{training,validation}}/<name>.jpg
  ROOT/{ADE20K_DIR}/annotations/{{training,validation}}/<name>.png
"""


def example_seed(seed: int, name: str) -> int:
  """The block-scribble seed of example ``name`` under the config's ``seed``.

  Returns:
    ``(seed * 1_000_003 + crc32(name)) % 2**31``.
  """
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


@dataclasses.dataclass(eq=False)
class BlockConfig(tfds.core.BuilderConfig):
  """Configuration of the block-scribble builders.

  Attributes:
    root: the source root (module docstring); empty: tfds's ``manual_dir``.
    fraction: share of each image covered by kept blocks, in ``[0, 1]``.
    block: block side in px.
    seed: base seed of the block choice (:func:`example_seed`).
    splits: the splits to build (of :data:`SPLITS`).
  """

  root: str = ""
  fraction: float = 0.5
  block: int = 32
  seed: int = 0
  splits: tuple[str, ...] = SPLITS


def config_name(fraction: float, block: int = 32, seed: int = 0) -> str:
  """``block<percent>[_size<block>][_seed<seed>]``, e.g. ``block50``."""
  name = f"block{round(fraction * 100, 6):g}"
  if block != 32:
    name += f"_size{block}"
  if seed:
    name += f"_seed{seed}"
  return name


def _configs() -> list[BlockConfig]:
  return [BlockConfig(name=config_name(f), fraction=f,
                      description=f"Dense labels in 32-px blocks covering "
                      f"{f:.0%} of each image, seed 0.")
          for f in FRACTIONS]


class _BlockBuilder(builder_base.ArrayRecordBuilder, skip_registration=True):
  """Images, dense labels and block scribbles (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  CLASSES: tuple[str, ...] = ()
  LABELS = ""  # The label encoding, stored in the metadata.
  DESCRIPTION = ""
  HOMEPAGE = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.DESCRIPTION,
        features=builder_base.segmentation_features(),
        metadata=tfds.core.MetadataDict(),
        homepage=self.HOMEPAGE,
        disable_shuffling=True,  # Examples keep the sorted file order.
    )

  def _pairs(self, root: pathlib.Path, split: str
             ) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
    """``(name, image path, label path)`` of a split, sorted."""
    raise NotImplementedError

  def _convert(self, path: pathlib.Path, labels: np.ndarray) -> np.ndarray:
    """The stored mask (0..K-1, 255) of the label file's pixels."""
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    config = self.builder_config
    if not 0.0 <= config.fraction <= 1.0:
      raise ValueError(f"fraction must be in [0, 1], got {config.fraction}")
    if config.block < 1:
      raise ValueError(f"block must be >= 1, got {config.block}")
    unknown = sorted(set(config.splits) - set(SPLITS))
    if unknown:
      raise ValueError(f"unknown splits {unknown}; valid: {list(SPLITS)}")
    root = self._root(dl_manager)
    pairs = {split: self._pairs(root, split) for split in config.splits}
    self.info.metadata.update(
        num_classes=len(self.CLASSES), classes=list(self.CLASSES),
        labels=self.LABELS, fraction=config.fraction, block=config.block,
        seed=config.seed)
    return {split: self._generate_examples(items)
            for split, items in pairs.items()}

  def _generate_examples(
      self, items: Sequence[tuple[str, pathlib.Path, pathlib.Path]]
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(index, example)`` in file order; checks every file."""
    config = self.builder_config
    for index, (name, image_path, label_path) in enumerate(items):
      image_bytes, pixels = builder_base.open_image(image_path)
      height, width = pixels.shape[:2]
      _, raw = builder_base.open_label(label_path, (width, height))
      mask = self._convert(label_path, raw)
      blocks = synthetic_scribbles.block_scribbles(
          mask, config.fraction, block=config.block,
          seed=example_seed(config.seed, name))
      yield index, {"image": image_bytes,
                    "mask": builder_base.encode_png(mask),
                    "scribbles": builder_base.encode_png(blocks),
                    "name": name}


def _folders(*folders: tuple[str, pathlib.Path]) -> None:
  for kind, path in folders:
    if not path.is_dir():
      raise FileNotFoundError(f"{kind} folder {path} not found")


class CityscapesBlock(_BlockBuilder):
  """Cityscapes fine annotations (19 trainIds) with block scribbles."""

  name = "cityscapes_block"
  BUILDER_CONFIGS: list[BlockConfig] = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = CITYSCAPES_INSTRUCTIONS
  CLASSES = block_labels.CITYSCAPES_CLASSES
  LABELS = "Cityscapes trainIds 0..18 (labelIds mapped), 255 ignore"
  DESCRIPTION = "Cityscapes (gtFine, 19 trainIds) with block scribbles."
  HOMEPAGE = "https://www.cityscapes-dataset.com/"
  _SUFFIX = "_leftImg8bit.png"

  def _pairs(self, root, split):
    images = root / "leftImg8bit" / split
    labels = root / "gtFine" / split
    _folders(("images", images), ("labels", labels))
    files = sorted(images.glob(f"*/*{self._SUFFIX}"))
    if not files:
      raise FileNotFoundError(f"no <city>/<name>{self._SUFFIX} in {images}")
    return [(f.name[:-len(self._SUFFIX)], f,
             labels / f.parent.name
             / f"{f.name[:-len(self._SUFFIX)]}_gtFine_labelIds.png")
            for f in files]

  def _convert(self, path, labels):
    return block_labels.cityscapes_train_ids(labels, path)


class Ade20kBlock(_BlockBuilder):
  """ADE20k SceneParsing (150 classes) with block scribbles."""

  name = "ade20k_block"
  BUILDER_CONFIGS: list[BlockConfig] = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = ADE20K_INSTRUCTIONS
  CLASSES = block_labels.ADE20K_CLASSES
  LABELS = "ADE20k SceneParsing classes 0..149 (values 1..150), 255 other"
  DESCRIPTION = "ADE20k SceneParsing (150 classes) with block scribbles."
  HOMEPAGE = "http://sceneparsing.csail.mit.edu/"

  def _pairs(self, root, split):
    base = root / ADE20K_DIR
    images = base / "images" / _ADE20K_FOLDERS[split]
    labels = base / "annotations" / _ADE20K_FOLDERS[split]
    _folders(("images", images), ("annotations", labels))
    files = sorted(images.glob("*.jpg"))
    if not files:
      raise FileNotFoundError(f"no <name>.jpg in {images}")
    return [(f.stem, f, labels / f"{f.stem}.png") for f in files]

  def _convert(self, path, labels):
    return block_labels.ade20k_classes(labels, path)


BUILDERS: dict[str, type[_BlockBuilder]] = {
    CityscapesBlock.name: CityscapesBlock, Ade20kBlock.name: Ade20kBlock}


def _builder_class(dataset: str) -> type[_BlockBuilder]:
  if dataset not in BUILDERS:
    raise ValueError(f"dataset must be one of {sorted(BUILDERS)}, got "
                     f"{dataset!r}")
  return BUILDERS[dataset]


def prepare(root: str | pathlib.Path, data_dir: str | pathlib.Path, *,
            dataset: str, config: str = DEFAULT_CONFIG,
            name: str | None = None, fraction: float | None = None,
            block: int | None = None, seed: int | None = None,
            splits: Sequence[str] | None = None) -> _BlockBuilder:
  """Builds (or finds already built) a config of a block-scribble dataset.

  Without overrides, the predefined ``config`` is built from ``root`` as
  tfds's ``manual_dir`` into ``DATA_DIR/<dataset>/<config>/1.0.0``. With
  overrides, a custom config (``root`` in it) is built under ``name``, by
  default :func:`config_name` of its ``fraction``, ``block`` and ``seed``
  (``block10_seed3``); a name equal to a predefined config's means that one.

  Args:
    root: the source root (module docstring).
    data_dir: TFDS data directory to write to.
    dataset: ``"cityscapes_block"`` or ``"ade20k_block"``.
    config: a predefined config to start from (``block10/20/50``).
    name: the config name of a custom config.
    fraction, block, seed, splits: see :class:`BlockConfig`.

  Returns:
    The prepared builder; ``builder.as_data_source(split)`` reads it.
  """
  cls = _builder_class(dataset)
  if not pathlib.Path(root).is_dir():
    raise FileNotFoundError(f"{dataset} root {root} not found; it should "
                            f"hold:\n{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  predefined = cls.builder_configs
  if config not in predefined:
    raise ValueError(f"unknown config {config!r}; valid: {sorted(predefined)}")
  base = predefined[config]
  overrides = {k: v for k, v in dict(
      fraction=fraction, block=block, seed=seed,
      splits=None if splits is None else tuple(splits)).items()
               if v is not None}
  custom = dataclasses.replace(base, root=str(root), **overrides)
  if name is None:
    name = config_name(custom.fraction, custom.block, custom.seed)
  if name in predefined:
    if any(getattr(predefined[name], k) != getattr(custom, k)
           for k in ("fraction", "block", "seed", "splits")):
      raise ValueError(f"{name!r} is a predefined config; give the custom "
                       "config a name= of its own")
    builder = cls(config=name, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(root)))
    return builder
  builder = cls(config=dataclasses.replace(custom, name=name),
                data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def load(data_dir: str | pathlib.Path, config: str = DEFAULT_CONFIG,
         version: str | None = None, *, dataset: str,
         decoders: dict[str, Any] | None = None) -> dict[str, Any]:
  """Random-access sources of a prepared config (no source files needed).

  Args:
    data_dir: the TFDS data directory given to :func:`prepare`.
    config: the config name.
    version: the version; the newest prepared one by default.
    dataset: ``"cityscapes_block"`` or ``"ade20k_block"``.
    decoders: TFDS decoders, e.g. ``{"image": tfds.decode.SkipDecoding()}``.

  Returns:
    ``{split: data source}`` (:func:`builder_base.load_prepared`).
  """
  return builder_base.load_prepared(data_dir, _builder_class(dataset).name,
                                    config, version, decoders=decoders)
