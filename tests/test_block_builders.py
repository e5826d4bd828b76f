"""Tests of potts_jax.data.builders.block_builders (cityscapes_block, ade20k_block).

Miniature Cityscapes and ADE20k trees are built in a temporary folder from
real CamVid frames of ``shared/data/camvid`` (2 train, 2 val): CamVid classes
are written as the Cityscapes labelIds / ADE20k values of the same things,
void pixels cycle through every raw value (0..33 / 0..150) so that the whole
id table is exercised. Expected labels are converted here with the tables
written out below, independently of the builder.
"""

import pathlib
import shutil
import sys
import zlib

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from potts_jax.data.builders import block_builders
from potts_jax.data import synthetic_scribbles
CITYSCAPES = "cityscapes_block"
ADE20K = "ade20k_block"
TRAIN = ("0001TP_006690", "0001TP_006720")
VAL = ("0016E5_07959", "0016E5_07961")
# Cityscapes name (city, frame) of each CamVid frame.
CITY = {TRAIN[0]: "aachen", TRAIN[1]: "bochum", VAL[0]: "frankfurt",
        VAL[1]: "frankfurt"}
# CamVid classes (classes.txt order) as Cityscapes labelIds and ADE20k
# values: sky, building, pole, road, pavement, tree, sign, fence, car,
# pedestrian, bicyclist (rider / bicycle).
CAMVID_TO_CITYSCAPES = (23, 11, 17, 7, 8, 21, 20, 13, 26, 24, 25)
CAMVID_TO_ADE20K = (3, 2, 94, 7, 12, 5, 44, 33, 21, 13, 128)
# The official Cityscapes table (cityscapesscripts/helpers/labels.py):
# trainId of labelId 0..33.
TRAIN_ID = (
    255, 255, 255, 255, 255, 255, 255,  # unlabeled .. ground (0-6)
    0, 1, 255, 255,  # road, sidewalk, parking, rail track (7-10)
    2, 3, 4, 255, 255, 255,  # building, wall, fence, guard rail, bridge,
                             # tunnel (11-16)
    5, 255, 6, 7, 8, 9, 10,  # pole, polegroup, traffic light, traffic sign,
                             # vegetation, terrain, sky (17-23)
    11, 12, 13, 14, 15, 255, 255, 16, 17, 18,  # person, rider, car, truck,
    # bus, caravan, trailer, train, motorcycle, bicycle (24-33)
)
CONFIGS = ("block10", "block20", "block50")


def _pil(path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image)


def _raw_label(camvid: np.ndarray, table, count: int) -> np.ndarray:
  """CamVid classes -> raw ids; void cycles through 0..count-1."""
  rows, cols = np.indices(camvid.shape)
  out = np.where(camvid == 255, (rows + cols) % count,
                 np.asarray(table)[np.minimum(camvid, 10)])
  return out.astype(np.uint8)


def _expected(dataset: str, raw: np.ndarray) -> np.ndarray:
  if dataset == CITYSCAPES:
    return np.asarray(TRAIN_ID, np.uint8)[raw]
  return np.where(raw == 0, 255, raw.astype(np.int64) - 1).astype(np.uint8)


def _cityscapes_name(name: str) -> str:
  return f"{CITY[name]}_{int(name.split('_')[1]):06d}_000019"


def _ade_name(split: str, name: str) -> str:
  return f"ADE_{split}_{int(name.split('_')[1]):08d}"


