"""TFDS builder ``voc_scribble``: PASCAL VOC 2012 + SBD with ScribbleSup.

Images and dense ground truth of PASCAL VOC 2012 with the SBD extension
(``SegmentationClassAug``), scribbles of ScribbleSup (Lin et al., CVPR 2016),
written as array_record. Nothing is downloaded: the files are read from a
root folder (manual download). Layout relative to ``ROOT``::

  ROOT/VOCdevkit/VOC2012/JPEGImages/<id>.jpg                 RGB photo
  ROOT/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png       'L' PNG, 0..20,
                                                             255 ignore
  ROOT/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt  10,582 ids
  ROOT/VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt        1,449 ids
  ROOT/pascal_2012_scribble/<id>.xml   ScribbleSup XML (the ``xml*`` configs)
  ROOT/pascal_2012_scribble/<id>.png   rasterised scribbles, 'L' PNG, 0..20,
                                       255 unlabeled (the ``png`` config)

``ROOT`` is tfds's ``manual_dir`` (``download_and_prepare(download_config=
tfds.download.DownloadConfig(manual_dir=ROOT))``, by default
``DATA_DIR/downloads/manual``), or ``VocScribbleConfig.root`` of a custom
config; :func:`prepare` does either. The list files and the scribble folder
can be moved (``train_list``, ``val_list``, ``scribble_dir``: relative to
``ROOT`` or absolute). Every id of a list needs its image, mask and
scribble file.

Sources: ``JPEGImages`` and ``ImageSets/Segmentation/val.txt`` come with
VOC 2012 (``VOCtrainval_11-May-2012.tar``); ``SegmentationClassAug`` (VOC and
SBD masks as class-index PNGs) and ``train_aug.txt`` are the usual DeepLab
"trainaug" files (the 1,464 VOC train ids plus the SBD train and val ids, less
the VOC val ids: 10,582 ids). ScribbleSup's annotation zip holds one XML per
image; some repositories ship them rasterised as PNGs (e.g. the 3-px
polylines of ``shared/data/voc_scribblesup``).

train_aug list: the PyTorch lineage of scribble-supervised training (rloss,
Tang et al. 2018, and the DeepLab-pytorch code it builds on) is reported to
train on a 10,581-id list, one id fewer than the 10,582 DeepLab list. Which
id is dropped, and why, has not been checked here. By default the builder
reads the 10,582-id ``train_aug.txt``; to reproduce that lineage exactly,
point ``train_list`` at its 10,581-id file (under a config name of your own).

Configs (:data:`BUILDER_CONFIGS`):

- ``xml``: ScribbleSup XML polygons, each ``<polygon>`` a polyline drawn 3 px
  wide (:func:`potts_jax.data.scribbles.rasterize`, later strokes on top).
- ``xml_len0``, ``xml_len0.3``, ``xml_len0.5``, ``xml_len0.8``: the same
  with every polyline shortened to that share of its arc length around its
  midpoint (:func:`potts_jax.data.scribbles.shorten`; 0 is a click, a 3x3
  dot), the shortened scribbles of the paper's Table 3. Deterministic.
- ``png``: the rasterised scribble PNGs as they are.

Tags map to ids by :data:`potts_jax.data.scribblesup.TAGS`
(``background``, ``plane``, ``bike``, ... ``monitor`` -> 0..20). ``info.metadata``
holds ``num_classes`` (21), ``classes`` (:data:`VOC_CLASSES`),
``scribblesup_tags``, ``scribbles`` (``"xml"``/``"png"``), ``fraction`` (the
kept share, ``None`` for ``png``) and ``thickness``.

Features (:func:`builder_base.segmentation_features`): ``image`` (the JPEG's
own bytes, so reading back is byte-identical), ``mask`` and ``scribbles``
``[H, W, 1]`` uint8 PNG, ``name`` (the id). Splits ``train_aug`` and ``val``
keep the order of their lists. No TensorFlow: read with :func:`load` or
``builder.as_data_source(split)``.

Usage::

  from potts_jax.data.builders import voc_builder
  voc_builder.prepare("/data/voc", "/tmp/tfds", config="xml_len0.5")
  val = voc_builder.load("/tmp/tfds", "xml_len0.5")["val"]   # val[i]["mask"]
  # The rloss list, under a name of its own:
  voc_builder.prepare("/data/voc", "/tmp/tfds", config="xml",
                      name="xml_rloss", train_list="train_aug_10581.txt")

Bad input fails the preparation with an error naming the file: a missing
root, folder, list or file (``FileNotFoundError``); an XML with an unknown
tag or no points, a label whose size differs from its image, an undecodable
file, a class id above 20 (``ValueError``). TFDS writes into a temporary
directory renamed only at the end, so nothing readable is left behind.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import xml.etree.ElementTree as ET
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from potts_jax.data.builders import builder_base
from potts_jax.data import scribbles
from potts_jax.data import scribblesup
XML = "xml"
PNG = "png"
NUM_CLASSES = 21
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
"""The official VOC names of class ids 0..20."""

VOC_DIR = "VOCdevkit/VOC2012"
IMAGES_DIR = f"{VOC_DIR}/JPEGImages"
MASKS_DIR = f"{VOC_DIR}/SegmentationClassAug"
LISTS_DIR = f"{VOC_DIR}/ImageSets/Segmentation"
SCRIBBLE_DIR = "pascal_2012_scribble"
FRACTIONS = (0.0, 0.3, 0.5, 0.8)
"""Stroke length shares of the ``xml_len*`` configs (paper, Table 3)."""

_UNLABELED = 255

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put PASCAL VOC 2012, SBD's SegmentationClassAug and ScribbleSup in one root
folder (tfds manual_dir, or VocScribbleConfig.root):

  ROOT/{IMAGES_DIR}/<id>.jpg
  ROOT/{MASKS_DIR}/<id>.png
  ROOT/{LISTS_DIR}/train_aug.txt   (10,582 ids)
  ROOT/{LISTS_DIR}/val.txt         (1,449 ids)
  ROOT/{SCRIBBLE_DIR}/<id>.xml     (ScribbleSup XML; configs xml, xml_len*)
  ROOT/{SCRIBBLE_DIR}/<id>.png     (rasterised scribbles; config png)

JPEGImages and val.txt: VOCtrainval_11-May-2012.tar. SegmentationClassAug
and train_aug.txt: the DeepLab "trainaug" files (VOC + SBD masks as class
index PNGs). XML: ScribbleSup's annotation archive (Lin et al., CVPR 2016).
"""


