"""TFDS builder ``folder``: any local dataset folder, written as array_record.

Layouts (``shared/data/grabcut`` and ``shared/data/camvid`` follow them)::

  ROOT/images/[<split>/]<name>.jpg|png       RGB photo
  ROOT/masks/[<split>/]<name>.png            'L' PNG, class ids, 255 ignore
  ROOT/scribbles/<set>/[<split>/]<name>.png  'L' PNG, 255 unlabeled (optional)
  ROOT/<split>.txt                           one name per line (optional)
  ROOT/classes.txt                           line i = name of class i (optional)

Splits: every sub-folder ``images/<split>/`` is a split, its names read from
``ROOT/<split>.txt`` when present, else from the folder's files. Without
sub-folders, every ``ROOT/<split>.txt`` for ``<split>`` in ``train``, ``val``,
``validation``, ``test`` is a split over ``images/``; without those, there is
one split ``train`` named by ``index.tsv``'s first column, else by
``images/`` (:func:`potts_jax.data.folder.names`). ``FolderConfig.splits``
overrides the discovery.

Scribbles: ``scribbles/<scribble_set>/`` (``scribble_set=None`` picks the
first sub-folder of ``scribbles/`` in sorted order, or ``scribbles/`` itself
when it holds the PNGs, as in the VOC fixture). A folder without scribbles,
or ``scribble_set="synthetic"``, gets synthetic ones:
:func:`potts_jax.data.synthetic_scribbles.skeleton_scribbles` with a
per-example seed ``(seed * 1_000_003 + crc32(name)) % 2**31``, independent
of order.

Classes: ``classes.txt`` gives the names and ``K``; without it ``K`` is
inferred as the largest mask id other than 254/255, plus one, over all
splits. Both are stored in ``info.metadata`` (``classes`` is ``None`` when
inferred), with ``scribbles`` ("folder:<set>" or "synthetic").

Features of each example:

- ``image``: ``[H, W, 3]`` uint8. The source file's own bytes when it is an
  RGB JPEG or PNG (reading back is byte-identical); other modes (grey,
  palette, RGBA, CMYK) are converted to RGB and stored as PNG.
- ``mask``, ``scribbles``: ``[H, W, 1]`` uint8 PNG (the source bytes when the
  source is an 8-bit 'L' PNG; palette PNGs are stored as their indices).
- ``name``: the base name (text).

Nothing here imports TensorFlow: the builder writes ``array_record`` and is
read with :func:`load` (or ``builder.as_data_source(split)``,
``tfds.data_source``); ``as_dataset`` needs TensorFlow.

Usage::

  from potts_jax.data.builders import folder_builder
  builder = folder_builder.prepare("/path/grabcut", data_dir="/tmp/tfds",
                                   name="grabcut", scribble_set="set1")
  train = builder.as_data_source("train")   # train[i]["image"] ...
  # Later, without the source folder:
  sources = folder_builder.load("/tmp/tfds", "grabcut")

Equivalently ``FolderSegmentation(config=FolderConfig(name=..., root=...),
data_dir=...)`` followed by ``download_and_prepare()``; it writes to
``DATA_DIR/folder/<name>/<version>/``. Any bad input (missing root, images
dir, mask or scribble file; an image whose size differs from its labels; an
undecodable file; a mask id >= K when ``classes.txt`` is given) fails the
preparation with an error naming the file, and TFDS, which writes into a
temporary directory renamed at the end, leaves no readable dataset behind.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import zlib
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from potts_jax.data.builders import builder_base
from potts_jax.data import folder
SYNTHETIC = "synthetic"
"""``scribble_set`` value that always synthesises scribbles from the masks."""

_LIST_SPLITS = ("train", "val", "validation", "test")
_IGNORED = (254, 255)


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """Configuration of :class:`FolderSegmentation`.

  Attributes:
    root: the source dataset folder (independent of TFDS's ``data_dir``);
      needed to prepare, not to read a prepared dataset.
    scribble_set: sub-folder of ``ROOT/scribbles/``; ``None`` picks one (see
      the module docstring); :data:`SYNTHETIC` always synthesises.
    splits: split names to build; ``None`` discovers them.
    seed: base seed of synthetic scribbles.
    downscale: an integer factor ``f``: every example is stored at
      ``(W // f, H // f)``, the photo box-filtered, the mask and given
      scribbles by nearest neighbour; synthetic scribbles are drawn on the
      reduced mask. 1 keeps the source size and bytes.
  """

  root: str = ""
  scribble_set: str | None = None
  splits: tuple[str, ...] | None = None
  seed: int = 0
  downscale: int = 1


def discover_splits(root: str | pathlib.Path,
                    splits: Sequence[str] | None = None
                    ) -> dict[str, tuple[str, list[str]]]:
  """The splits of a folder (rules in the module docstring).

  Args:
    root: the dataset folder.
    splits: split names to keep; ``None`` for all found.

  Returns:
    ``{split: (sub-folder, names)}``: ``sub-folder`` is ``split`` when the
    files lie in ``images/<split>/`` (and ``masks/<split>/``), else ``""``.

  Raises:
    FileNotFoundError: naming ``root``, ``images/`` or a missing split.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"dataset root {root} not found")
  images = root / "images"
  if not images.is_dir():
    raise FileNotFoundError(f"images folder {images} not found")
  found: dict[str, tuple[str, list[str]]] = {}
  for sub in sorted(p for p in images.iterdir() if p.is_dir()):
    listing = root / f"{sub.name}.txt"
    found[sub.name] = (sub.name, builder_base.read_list(listing) if listing.is_file() else
                       sorted(p.stem for p in sub.iterdir() if p.is_file()))
  if not found:
    for split in _LIST_SPLITS:
      if (root / f"{split}.txt").is_file():
        found[split] = ("", builder_base.read_list(root / f"{split}.txt"))
  if not found:
    found["train"] = ("", folder.names(root))
  if splits is None:
    return found
  missing = [s for s in splits if s not in found]
  if missing:
    raise FileNotFoundError(f"{root}: splits {missing} not found (have "
                            f"{sorted(found)})")
  return {s: found[s] for s in splits}


def _scribble_folder(root: pathlib.Path, scribble_set: str | None
                     ) -> pathlib.Path | None:
  """The scribble folder, or ``None`` for synthetic scribbles."""
  if scribble_set == SYNTHETIC:
    return None
  base = root / "scribbles"
  if scribble_set is not None:
    if not (base / scribble_set).is_dir():
      raise FileNotFoundError(f"scribble folder {base / scribble_set} not "
                              "found")
    return base / scribble_set
  if not base.is_dir():
    return None
  sets = sorted(p for p in base.iterdir() if p.is_dir())
  if sets and not any(base.glob("*.png")):
    return sets[0]
  return base


def _synthetic_seed(seed: int, name: str) -> int:
  return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


class FolderSegmentation(builder_base.ArrayRecordBuilder):
  """Images, dense masks and scribbles of a local folder (module docstring).

  Takes ``config=FolderConfig(...)`` and the usual builder arguments.
  """

  name = "folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS: list[FolderConfig] = []

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Images, dense masks and scribbles of a local folder.",
        features=builder_base.segmentation_features(),
        metadata=tfds.core.MetadataDict(),
        # Examples keep the order of the split's names (integer keys).
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    config = self.builder_config
    if not isinstance(config, FolderConfig) or not config.root:
      raise ValueError("FolderSegmentation needs config=FolderConfig(name=..., "
                       "root=...) to prepare")
    root = pathlib.Path(config.root)
    splits = discover_splits(root, config.splits)
    scribble_dir = _scribble_folder(root, config.scribble_set)
    classes_file = root / "classes.txt"
    classes = builder_base.read_list(classes_file) if classes_file.is_file() else None
    self._max_id = -1
    self.info.metadata.update(
        classes=classes,
        num_classes=len(classes) if classes is not None else None,
        scribbles=(SYNTHETIC if scribble_dir is None else
                   f"folder:{scribble_dir.relative_to(root)}"),
    )
    return {
        split: self._generate_examples(split, root, sub, names,
                                       scribble_dir, classes)
        for split, (sub, names) in splits.items()
    }

  def _generate_examples(self, split: str, root: pathlib.Path, sub: str,
                         names: Sequence[str],
                         scribble_dir: pathlib.Path | None,
                         classes: list[str] | None
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(index, example)`` in list order; checks every file."""
    config = self.builder_config
    factor = config.downscale
    if not isinstance(factor, int) or factor < 1:
      raise ValueError(f"FolderConfig.downscale={factor!r}; expected an "
                       "integer >= 1")
    duplicated = sorted(n for n, c in collections.Counter(names).items()
                        if c > 1)
    if duplicated:
      raise ValueError(f"{root}: split {split!r} lists {duplicated} more "
                       "than once")
    for index, name in enumerate(names):
      rel = f"{sub}/{name}" if sub else name
      image_path = folder.image_path(root, rel)
      image_bytes, pixels = builder_base.open_image(image_path)
      size = (pixels.shape[1], pixels.shape[0])
      mask_path = root / "masks" / f"{rel}.png"
      mask_bytes, mask = builder_base.open_label(mask_path, size)
      if factor > 1:
        image_bytes, pixels, mask_bytes, mask = _reduce(
            pixels, mask, factor, image_path)
      ids = np.setdiff1d(np.unique(mask), _IGNORED)
      if classes is not None and ids.size and ids[-1] >= len(classes):
        raise ValueError(f"{mask_path}: class id {ids[-1]} >= the "
                         f"{len(classes)} classes of {root / 'classes.txt'}")
      if ids.size:
        self._max_id = max(self._max_id, int(ids[-1]))
      if scribble_dir is None:
        from potts_jax.data import synthetic_scribbles as scribbles_lib  # pylint: disable=g-import-not-at-top
        strokes = np.asarray(scribbles_lib.skeleton_scribbles(
            mask, seed=_synthetic_seed(config.seed, name)), np.uint8)
        scribble_bytes = builder_base.encode_png(strokes)
      else:
        path = scribble_dir / sub / f"{name}.png"
        if sub and not path.is_file() and (scribble_dir / f"{name}.png"
                                           ).is_file():
          path = scribble_dir / f"{name}.png"
        scribble_bytes, strokes = builder_base.open_label(path, size)
        if factor > 1:
          scribble_bytes = builder_base.encode_png(
              _nearest(strokes, mask.shape[::-1]))
      yield index, {"image": image_bytes, "mask": mask_bytes,
                   "scribbles": scribble_bytes, "name": name}
    if classes is None:
      self.info.metadata["num_classes"] = self._max_id + 1


def _nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """``[H, W]`` uint8 labels resized to ``size`` (W, H), nearest."""
  return np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))


def _reduce(pixels: np.ndarray, mask: np.ndarray, factor: int,
            path: pathlib.Path) -> tuple[bytes, np.ndarray, bytes, np.ndarray]:
  """The photo (box filter) and mask (nearest) at ``1 / factor`` size."""
  height, width = mask.shape
  size = (width // factor, height // factor)
  if min(size) < 1:
    raise ValueError(f"{path}: {width}x{height} is too small for "
                     f"downscale={factor}")
  image = Image.fromarray(pixels).resize(size, Image.BOX)
  small = _nearest(mask, size)
  return (builder_base.encode_png(image), np.asarray(image),
          builder_base.encode_png(small), small)


def prepare(root: str | pathlib.Path, data_dir: str | pathlib.Path, *,
            name: str | None = None, scribble_set: str | None = None,
            splits: Sequence[str] | None = None, seed: int = 0,
            downscale: int = 1,
            version: str | None = None) -> FolderSegmentation:
  """Builds (or finds already built) the dataset of ``root``.

  Args:
    root: the source dataset folder.
    data_dir: TFDS data directory to write to.
    name: the config name (``DATA_DIR/folder/<name>/``); ``root``'s folder
      name by default.
    scribble_set: see :class:`FolderConfig`.
    splits: see :class:`FolderConfig`.
    seed: see :class:`FolderConfig`.
    downscale: see :class:`FolderConfig`.
    version: the config's version (``"1.0.0"`` by default).

  Returns:
    The prepared builder; ``builder.as_data_source(split)`` reads it.
  """
  root = pathlib.Path(root)
  config = FolderConfig(
      name=name or root.resolve().name, version=version, root=str(root),
      scribble_set=scribble_set,
      splits=None if splits is None else tuple(splits), seed=seed,
      downscale=downscale)
  builder = FolderSegmentation(config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def load(data_dir: str | pathlib.Path, name: str,
         version: str | None = None, *,
         decoders: dict[str, Any] | None = None) -> dict[str, Any]:
  """Random-access sources of a prepared folder dataset.

  Args:
    data_dir: the TFDS data directory given to :func:`prepare`.
    name: the config name.
    version: the version; the newest prepared one by default.
    decoders: TFDS decoders, e.g. ``{"image": tfds.decode.SkipDecoding()}``.

  Returns:
    ``{split: data source}`` (:func:`builder_base.load_prepared`).
  """
  return builder_base.load_prepared(data_dir, FolderSegmentation.name, name,
                                    version, decoders=decoders)