def build_tree(shared_data: pathlib.Path, root: pathlib.Path, dataset: str
               ) -> dict[str, dict[str, tuple[pathlib.Path, np.ndarray]]]:
  """A miniature tree under ``root``.

  Returns:
    ``{split: {name: (image file, expected mask [H, W])}}``, names sorted.
  """
  camvid = shared_data / "camvid"
  out = {}
  for split, names, sub in (("train", TRAIN, "train"), ("val", VAL, "val")):
    out[split] = {}
    for name in names:
      photo = camvid / "images" / sub / f"{name}.jpg"
      labels = _pil(camvid / "masks" / sub / f"{name}.png")
      if dataset == CITYSCAPES:
        raw = _raw_label(labels, CAMVID_TO_CITYSCAPES, 34)
        raw[0, :34] = np.arange(34)  # Every labelId at least once.
        new = _cityscapes_name(name)
        image = root / "leftImg8bit" / split / CITY[name] / (
            f"{new}_leftImg8bit.png")
        label = root / "gtFine" / split / CITY[name] / (
            f"{new}_gtFine_labelIds.png")
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.open(photo).save(image)  # RGB PNG, as leftImg8bit.
      else:
        raw = _raw_label(labels, CAMVID_TO_ADE20K, 151)
        raw[0, :151] = np.arange(151)
        folder = {"train": "training", "val": "validation"}[split]
        new = _ade_name(split, name)
        base = root / "ADEChallengeData2016"
        image = base / "images" / folder / f"{new}.jpg"
        label = base / "annotations" / folder / f"{new}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, image)
      Image.fromarray(raw).save(label)
      out[split][new] = (image, _expected(dataset, raw))
    out[split] = dict(sorted(out[split].items()))
  return out


@pytest.fixture(scope="module", params=[CITYSCAPES, ADE20K])
def prepared(request, shared_data, tmp_path_factory):
  """``(dataset, tree root, expected, data_dir)``, every config prepared."""
  dataset = request.param
  root = tmp_path_factory.mktemp(dataset) / "root"
  expected = build_tree(shared_data, root, dataset)
  data_dir = tmp_path_factory.mktemp("tfds")
  for config in CONFIGS:
    block_builders.prepare(root, data_dir, dataset=dataset, config=config)
  return dataset, root, expected, data_dir


def _scribbles(data_dir, dataset, config) -> dict[str, np.ndarray]:
  out = {}
  for source in block_builders.load(data_dir, config,
                                    dataset=dataset).values():
    for i in range(len(source)):
      out[source[i]["name"].decode()] = source[i]["scribbles"][..., 0]
  return out


def test_configs_metadata_and_instructions(prepared):
  dataset, _, _, data_dir = prepared
  cls = block_builders.BUILDERS[dataset]
  assert [c.name for c in cls.BUILDER_CONFIGS] == list(CONFIGS)
  num_classes = 19 if dataset == CITYSCAPES else 150
  for config, fraction in zip(CONFIGS, (0.1, 0.2, 0.5)):
    meta = cls(config=config, data_dir=str(data_dir)).info.metadata
    assert meta["num_classes"] == num_classes
    assert len(meta["classes"]) == len(set(meta["classes"])) == num_classes
    assert meta["fraction"] == fraction and meta["seed"] == 0
    assert meta["block"] == 32
  meta = cls(config="block10", data_dir=str(data_dir)).info.metadata
  if dataset == CITYSCAPES:
    assert meta["classes"][0] == "road" and meta["classes"][18] == "bicycle"
    assert meta["classes"][10] == "sky"
    for text in ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip",
                 "leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png",
                 "gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png"):
      assert text in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
  else:
    # objectInfo150: value 1 wall, 3 sky, 13 person, 150 flag.
    assert meta["classes"][0] == "wall" and meta["classes"][2] == "sky"
    assert meta["classes"][12] == "person" and meta["classes"][149] == "flag"
    for text in ("ADEChallengeData2016.zip",
                 "ADEChallengeData2016/images/{training,validation}/<name>.jpg",
                 "ADEChallengeData2016/annotations/{training,validation}/"):
      assert text in cls.MANUAL_DOWNLOAD_INSTRUCTIONS
  # Registered: tfds.data_source finds it; nothing imported TensorFlow.
  assert len(tfds.data_source(f"{dataset}/block20", data_dir=str(data_dir),
                              split="val")) == 2
  assert not [m for m in sys.modules if m.split(".")[0] == "tensorflow"]


