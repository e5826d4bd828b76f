"""The training and evaluation sources a config names.

``config.input.dataset`` picks the source (every key below is of
``config.input`` but the eval split, ``config.eval.split``):

=====================  ====================================================
``demo``               :class:`potts_jax.data.builders.demo_builder.DemoSource`,
                       generated in memory (nothing to prepare); options in
                       ``demo``
``folder``             a local folder (``folder_root``) prepared by
                       :mod:`potts_jax.data.builders.folder_builder` into
                       ``data_dir`` on first use (``dataset_config`` names
                       it, ``scribble_set`` picks its scribbles,
                       ``scribble_seed`` seeds synthetic ones,
                       ``folder_downscale`` shrinks it)
``voc_scribble``,      prepared TFDS builders (:mod:`~potts_jax.data.builders.voc_builder`,
``cityscapes_block``,  :mod:`~potts_jax.data.builders.block_builders`, read from
``ade20k_block``,      ``data_dir``; ``dataset_config`` is the
``demo_tfds``          builder config); they are prepared once with
                       ``python -m potts_jax.data.prepare`` (the error names
                       the command)
=====================  ====================================================

``config.input.train_split`` and ``config.eval.split`` name the splits;
``config.input.num_classes`` (0: from the metadata) the number of classes.
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
                     f"{sorted(prepared)}); set --config.input.train_split / "
                     "--config.eval.split")
  return prepared[split]


def _from_prepared(prepared: dict[str, Any], config: ml_collections.ConfigDict,
                   where: str) -> Sources:
  train_split, eval_split = config.input.train_split, config.eval.split
  train = _split(prepared, train_split, where)
  evaluation = _split(prepared, eval_split, where)
  meta = _metadata(train)
  num_classes = config.input.num_classes or meta.get("num_classes")
  if not num_classes:
    raise ValueError(f"{where}: the number of classes is unknown; set "
                     "--config.input.num_classes")
  return Sources(train, evaluation, int(num_classes), meta.get("classes"),
                 f"{where}: {train_split} ({len(train)}) / "
                 f"{eval_split} ({len(evaluation)})")


def open_sources(config: ml_collections.ConfigDict) -> Sources:
  """The sources of ``config`` (module docstring).

  Raises:
    FileNotFoundError: for a prepared dataset that is not in
      ``config.input.data_dir``, naming the dataset, the directory and the
      command that prepares it.
    ValueError: for an unknown dataset or split.
  """
  from potts_jax.data.builders import builder_base  # pylint: disable=g-import-not-at-top
  c = config.input
  name = c.dataset
  train_split, eval_split = c.train_split, config.eval.split
  if name == "demo":
    from potts_jax.data.builders import demo_builder  # pylint: disable=g-import-not-at-top
    options = dict(c.demo)
    sizes = {"train": options.pop("train_size", None),
             "val": options.pop("val_size", None)}
    train = demo_builder.DemoSource(train_split, size=sizes[train_split],
                                    **options)
    evaluation = demo_builder.DemoSource(eval_split, size=sizes[eval_split],
                                         **options)
    return Sources(train, evaluation, train.num_classes, train.classes,
                   f"demo (generated, {options}): {train_split} "
                   f"({len(train)}) / {eval_split} ({len(evaluation)})")
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  data_dir = c.data_dir or constants.get_default_data_dir()
  if name == "folder":
    from potts_jax.data.builders import folder_builder  # pylint: disable=g-import-not-at-top
    root = pathlib.Path(c.folder_root)
    builder = folder_builder.prepare(
        root, data_dir, name=c.dataset_config or None,
        scribble_set=c.scribble_set or None, seed=c.scribble_seed,
        downscale=c.folder_downscale)
    prepared = {split: builder.as_data_source(split)
                for split in builder.info.splits}
    return _from_prepared(prepared, config, f"folder {root}")
  if name not in PREPARED:
    raise ValueError(f"config.input.dataset must be one of {DATASETS}, got "
                     f"{name!r}")
  try:
    prepared = builder_base.load_prepared(data_dir, PREPARED[name],
                                          c.dataset_config)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"dataset {name}/{c.dataset_config} is not prepared in "
        f"{data_dir} ({e}). Prepare it once with:\n  python -m "
        f"potts_jax.data.prepare --dataset={name} "
        f"--config={c.dataset_config} --root=DOWNLOADED_FILES "
        f"--data_dir={data_dir}\n(see `python -m potts_jax.data.prepare "
        "--help` for the files it needs), or set --config.input.data_dir"
    ) from None
  return _from_prepared(prepared, config,
                        f"{name}/{c.dataset_config} in {data_dir}")