@dataclasses.dataclass(eq=False)
class VocScribbleConfig(tfds.core.BuilderConfig):
  """Configuration of :class:`VocScribble`.

  Attributes:
    root: the source root (module docstring); empty: tfds's ``manual_dir``.
    source: :data:`XML` or :data:`PNG`.
    fraction: kept share of each stroke's arc length in ``[0, 1]``
      (:data:`XML` only; 1 keeps whole strokes, 0 makes clicks).
    thickness: stroke width in px of rasterised XML scribbles.
    train_list, val_list: id lists, relative to ``root`` or absolute; empty:
      ``ImageSets/Segmentation/{train_aug,val}.txt``.
    scribble_dir: folder of ``<id>.xml``/``<id>.png``, relative or absolute.
    splits: the splits to build.
  """

  root: str = ""
  source: str = XML
  fraction: float = 1.0
  thickness: int = 3
  train_list: str = ""
  val_list: str = ""
  scribble_dir: str = SCRIBBLE_DIR
  splits: tuple[str, ...] = ("train_aug", "val")


def _configs() -> list[VocScribbleConfig]:
  configs = [VocScribbleConfig(
      name=XML, description="ScribbleSup XML, whole strokes, 3 px.")]
  for f in FRACTIONS:
    configs.append(VocScribbleConfig(
        name=f"xml_len{f:g}", fraction=f,
        description=f"ScribbleSup XML, strokes cut to {f:g} of their length"
        + (" (clicks)." if f == 0 else ".")))
  configs.append(VocScribbleConfig(
      name=PNG, source=PNG, description="Rasterised ScribbleSup PNGs."))
  return configs


