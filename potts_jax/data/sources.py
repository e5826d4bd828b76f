"""The training and evaluation sources a config names.

``config.dataset`` picks the source:

=====================  ====================================================
``demo``               :class:`potts_jax.data.demo_builder.DemoSource`,
                       generated in memory (nothing to prepare); options in
                       ``config.demo``
``folder``             a local folder (``config.folder_root``) prepared by
                       :mod:`potts_jax.data.folder_builder` into
                       ``config.data_dir`` on first use (``config.dataset_config``
                       names it, ``config.scribble_set`` picks its scribbles,
                       ``config.folder_downscale`` shrinks it)
``voc_scribble``,      prepared TFDS builders (:mod:`~potts_jax.data.voc_builder`,
``cityscapes_block``,  :mod:`~potts_jax.data.block_builders`, read from
``ade20k_block``,      ``config.data_dir``; ``config.dataset_config`` is the
``demo_tfds``          builder config); they are prepared once with
                       ``python -m potts_jax.data.prepare`` (the error names
                       the command)
=====================  ====================================================

``config.train_split`` and ``config.eval_split`` name the splits.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

import ml_collections

PREPARED = {
    "voc_scribble": "voc_scribble",
    "cityscapes_block": "cityscapes_block",
    "ade20k_block": "ade20k_block",
    "demo_tfds": "demo",
}
DATASETS = ("demo", "folder") + tuple(PREPARED)


@dataclasses.dataclass
class Sources:
  """What training needs of a dataset.

  Attributes:
    train, eval: random-access sources (``len``, ``[i] -> dict``).
    num_classes: ``K``.
    classes: class names, or None.
    description: one line naming the dataset, its splits and sizes (logged
      next to every number).
  """

  train: Any
  eval: Any
  num_classes: int
  classes: Sequence[str] | None
  description: str


def _metadata(source: Any) -> dict[str, Any]:
  info = getattr(source, "dataset_info", None)
  return dict(info.metadata or {}) if info is not None else {}


def _split(prepared: dict[str, Any], split: str, where: str) -> Any:
  if split not in prepared:
    raise ValueError(f"{where} has no split {split!r} (it has "
                     f"{sorted(prepared)}); set --config.train_split / "
                     "--config.eval_split")
  return prepared[split]


def _from_prepared(prepared: dict[str, Any], config: ml_collections.ConfigDict,
                   where: str) -> Sources:
  train = _split(prepared, config.train_split, where)
  evaluation = _split(prepared, config.eval_split, where)
  meta = _metadata(train)
  num_classes = config.get("num_classes") or meta.get("num_classes")
  if not num_classes:
    raise ValueError(f"{where}: the number of classes is unknown; set "
                     "--config.num_classes")
  return Sources(train, evaluation, int(num_classes), meta.get("classes"),
                 f"{where}: {config.train_split} ({len(train)}) / "
                 f"{config.eval_split} ({len(evaluation)})")


def open_sources(config: ml_collections.ConfigDict) -> Sources:
  """The sources of ``config`` (module docstring).

  Raises:
    FileNotFoundError: for a prepared dataset that is not in
      ``config.data_dir``, naming the dataset, the directory and the command
      that prepares it.
    ValueError: for an unknown dataset or split.
  """
  from potts_jax.data import builder_base  # pylint: disable=g-import-not-at-top
  name = config.dataset
  if name == "demo":
    from potts_jax.data import demo_builder  # pylint: disable=g-import-not-at-top
    options = dict(config.get("demo", {}))
    sizes = {"train": options.pop("train_size", None),
             "val": options.pop("val_size", None)}
    train = demo_builder.DemoSource(config.train_split,
                                    size=sizes[config.train_split], **options)
    evaluation = demo_builder.DemoSource(config.eval_split,
                                         size=sizes[config.eval_split],
                                         **options)
    return Sources(train, evaluation, train.num_classes, train.classes,
                   f"demo (generated, {options}): {config.train_split} "
                   f"({len(train)}) / {config.eval_split} ({len(evaluation)})")
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  data_dir = config.get("data_dir") or constants.get_default_data_dir()
  if name == "folder":
    from potts_jax.data import folder_builder  # pylint: disable=g-import-not-at-top
    root = pathlib.Path(config.folder_root)
    builder = folder_builder.prepare(
        root, data_dir, name=config.dataset_config or None,
        scribble_set=config.get("scribble_set") or None,
        seed=config.get("scribble_seed", 0),
        downscale=config.get("folder_downscale", 1))
    prepared = {split: builder.as_data_source(split)
                for split in builder.info.splits}
    return _from_prepared(prepared, config, f"folder {root}")
  if name not in PREPARED:
    raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
  try:
    prepared = builder_base.load_prepared(data_dir, PREPARED[name],
                                          config.dataset_config)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"dataset {name}/{config.dataset_config} is not prepared in "
        f"{data_dir} ({e}). Prepare it once with:\n  python -m "
        f"potts_jax.data.prepare --dataset={name} "
        f"--config={config.dataset_config} --root=DOWNLOADED_FILES "
        f"--data_dir={data_dir}\n(see `python -m potts_jax.data.prepare "
        "--help` for the files it needs), or set --config.data_dir") from None
  return _from_prepared(prepared, config,
                        f"{name}/{config.dataset_config} in {data_dir}")