def test_round_trip_is_exact(prepared):
  dataset, _, expected, data_dir = prepared
  sources = block_builders.load(data_dir, "block50", dataset=dataset)
  raw = block_builders.load(data_dir, "block50", dataset=dataset,
                            decoders={"image": tfds.decode.SkipDecoding()})
  assert set(sources) == {"train", "val"}
  for split, examples in expected.items():
    assert len(sources[split]) == len(examples)
    for i, (name, (image_path, mask)) in enumerate(examples.items()):
      example = sources[split][i]
      assert example["name"].decode() == name  # Sorted file order.
      assert raw[split][i]["image"] == image_path.read_bytes()
      if image_path.suffix == ".png":
        np.testing.assert_array_equal(example["image"], _pil(image_path))
      else:  # JPEG decoders may differ; the bytes are checked above.
        assert example["image"].shape == _pil(image_path).shape
      np.testing.assert_array_equal(example["mask"][..., 0], mask)
      # Every class the tree wrote comes back (the row of all raw ids).
      num_classes = 19 if dataset == CITYSCAPES else 150
      assert set(np.unique(mask)) == set(range(num_classes)) | {255}


@pytest.mark.parametrize("config, fraction", [("block10", 0.1),
                                              ("block20", 0.2),
                                              ("block50", 0.5)])
def test_block_scribbles(prepared, config, fraction):
  dataset, _, expected, data_dir = prepared
  outs = _scribbles(data_dir, dataset, config)
  masks = {n: m for split in expected.values() for n, (_, m) in split.items()}
  assert sorted(outs) == sorted(masks)
  for name, out in outs.items():
    mask = masks[name]
    height, width = mask.shape
    labeled = out != 255
    # Never contradicts the mask; never labels an ignored pixel.
    np.testing.assert_array_equal(out[labeled], mask[labeled])
    # Tiles of 32 px from the top-left corner: a tile with a labeled pixel
    # is kept whole (the mask inside it), every other tile is unlabeled.
    area = 0
    for r in range(0, height, 32):
      for c in range(0, width, 32):
        tile = (slice(r, r + 32), slice(c, c + 32))
        assert np.any(mask[tile] != 255)  # Kept tiles are detectable.
        if labeled[tile].any():
          np.testing.assert_array_equal(out[tile], mask[tile])
          area += out[tile].size
    share = area / (height * width)
    # The kept area is the closest to the share that whole tiles allow.
    assert abs(share - fraction) <= 32 * 32 / 2 / (height * width) + 1e-9
    print(f"{dataset}/{config} {name}: blocks cover {share:.4f}, labels "
          f"{labeled.mean():.4f} of the pixels")


