"""Tests of potts_jax.data.builders.folder_builder (the TFDS ``folder`` builder)."""

import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
import tensorflow_datasets as tfds

from potts_jax.data import folder
from potts_jax.data.builders import folder_builder
REPO = pathlib.Path(__file__).resolve().parents[1]


def _pil(path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image)


def _by_name(source) -> dict[str, dict]:
  examples = {}
  for i in range(len(source)):
    example = source[i]
    examples[example["name"].decode()] = example
  return examples


def _write_tiny(root: pathlib.Path, names=("a", "b"), size=(12, 8)):
  """A two-image folder with real scribbles; returns nothing."""
  for sub in ("images", "masks", "scribbles/set1"):
    (root / sub).mkdir(parents=True, exist_ok=True)
  w, h = size
  rng = np.random.default_rng(0)
  for name in names:
    Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(
        root / "images" / f"{name}.png")
    mask = np.zeros((h, w), np.uint8)
    mask[:, w // 2:] = 1
    Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    strokes = np.full((h, w), 255, np.uint8)
    strokes[2, 1:4] = 0
    Image.fromarray(strokes).save(root / "scribbles" / "set1" / f"{name}.png")


def _assert_nothing_prepared(data_dir: pathlib.Path, name: str):
  assert not (data_dir / "folder" / name / "1.0.0").exists()
  with pytest.raises(FileNotFoundError, match="no prepared dataset"):
    folder_builder.load(data_dir, name)


def test_grabcut_round_trip_is_exact(shared_data, tmp_path):
  root = shared_data / "grabcut"
  folder_builder.prepare(root, tmp_path, name="grabcut", scribble_set="set1")
  sources = folder_builder.load(tmp_path, "grabcut")
  assert set(sources) == {"train"}
  examples = _by_name(sources["train"])
  names = folder.names(root)
  assert len(names) == 50 and sorted(examples) == sorted(names)
  for name, example in examples.items():
    image_path = folder.image_path(root, name)
    with Image.open(image_path) as image:
      assert image.mode == "RGB" and image.format in ("JPEG", "PNG")
    assert example["image"].dtype == np.uint8
    if image_path.suffix == ".png":
      np.testing.assert_array_equal(example["image"], _pil(image_path))
    else:  # JPEG decoders may differ (OpenCV vs PIL); the bytes are checked.
      assert example["image"].shape == _pil(image_path).shape
    np.testing.assert_array_equal(example["mask"][..., 0],
                                  _pil(root / "masks" / f"{name}.png"))
    np.testing.assert_array_equal(
        example["scribbles"][..., 0],
        _pil(root / "scribbles" / "set1" / f"{name}.png"))
  # The stored bytes of every image equal the source file (JPEG included).
  # Read through the builder class without a root, and tfds.data_source.
  raw = folder_builder.FolderSegmentation(
      config=folder_builder.FolderConfig(name="grabcut"),
      data_dir=str(tmp_path))
  source = raw.as_data_source("train",
                              decoders={"image": tfds.decode.SkipDecoding()})
  assert len(tfds.data_source("folder/grabcut", data_dir=str(tmp_path),
                              split="train")) == 50
  assert len(source) == 50
  for i in range(len(source)):
    example = source[i]
    name = example["name"].decode()
    image_path = folder.image_path(root, name)
    assert example["image"] == image_path.read_bytes(), image_path
  info = raw.info.metadata
  assert info["num_classes"] == 2 and info["classes"] is None
  assert info["scribbles"] == "folder:scribbles/set1"


def _mini_camvid(shared_data, root, counts=(("train", 5), ("val", 3))):
  src = shared_data / "camvid"
  for split, n in counts:
    names = (src / f"{split}.txt").read_text().split()[:n]
    for sub, ext in (("images", "jpg"), ("masks", "png")):
      (root / sub / split).mkdir(parents=True)
      for name in names:
        shutil.copy(src / sub / split / f"{name}.{ext}",
                    root / sub / split / f"{name}.{ext}")
    (root / f"{split}.txt").write_text("\n".join(names) + "\n")
  shutil.copy(src / "classes.txt", root / "classes.txt")


def test_camvid_miniature_with_synthetic_scribbles(shared_data, tmp_path):
  scribbles_lib = pytest.importorskip("potts_jax.data.synthetic_scribbles")
  root = tmp_path / "camvid"
  _mini_camvid(shared_data, root)
  data_dir = tmp_path / "tfds"
  builder = folder_builder.prepare(root, data_dir)
  assert builder.builder_config.name == "camvid"
  sources = folder_builder.load(data_dir, "camvid")
  raw = folder_builder.load(data_dir, "camvid",
                            decoders={"image": tfds.decode.SkipDecoding()})
  assert sorted(sources) == ["train", "val"]
  classes = (root / "classes.txt").read_text().split()
  metadata = builder.info.metadata
  assert metadata["classes"] == classes and metadata["num_classes"] == 11
  assert metadata["scribbles"] == folder_builder.SYNTHETIC
  for split, n in (("train", 5), ("val", 3)):
    names = (root / f"{split}.txt").read_text().split()
    source = sources[split]
    assert len(source) == n
    for i, name in enumerate(names):  # The order of the split list.
      example = source[i]
      assert example["name"].decode() == name
      image_path = root / "images" / split / f"{name}.jpg"
      assert raw[split][i]["image"] == image_path.read_bytes()
      assert example["image"].shape == _pil(image_path).shape
      mask = _pil(root / "masks" / split / f"{name}.png")
      np.testing.assert_array_equal(example["mask"][..., 0], mask)
      strokes = example["scribbles"][..., 0]
      labeled = strokes != 255
      assert labeled.any()
      # Never contradicts the mask, never labels ignored pixels.
      np.testing.assert_array_equal(strokes[labeled], mask[labeled])
      assert np.all(mask[labeled] < 11)
      np.testing.assert_array_equal(strokes, scribbles_lib.skeleton_scribbles(
          mask, seed=folder_builder._synthetic_seed(0, name)))  # pylint: disable=protected-access


_NO_TF_SCRIPT = """
import importlib.abc
import sys

attempts = []

class Audit(importlib.abc.MetaPathFinder):
  # Records every look-up of tensorflow (TFDS and etils probe for it).

  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      attempts.append(name)
    return None

sys.meta_path.insert(0, Audit())

import numpy as np
from potts_jax.data.builders import folder_builder
folder_builder.prepare(sys.argv[1], sys.argv[2], name="tiny")
sources = folder_builder.load(sys.argv[2], "tiny")
example = sources["train"][1]
assert example["name"] == b"b" and example["image"].shape == (8, 12, 3)
assert np.all(example["scribbles"][2, 1:4, 0] == 0)
loaded = sorted(m for m in sys.modules
                if m == "tensorflow" or m.startswith("tensorflow."))
assert not loaded, loaded
import importlib.util
print("OK", len(attempts), importlib.util.find_spec("tensorflow") is None)
"""


def test_prepare_and_read_without_tensorflow(tmp_path):
  """Preparing and reading never imports tensorflow (installed or not).

  Look-ups are allowed (TFDS probes whether TF exists); an import that
  succeeded would leave ``tensorflow`` in ``sys.modules``. Where TF is not
  installed (the project's environments) the run itself shows that it is not
  needed.
  """
  root = tmp_path / "tiny"
  _write_tiny(root)
  result = subprocess.run(
      [sys.executable, "-c", textwrap.dedent(_NO_TF_SCRIPT), str(root),
       str(tmp_path / "tfds")],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK" in result.stdout


def _corrupt(path: pathlib.Path):
  path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize("case, error, pattern", [
    ("no_root", FileNotFoundError, r"dataset root .*nowhere not found"),
    ("no_images", FileNotFoundError, r"images folder .*images not found"),
    ("no_mask", FileNotFoundError, r"label file .*masks/b\.png not found"),
    ("no_scribble", FileNotFoundError,
     r"label file .*scribbles/set1/b\.png not found"),
    ("mask_size", ValueError, r"masks/b\.png: size \(5, 5\) differs"),
    ("bad_image", ValueError, r"images/b\.png: cannot decode"),
    ("bad_mask", ValueError, r"masks/b\.png: cannot decode"),
    ("not_png", ValueError, r"images/b\.png: cannot decode"),
    ("class_id", ValueError, r"masks/b\.png: class id 1 >= the 1 classes"),
    ("duplicate", ValueError, r"src: split 'train' lists \['a'\] more than"),
])
def test_bad_input_names_the_file_and_leaves_no_dataset(tmp_path, case, error,
                                                        pattern):
  root = tmp_path / "src"
  _write_tiny(root)  # "a" is fine, so "b" fails after one example is written.
  if case == "no_root":
    root = tmp_path / "nowhere"
  elif case == "no_images":
    shutil.rmtree(root / "images")
  elif case == "no_mask":
    (root / "masks" / "b.png").unlink()
  elif case == "no_scribble":
    (root / "scribbles" / "set1" / "b.png").unlink()
  elif case == "mask_size":
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / "b.png")
  elif case == "bad_image":
    _corrupt(root / "images" / "b.png")
  elif case == "bad_mask":
    _corrupt(root / "masks" / "b.png")
  elif case == "not_png":
    (root / "images" / "b.png").write_bytes(b"not an image at all")
  elif case == "duplicate":
    (root / "train.txt").write_text("a\nb\na\n")
  elif case == "class_id":
    (root / "classes.txt").write_text("background\n")
    (root / "masks" / "a.png").write_bytes(  # "a" only 0 and 255.
        _png_of(np.full((8, 12), 255, np.uint8)))
  data_dir = tmp_path / "tfds"
  with pytest.raises(error, match=pattern):
    folder_builder.prepare(root, data_dir, name="bad")
  _assert_nothing_prepared(data_dir, "bad")
  # No temporary directory is left behind either.
  assert not list((data_dir / "folder").glob("bad/*"))
  if case == "bad_mask":  # Once fixed, the same call prepares it.
    _write_tiny(root)
    folder_builder.prepare(root, data_dir, name="bad")
    assert len(folder_builder.load(data_dir, "bad")["train"]) == 2


def _png_of(array: np.ndarray) -> bytes:
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def test_split_discovery_and_scribble_choice(tmp_path):
  root = tmp_path / "flat"
  _write_tiny(root, names=("a", "b", "c"))
  assert folder_builder.discover_splits(root) == {"train": ("", ["a", "b", "c"])}
  (root / "train.txt").write_text("b\na\n")
  (root / "test.txt").write_text("c\n")
  assert folder_builder.discover_splits(root) == {
      "train": ("", ["b", "a"]), "test": ("", ["c"])}
  assert folder_builder.discover_splits(root, ["test"]) == {"test": ("", ["c"])}
  with pytest.raises(FileNotFoundError, match=r"splits \['val'\] not found"):
    folder_builder.discover_splits(root, ["val"])
  # scribble_set=None picks the first set; a named missing set fails.
  choose = folder_builder._scribble_folder  # pylint: disable=protected-access
  assert choose(root, None) == root / "scribbles" / "set1"
  assert choose(root, folder_builder.SYNTHETIC) is None
  with pytest.raises(FileNotFoundError, match="scribbles/set9 not found"):
    choose(root, "set9")
  shutil.rmtree(root / "scribbles")
  assert choose(root, None) is None


def test_grey_image_and_palette_mask_are_converted(tmp_path):
  root = tmp_path / "grey"
  _write_tiny(root, names=("a",))
  grey = np.arange(96, dtype=np.uint8).reshape(8, 12)
  Image.fromarray(grey).save(root / "images" / "a.png")
  mask = np.zeros((8, 12), np.uint8)
  mask[:, 6:] = 1
  palette = Image.fromarray(mask)  # putpalette makes it a "P" image.
  palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
  assert palette.mode == "P"
  palette.save(root / "masks" / "a.png")
  folder_builder.prepare(root, tmp_path / "tfds", name="grey")
  example = folder_builder.load(tmp_path / "tfds", "grey")["train"][0]
  np.testing.assert_array_equal(example["image"],
                                np.repeat(grey[..., None], 3, axis=-1))
  np.testing.assert_array_equal(example["mask"][..., 0], mask)


def test_downscale_stores_reduced_examples(shared_data, tmp_path):
  # Independent reduction: the mean of each 2x2 block (PIL's box filter is
  # exactly that for an even factor) and the block's lower-right-of-centre
  # pixel for labels (nearest neighbour at a half-pixel offset).
  scribbles_lib = pytest.importorskip("potts_jax.data.synthetic_scribbles")
  root = tmp_path / "camvid"
  _mini_camvid(shared_data, root, counts=(("train", 2),))
  builder = folder_builder.prepare(root, tmp_path / "tfds", name="small",
                                   downscale=2)
  source = builder.as_data_source("train")
  for i, name in enumerate((root / "train.txt").read_text().split()):
    example = source[i]
    photo = _pil(root / "images" / "train" / f"{name}.jpg").astype(np.float64)
    mask = _pil(root / "masks" / "train" / f"{name}.png")
    h, w = mask.shape[0] // 2, mask.shape[1] // 2
    assert example["image"].shape == (h, w, 3)
    blocks = photo[:2 * h, :2 * w].reshape(h, 2, w, 2, 3).mean(axis=(1, 3))
    assert np.abs(example["image"] - blocks).max() <= 1.0  # uint8 rounding
    np.testing.assert_array_equal(example["mask"][..., 0],
                                  mask[1:2 * h:2, 1:2 * w:2])
    strokes = example["scribbles"][..., 0]
    np.testing.assert_array_equal(strokes, scribbles_lib.skeleton_scribbles(
        mask[1:2 * h:2, 1:2 * w:2],
        seed=folder_builder._synthetic_seed(0, name)))  # pylint: disable=protected-access


def test_downscale_reduces_given_scribbles_and_rejects_bad_factors(tmp_path):
  root = tmp_path / "tiny"
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  (root / "scribbles").mkdir()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 255, (6, 8, 3), np.uint8)).save(
      root / "images" / "a.png")
  labels = rng.integers(0, 3, (6, 8)).astype(np.uint8)
  Image.fromarray(labels).save(root / "masks" / "a.png")
  strokes = np.where(rng.random((6, 8)) < 0.5, labels, 255).astype(np.uint8)
  Image.fromarray(strokes).save(root / "scribbles" / "a.png")
  builder = folder_builder.prepare(root, tmp_path / "tfds", name="tiny2",
                                   downscale=2)
  example = builder.as_data_source("train")[0]
  np.testing.assert_array_equal(example["scribbles"][..., 0],
                                strokes[1::2, 1::2])
  for factor, match in ((0, "downscale=0"), (1.5, "downscale=1.5"),
                        (7, "too small for downscale=7")):
    with pytest.raises(ValueError, match=match):
      folder_builder.prepare(root, tmp_path / f"bad{factor}", name="bad",
                             downscale=factor)
