"""Tests of potts_jax.data.prepare (``python -m potts_jax.data.prepare``).

The command runs end to end (in a subprocess) on miniature Cityscapes and
ADE20k trees made from real CamVid frames (tests/test_block_builders.py's
``build_tree``); what it writes is read back and compared with the tree's
labels converted independently there.
"""

import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from potts_jax.data.builders import block_builders
from potts_jax.data.builders import demo_builder
from potts_jax.data.builders import folder_builder
from potts_jax.data import prepare
from potts_jax.data import sources
from potts_jax.data.builders import voc_builder
from tests.test_block_builders import ADE20K, CITYSCAPES, build_tree

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "potts_jax.data.prepare",
                         *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=300, check=False)


def _config(**values) -> ml_collections.ConfigDict:
  """The keys sources.open_sources reads, ``values`` in ``config.input``."""
  return ml_collections.ConfigDict(dict(
      input=dict(dict(dataset="demo", dataset_config="", data_dir="",
                      num_classes=0, train_split="train"), **values),
      eval=dict(split="val")))


def test_help_names_the_files_of_every_dataset():
  result = _run("--help")
  # absl prints the module docstring and the flags, then exits with 1.
  assert result.returncode in (0, 1) and "Traceback" not in result.stderr
  text = result.stdout
  # Each dataset has its paragraph: its name first on a line.
  starts = {line.split(",")[0].split(":")[0] for line in text.splitlines()}
  assert set(prepare.DATASETS) - starts == {"demo_tfds"}
  assert "demo, or demo_tfds" in text
  # The builders' own layouts and archives (so that --help cannot drift).
  lines = [line.strip() for doc in (block_builders.CITYSCAPES_INSTRUCTIONS,
                                    block_builders.ADE20K_INSTRUCTIONS)
           for line in doc.splitlines() if line.strip().startswith("ROOT/")]
  assert len(lines) == 4
  for expected in lines + [
      f"ROOT/{voc_builder.IMAGES_DIR}/<id>.jpg",
      f"ROOT/{voc_builder.MASKS_DIR}/<id>.png",
      f"ROOT/{voc_builder.LISTS_DIR}/train_aug.txt",
      f"ROOT/{voc_builder.SCRIBBLE_DIR}/<id>.xml",
      "leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip",
      "ADEChallengeData2016.zip", "ROOT/classes.txt", "--data_dir",
      "--scribble_set"]:
    assert expected in text, expected
  for config in (voc_builder.VocScribble.BUILDER_CONFIGS
                 + block_builders.CityscapesBlock.BUILDER_CONFIGS):
    assert config.name in text


def test_command_prepares_a_cityscapes_tree(shared_data, tmp_path):
  root, data_dir = tmp_path / "cityscapes", tmp_path / "tfds"
  expected = build_tree(shared_data, root, CITYSCAPES)
  result = _run("--dataset=cityscapes_block", "--config=block20",
                f"--root={root}", f"--data_dir={data_dir}")
  assert result.returncode == 0, result.stderr
  assert "cityscapes_block/block20 is prepared" in result.stdout
  assert "train (2), val (2)" in result.stdout
  assert ("--config.input.dataset=cityscapes_block "
          "--config.input.dataset_config=block20 "
          f"--config.input.data_dir={data_dir}") in result.stdout
  loaded = block_builders.load(data_dir, "block20", dataset=CITYSCAPES)
  for split, examples in expected.items():
    assert len(loaded[split]) == len(examples)
    for i, (name, (image, mask)) in enumerate(examples.items()):
      example = loaded[split][i]
      assert example["name"].decode() == name
      with Image.open(image) as photo:
        np.testing.assert_array_equal(example["image"], np.asarray(photo))
      np.testing.assert_array_equal(example["mask"][..., 0], mask)
      strokes = example["scribbles"][..., 0]
      labeled = strokes != 255
      np.testing.assert_array_equal(strokes[labeled], mask[labeled])
      assert abs(labeled.mean() - 0.2) < 0.05
  # Again: found, nothing rebuilt.
  stamp = (data_dir / CITYSCAPES / "block20" / "1.0.0" / "dataset_info.json"
           ).stat().st_mtime_ns
  result = _run("--dataset=cityscapes_block", "--config=block20",
                f"--root={root}", f"--data_dir={data_dir}")
  assert result.returncode == 0, result.stderr
  assert (data_dir / CITYSCAPES / "block20" / "1.0.0" / "dataset_info.json"
          ).stat().st_mtime_ns == stamp