def test_scribbles_are_deterministic_by_seed(prepared, tmp_path):
  dataset, root, expected, data_dir = prepared
  block20 = _scribbles(data_dir, dataset, "block20")
  # The same seed under another name, and only the val split: the same
  # scribbles (a per-example seed, independent of order and splits).
  builder = block_builders.prepare(root, tmp_path, dataset=dataset,
                                   config="block20", name="again",
                                   splits=["val"])
  assert builder.builder_config.name == "again"
  again = _scribbles(tmp_path, dataset, "again")
  assert sorted(again) == sorted(expected["val"])
  for name, out in again.items():
    np.testing.assert_array_equal(out, block20[name])
  # Another seed: a name of its own, other blocks in every image.
  builder = block_builders.prepare(root, tmp_path, dataset=dataset,
                                   config="block20", seed=7)
  assert builder.builder_config.name == "block20_seed7"
  assert builder.info.metadata["seed"] == 7
  other = _scribbles(tmp_path, dataset, "block20_seed7")
  for name, out in other.items():
    assert not np.array_equal(out, block20[name])
  # The documented rule: synthetic_scribbles.block_scribbles of the mask with
  # the example's seed (seed * 1_000_003 + crc32(name)) % 2**31, computed here.
  masks = {n: m for split in expected.values() for n, (_, m) in split.items()}
  for seed, outs in ((0, block20), (7, other)):
    for name, out in outs.items():
      np.testing.assert_array_equal(out, synthetic_scribbles.block_scribbles(
          masks[name], 0.2, block=32,
          seed=(seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31))


def test_prepare_rejects_a_predefined_name_for_other_options(prepared,
                                                             tmp_path):
  dataset, root, _, _ = prepared
  with pytest.raises(ValueError, match="predefined"):
    block_builders.prepare(root, tmp_path, dataset=dataset, name="block10",
                           fraction=0.3)
  with pytest.raises(ValueError, match="unknown config"):
    block_builders.prepare(root, tmp_path, dataset=dataset, config="block30")
  with pytest.raises(ValueError, match="dataset must be one of"):
    block_builders.prepare(root, tmp_path, dataset="cityscapes")


@pytest.mark.parametrize("dataset, case, error, pattern", [
    (CITYSCAPES, "no_root", FileNotFoundError, r"root .*nowhere not found"),
    (CITYSCAPES, "no_folder", FileNotFoundError,
     r"labels folder .*gtFine/val not found"),
    (CITYSCAPES, "no_label", FileNotFoundError,
     r"gtFine/val/frankfurt/frankfurt_007961_000019_gtFine_labelIds\.png"
     r" not found"),
    (CITYSCAPES, "bad_id", ValueError,
     r"frankfurt_007961_000019_gtFine_labelIds\.png: values \[34\] are not"),
    (CITYSCAPES, "no_images", FileNotFoundError,
     r"no <city>/<name>_leftImg8bit\.png in .*leftImg8bit/val"),
    (ADE20K, "no_folder", FileNotFoundError,
     r"annotations folder .*annotations/validation not found"),
    (ADE20K, "no_label", FileNotFoundError,
     r"annotations/validation/ADE_val_00007961\.png not found"),
    (ADE20K, "bad_id", ValueError,
     r"ADE_val_00007961\.png: values \[151\] are not ADE20k"),
    (ADE20K, "size", ValueError,
     r"ADE_val_00007961\.png: size \(5, 5\) differs"),
    (ADE20K, "corrupt", ValueError, r"ADE_val_00007961\.jpg: cannot decode"),
])
def test_bad_input_names_the_file_and_leaves_no_dataset(
    shared_data, tmp_path, dataset, case, error, pattern):
  # train is fine, so val fails after a split was written.
  root = tmp_path / "root"
  expected = build_tree(shared_data, root, dataset)
  image, _ = list(expected["val"].values())[-1]
  if dataset == CITYSCAPES:
    label = pathlib.Path(str(image).replace("leftImg8bit/", "gtFine/").replace(
        "_leftImg8bit.png", "_gtFine_labelIds.png"))
  else:
    label = pathlib.Path(str(image).replace("/images/", "/annotations/")
                         ).with_suffix(".png")
  if case == "no_root":
    root = tmp_path / "nowhere"
  elif case == "no_folder":
    shutil.rmtree(label.parent if dataset == ADE20K else label.parents[1])
  elif case == "no_label":
    label.unlink()
  elif case == "bad_id":
    raw = _pil(label).copy()
    raw[5, 5] = 34 if dataset == CITYSCAPES else 151
    Image.fromarray(raw).save(label)
  elif case == "no_images":
    for path in image.parent.parent.glob("*/*.png"):
      path.unlink()
  elif case == "size":
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(label)
  elif case == "corrupt":
    image.write_bytes(image.read_bytes()[:60])
  data_dir = tmp_path / "tfds"
  with pytest.raises(error, match=pattern):
    block_builders.prepare(root, data_dir, dataset=dataset, config="block10")
  with pytest.raises(FileNotFoundError, match="no prepared dataset"):
    block_builders.load(data_dir, "block10", dataset=dataset)
  # No temporary directory is left behind either.
  assert not list((data_dir / dataset).glob("block10/*"))