def _check_ids(path: pathlib.Path, labels: np.ndarray) -> None:
  ids = np.setdiff1d(np.unique(labels), [_UNLABELED])
  if ids.size and ids[-1] >= NUM_CLASSES:
    raise ValueError(f"{path}: class id {ids[-1]} is not a VOC class "
                     f"(0..{NUM_CLASSES - 1}, {_UNLABELED})")


def xml_strokes(path: pathlib.Path, size: tuple[int, int],
                fraction: float = 1.0) -> list[scribbles.Stroke]:
  """The strokes of one ScribbleSup XML, shortened to ``fraction``.

  Args:
    path: the XML file.
    size: ``(width, height)`` of its image; an XML ``<size>`` that differs
      is an error.
    fraction: see :class:`VocScribbleConfig`.

  Returns:
    The strokes in file order.

  Raises:
    FileNotFoundError: naming ``path``.
    ValueError: naming ``path`` (malformed XML, unknown tag, bad point, a
      ``<size>`` other than ``size``).
  """
  if not path.is_file():
    raise FileNotFoundError(f"scribble file {path} not found")
  try:
    text = path.read_text()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a text (XML) file ({e})") from e
  strokes = scribblesup.parse_xml(path)
  declared = ET.fromstring(text).find("size")
  if declared is not None:
    try:
      width = int(declared.findtext("width"))
      height = int(declared.findtext("height"))
    except (TypeError, ValueError):
      width = height = None  # An incomplete <size> is not checked.
    if width is not None and (width, height) != tuple(size):
      raise ValueError(f"{path}: size {(width, height)} differs from its "
                       f"image's {tuple(size)}")
  if fraction < 1.0:
    strokes = [scribbles.shorten(s, fraction) for s in strokes]
  return strokes


