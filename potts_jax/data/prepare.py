"""Prepares a dataset once into TFDS array_record files (no TensorFlow).

  python -m potts_jax.data.prepare --dataset=DATASET --config=NAME \\
      --root=DOWNLOADED_FILES --data_dir=DIR

writes ``DIR/<builder>/<config>/<version>/``; training then reads it with
``--config.input.dataset=DATASET --config.input.dataset_config=NAME
--config.input.data_dir=DIR``
(the last line printed says so). Preparing again finds it and does nothing.
A missing or bad file fails with an error naming it and leaves nothing
readable. Per dataset, the configs and what ``--root`` must hold:

voc_scribble: configs xml (default), xml_len0, xml_len0.3, xml_len0.5,
  xml_len0.8 (shortened strokes, paper Table 3), png. Splits train_aug, val.
    ROOT/VOCdevkit/VOC2012/JPEGImages/<id>.jpg     (VOCtrainval_11-May-2012)
    ROOT/VOCdevkit/VOC2012/SegmentationClassAug/<id>.png   (DeepLab trainaug)
    ROOT/VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt, val.txt
    ROOT/pascal_2012_scribble/<id>.xml   ScribbleSup XML (xml* configs)
    ROOT/pascal_2012_scribble/<id>.png   rasterised scribbles (png config)

cityscapes_block: configs block10, block20, block50 (default). Splits train,
  val. Unzip leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip:
    ROOT/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
    ROOT/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png

ade20k_block: configs block10, block20, block50 (default). Splits train, val.
  Unzip ADEChallengeData2016.zip:
    ROOT/ADEChallengeData2016/images/{training,validation}/<name>.jpg
    ROOT/ADEChallengeData2016/annotations/{training,validation}/<name>.png

  --seed=S (block datasets): other blocks, under the config name
  block<percent>_seed<S>.

demo, or demo_tfds (the same; training's name for the prepared demo):
  generated, no --root.
  Config "default", or a name of demo_builder.config_name giving its
  options, e.g. seed1-height64-num_classes4 ("." written "p").

folder: any folder in the layout of shared/data/camvid or grabcut; --config
  names it (default: the folder's name).
    ROOT/images/[<split>/]<name>.jpg|png   ROOT/masks/[<split>/]<name>.png
    ROOT/scribbles/<set>/[<split>/]<name>.png   (optional; --scribble_set)
    ROOT/<split>.txt (optional)   ROOT/classes.txt (optional)
  Without scribbles (or --scribble_set=synthetic) synthetic ones are drawn
  from the masks with --seed.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Sequence

from absl import app
from absl import flags

DATASETS = ("voc_scribble", "cityscapes_block", "ade20k_block", "demo",
            "demo_tfds", "folder")
_BLOCK = ("cityscapes_block", "ade20k_block")
_DEFAULT_CONFIG = {"voc_scribble": "xml", "cityscapes_block": "block50",
                   "ade20k_block": "block50", "demo": "default",
                   "demo_tfds": "default", "folder": ""}


def define_flags() -> None:
  """The command's flags, defined when it runs (not on import, so that
  importing this module beside other absl programs defines no flag twice)."""
  flags.DEFINE_enum("dataset", None, DATASETS, "The dataset.")
  flags.DEFINE_string(
      "config", "", "The builder config (the dataset's default when empty; "
      "see above).")
  flags.DEFINE_string(
      "root", "", "The folder holding the downloaded files (see above); not "
      "used by demo.")
  flags.DEFINE_string(
      "data_dir", "", "TFDS data directory to write to; default "
      "$TFDS_DATA_DIR or ~/tensorflow_datasets (what training reads).")
  flags.DEFINE_integer(
      "seed", None, "Seed of block scribbles (cityscapes_block, ade20k_block) "
      "or of synthetic folder scribbles.")
  flags.DEFINE_string(
      "scribble_set", None, "folder: sub-folder of ROOT/scribbles/, or "
      "'synthetic'.")
  flags.DEFINE_list(
      "splits", None, "folder: the splits to build (all found by default).")


class OptionError(ValueError):
  """An option the dataset does not take, or a missing one."""


def demo_options(name: str) -> dict[str, Any]:
  """The :class:`~potts_jax.data.builders.demo_builder.DemoConfig` options of a name.

  The inverse of :func:`potts_jax.data.builders.demo_builder.config_name`.

  Raises:
    ValueError: when ``name`` is not such a name.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds
  from potts_jax.data.builders import demo_builder
  defaults = demo_builder.DemoConfig(name="default")
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  fields = [f.name for f in dataclasses.fields(defaults) if f.name not in base]
  options = {}
  for part in ([] if name == "default" else name.split("-")):
    key = max((f for f in fields if part.startswith(f)), key=len, default=None)
    try:
      value = type(getattr(defaults, key))(part[len(key):].replace("p", "."))
    except (TypeError, ValueError):  # No key (None), or a bad value.
      key = None
    if key is None or key in options:
      raise ValueError(f"demo config {name!r}: cannot read {part!r}; use "
                       "'default' or demo_builder.config_name(...), e.g. "
                       "'seed1-height64'")
    options[key] = value
  if demo_builder.config_name(**options) != name:
    raise ValueError(f"demo config {name!r} is not demo_builder.config_name"
                     f"(**{options}) = {demo_builder.config_name(**options)!r}")
  return options