def test_the_command_that_sources_prints_prepares_what_training_opens(
    shared_data, tmp_path):
  root, data_dir = tmp_path / "ade", tmp_path / "tfds"
  expected = build_tree(shared_data, root, ADE20K)
  config = _config(dataset=ADE20K, dataset_config="block10",
                   data_dir=str(data_dir))
  with pytest.raises(FileNotFoundError) as info:
    sources.open_sources(config)
  line, = [line for line in str(info.value).splitlines()
           if line.strip().startswith("python -m potts_jax.data.prepare")]
  args = shlex.split(line.replace("DOWNLOADED_FILES", str(root)))
  assert args[:3] == ["python", "-m", "potts_jax.data.prepare"]
  result = _run(*args[3:])
  assert result.returncode == 0, result.stderr
  opened = sources.open_sources(config)
  assert opened.num_classes == 150 and opened.classes[149] == "flag"
  assert len(opened.train) == 2 and len(opened.eval) == 2
  for i, (_, mask) in enumerate(expected["val"].values()):
    np.testing.assert_array_equal(opened.eval[i]["mask"][..., 0], mask)


def test_usage_errors_exit_with_a_message(tmp_path):
  result = _run("--dataset=ade20k_block", f"--data_dir={tmp_path}")
  assert result.returncode != 0
  assert "ade20k_block needs --root" in result.stderr
  with pytest.raises(prepare.OptionError, match="--seed does not apply"):
    prepare.prepare("voc_scribble", "xml", tmp_path, tmp_path, seed=1)
  with pytest.raises(prepare.OptionError, match="folder only"):
    prepare.prepare(CITYSCAPES, "", tmp_path, tmp_path, scribble_set="set1")
  with pytest.raises(prepare.OptionError, match="--splits applies to folder"):
    prepare.prepare("voc_scribble", "xml", tmp_path, tmp_path, splits=["val"])
  with pytest.raises(ValueError, match="dataset must be one of"):
    prepare.prepare("cityscapes", "", tmp_path, tmp_path)
  with pytest.raises(ValueError, match="unknown config 'block30'"):
    prepare.prepare(ADE20K, "block30", tmp_path, tmp_path)
  with pytest.raises(FileNotFoundError, match=r"ade20k_block root .*nowhere"):
    prepare.prepare(ADE20K, "", tmp_path / "nowhere", tmp_path)
  assert not (tmp_path / ADE20K).exists()


def test_demo_names_give_their_options(tmp_path):
  for options in ({}, dict(seed=1, height=64),
                  dict(num_classes=4, noise_std=2.5, max_fraction=0.05),
                  dict(width=80, train_size=3, val_size=2)):
    name = demo_builder.config_name(**options)
    assert prepare.demo_options(name) == options
  assert prepare.demo_options("seed1-height64-num_classes4") == dict(
      seed=1, height=64, num_classes=4)
  for bad in ("seed1-colour3", "seed1-seed2", "heightx", "seed0"):
    with pytest.raises(ValueError, match="demo config"):
      prepare.demo_options(bad)
  name = "height32-width40-train_size3-val_size2"
  builder = prepare.prepare("demo_tfds", name, None, tmp_path)
  assert builder.builder_config.name == name
  opened = sources.open_sources(_config(dataset="demo_tfds",
                                        dataset_config=name,
                                        data_dir=str(tmp_path)))
  assert len(opened.train) == 3 and len(opened.eval) == 2
  generated = demo_builder.DemoSource("train", height=32, width=40)
  for i in range(3):
    np.testing.assert_array_equal(opened.train[i]["image"],
                                  generated[i]["image"])
    np.testing.assert_array_equal(opened.train[i]["mask"],
                                  generated[i]["mask"])


def test_folder(shared_data, tmp_path):
  camvid, root = shared_data / "camvid", tmp_path / "tiny"
  names = camvid.joinpath("train.txt").read_text().split()[:2]
  for sub in ("images", "masks"):
    (root / sub).mkdir(parents=True)
  for name in names:
    shutil.copy(camvid / "images" / "train" / f"{name}.jpg", root / "images")
    shutil.copy(camvid / "masks" / "train" / f"{name}.png", root / "masks")
  (root / "train.txt").write_text("\n".join(names) + "\n")
  shutil.copy(camvid / "classes.txt", root / "classes.txt")
  builder = prepare.prepare("folder", "tiny_seed3", root, tmp_path / "tfds",
                            seed=3, splits=["train"])
  assert builder.builder_config.seed == 3
  meta = builder.info.metadata
  assert meta["num_classes"] == 11 and meta["scribbles"] == "synthetic"
  train = folder_builder.load(tmp_path / "tfds", "tiny_seed3")["train"]
  for i, name in enumerate(names):
    with Image.open(root / "masks" / f"{name}.png") as mask:
      np.testing.assert_array_equal(train[i]["mask"][..., 0],
                                    np.asarray(mask))