class VocScribble(builder_base.ArrayRecordBuilder):
  """PASCAL VOC 2012 + SBD with ScribbleSup scribbles (module docstring)."""

  name = "voc_scribble"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS: list[VocScribbleConfig] = _configs()
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="PASCAL VOC 2012 + SBD with ScribbleSup scribbles.",
        features=builder_base.segmentation_features(),
        metadata=tfds.core.MetadataDict(),
        homepage="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/",
        disable_shuffling=True,  # Examples keep the order of the lists.
    )

  ROOT_NAME = "VOC"

  def _split_generators(self, dl_manager):
    config = self.builder_config
    if config.source not in (XML, PNG):
      raise ValueError(f"source must be {XML!r} or {PNG!r}, got "
                       f"{config.source!r}")
    if not 0.0 <= config.fraction <= 1.0:
      raise ValueError(f"fraction must be in [0, 1], got {config.fraction}")
    if config.source == PNG and config.fraction != 1.0:
      raise ValueError("PNG scribbles cannot be shortened (fraction must be 1)")
    root = self._root(dl_manager)
    dirs = {"images": root / IMAGES_DIR, "masks": root / MASKS_DIR,
            "scribbles": root / config.scribble_dir}
    for kind, path in dirs.items():
      if not path.is_dir():
        raise FileNotFoundError(f"{kind} folder {path} not found")
    lists = {"train_aug": config.train_list or f"{LISTS_DIR}/train_aug.txt",
             "val": config.val_list or f"{LISTS_DIR}/val.txt"}
    unknown = sorted(set(config.splits) - set(lists))
    if unknown:
      raise ValueError(f"unknown splits {unknown}; valid: {sorted(lists)}")
    ids = {split: builder_base.read_list(root / lists[split])
           for split in config.splits}
    self.info.metadata.update(
        num_classes=NUM_CLASSES, classes=list(VOC_CLASSES),
        scribblesup_tags=list(scribblesup.TAGS),
        scribbles=config.source,
        fraction=config.fraction if config.source == XML else None,
        thickness=config.thickness if config.source == XML else None,
        lists={split: lists[split] for split in config.splits},
    )
    return {split: self._generate_examples(root / lists[split], names, dirs)
            for split, names in ids.items()}

  def _generate_examples(self, listing: pathlib.Path, names: Sequence[str],
                         dirs: dict[str, pathlib.Path]
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(index, example)`` in list order; checks every file."""
    config = self.builder_config
    duplicated = sorted(n for n, c in collections.Counter(names).items()
                        if c > 1)
    if duplicated:
      raise ValueError(f"{listing} lists {duplicated} more than once")
    for index, name in enumerate(names):
      image_bytes, pixels = builder_base.open_image(
          dirs["images"] / f"{name}.jpg")
      height, width = pixels.shape[:2]
      mask_path = dirs["masks"] / f"{name}.png"
      mask_bytes, mask = builder_base.open_label(mask_path, (width, height))
      _check_ids(mask_path, mask)
      if config.source == XML:
        strokes = xml_strokes(dirs["scribbles"] / f"{name}.xml",
                              (width, height), config.fraction)
        scribble_bytes = builder_base.encode_png(scribbles.rasterize(
            strokes, height, width, thickness=config.thickness))
      else:
        path = dirs["scribbles"] / f"{name}.png"
        scribble_bytes, raster = builder_base.open_label(path, (width, height))
        _check_ids(path, raster)
      yield index, {"image": image_bytes, "mask": mask_bytes,
                   "scribbles": scribble_bytes, "name": name}


def prepare(root: str | pathlib.Path, data_dir: str | pathlib.Path, *,
            config: str = XML, name: str | None = None,
            fraction: float | None = None, train_list: str | None = None,
            val_list: str | None = None, scribble_dir: str | None = None,
            splits: Sequence[str] | None = None) -> VocScribble:
  """Builds (or finds already built) a ``voc_scribble`` config.

  Without overrides, the predefined ``config`` is built from ``root`` as
  tfds's ``manual_dir`` into ``DATA_DIR/voc_scribble/<config>/1.0.0``. With
  any override, a custom config (``root`` in it) is built under ``name``,
  which must differ from the predefined names; ``fraction`` alone names it
  ``xml_len<fraction>`` by default.

  Args:
    root: the source root (module docstring).
    data_dir: TFDS data directory to write to.
    config: a predefined config to start from (:data:`BUILDER_CONFIGS`).
    name: the config name of a custom config.
    fraction, train_list, val_list, scribble_dir: see
      :class:`VocScribbleConfig`.
    splits: the splits to build.

  Returns:
    The prepared builder; ``builder.as_data_source(split)`` reads it.
  """
  predefined = VocScribble.builder_configs
  if config not in predefined:
    raise ValueError(f"unknown config {config!r}; valid: {sorted(predefined)}")
  base = predefined[config]
  overrides = {k: v for k, v in dict(
      fraction=fraction, train_list=train_list, val_list=val_list,
      scribble_dir=scribble_dir,
      splits=None if splits is None else tuple(splits)).items()
               if v is not None}
  if name is None and set(overrides) == {"fraction"}:
    name = f"xml_len{fraction:g}" if fraction != 1.0 else XML
    if base.source == XML and name in predefined:
      config, overrides = name, {}
  if not overrides and name in (None, config):
    builder = VocScribble(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(root)))
    return builder
  if not name or name in predefined:
    raise ValueError(f"a config with overrides {sorted(overrides)} needs a "
                     f"name= of its own (not one of {sorted(predefined)})")
  custom = dataclasses.replace(base, name=name, root=str(root), **overrides)
  builder = VocScribble(config=custom, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def load(data_dir: str | pathlib.Path, config: str = XML,
         version: str | None = None, *,
         decoders: dict[str, Any] | None = None) -> dict[str, Any]:
  """Random-access sources of a prepared config (no source files needed).

  Args:
    data_dir: the TFDS data directory given to :func:`prepare`.
    config: the config name.
    version: the version; the newest prepared one by default.
    decoders: TFDS decoders, e.g. ``{"image": tfds.decode.SkipDecoding()}``.

  Returns:
    ``{split: data source}`` (:func:`builder_base.load_prepared`).
  """
  return builder_base.load_prepared(data_dir, VocScribble.name, config,
                                    version, decoders=decoders)