def prepare(dataset: str, config: str, root: str | pathlib.Path | None,
            data_dir: str | pathlib.Path, *, seed: int | None = None,
            scribble_set: str | None = None,
            splits: Sequence[str] | None = None) -> Any:
  """Prepares one dataset config (module docstring); returns its builder.

  Args:
    dataset: one of :data:`DATASETS`.
    config: the config name; empty for the dataset's default.
    root: the downloaded files (not used by ``demo``).
    data_dir: TFDS data directory.
    seed: block-scribble or synthetic-scribble seed.
    scribble_set: ``folder`` only.
    splits: ``folder`` only: the splits to build; ``None`` for all.

  Raises:
    OptionError: for an option the dataset does not take, or no ``root``.
    ValueError: for an unknown dataset or config.
    FileNotFoundError: naming a missing folder or file.
  """
  # pylint: disable=g-import-not-at-top
  if dataset not in DATASETS:
    raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
  config = config or _DEFAULT_CONFIG[dataset]
  if seed is not None and dataset not in _BLOCK + ("folder",):
    raise OptionError(f"--seed does not apply to {dataset}")
  for option, value in (("scribble_set", scribble_set), ("splits", splits)):
    if value is not None and dataset != "folder":
      raise OptionError(f"--{option} applies to folder only, not {dataset}")
  if dataset in ("demo", "demo_tfds"):
    from potts_jax.data.builders import demo_builder
    return demo_builder.prepare(data_dir, name=config, **demo_options(config))
  if not root:
    raise OptionError(f"{dataset} needs --root, the folder of the downloaded "
                     "files (see --help)")
  if dataset == "voc_scribble":
    from potts_jax.data.builders import voc_builder
    return voc_builder.prepare(root, data_dir, config=config)
  if dataset in _BLOCK:
    from potts_jax.data.builders import block_builders
    return block_builders.prepare(root, data_dir, dataset=dataset,
                                  config=config, seed=seed)
  from potts_jax.data.builders import folder_builder
  return folder_builder.prepare(root, data_dir, name=config or None,
                                scribble_set=scribble_set, splits=splits,
                                seed=seed or 0)


def main(argv: Sequence[str]) -> None:
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if FLAGS.dataset is None:
    raise app.UsageError("--dataset is required (see --help)")
  # pylint: disable-next=g-import-not-at-top
  from tensorflow_datasets.core import constants
  data_dir = FLAGS.data_dir or constants.get_default_data_dir()
  try:
    builder = prepare(FLAGS.dataset, FLAGS.config, FLAGS.root, data_dir,
                      seed=FLAGS.seed, scribble_set=FLAGS.scribble_set,
                      splits=FLAGS.splits)
  except OptionError as e:
    raise app.UsageError(str(e)) from None
  dataset, name = FLAGS.dataset, builder.builder_config.name
  sizes = ", ".join(f"{split} ({info.num_examples})"
                    for split, info in builder.info.splits.items())
  print(f"{dataset}/{name} is prepared in {builder.data_dir}: {sizes}")
  # The names training uses (potts_jax/data/sources.py): the prepared demo is
  # demo_tfds; a folder is named by its root (prepared there on first use).
  training = "demo_tfds" if dataset == "demo" else dataset
  flags_line = (f"--config.input.dataset={training} "
                f"--config.input.dataset_config={name} "
                f"--config.input.data_dir={data_dir}")
  if dataset == "folder":
    flags_line += f" --config.input.folder_root={FLAGS.root}"
  print(f"Train on it with {flags_line}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
