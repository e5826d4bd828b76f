"""Tests of potts_jax.data.builders.demo_builder (the procedural ``demo`` dataset)."""

import pickle

import numpy as np
import pytest

from potts_jax.data.builders import demo_builder
from potts_jax.data import demo_scenes
from potts_jax.data import pipeline
from potts_jax.data import synthetic_scribbles as scribbles_lib
SMALL = dict(train_size=12, val_size=4)


def test_demo_source_is_list_like_and_picklable():
  source = demo_builder.DemoSource("val", size=5, seed=2)
  assert len(source) == 5 and source.num_classes == 5
  assert source.classes == ["background", "red", "green", "blue", "yellow"]
  np.testing.assert_array_equal(
      source[-1]["image"], demo_scenes.make_example(4, seed=2,
                                                     split="val")["image"])
  with pytest.raises(IndexError):
    source[5]
  assert len(list(source)) == 5
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[1]["mask"], source[1]["mask"])
  assert len(demo_builder.DemoSource("train")) == 320
  assert len(demo_builder.DemoSource("val")) == 64
  batch = next(iter(pipeline.train_dataset(
      source, crop_size=64, batch_size=2, seed=0, process_index=0,
      process_count=1)))
  assert batch["image"].shape == (2, 64, 64, 3)


def test_config_names():
  assert demo_builder.config_name() == "default"
  assert demo_builder.config_name(seed=0, height=96) == "default"
  assert (demo_builder.config_name(seed=1, noise_std=4.0)
          == "seed1-noise_std4p0")
  with pytest.raises(TypeError):
    demo_builder.config_name(colour=1)


def test_tfds_build_reads_back_make_example_exactly(tmp_path):
  options = dict(seed=5, height=64, width=80, num_classes=4)
  builder = demo_builder.prepare(tmp_path, **SMALL, **options)
  name = demo_builder.config_name(**SMALL, **options)
  assert (tmp_path / "demo" / name / "1.0.0" / "dataset_info.json").is_file()
  metadata = builder.info.metadata
  assert metadata["classes"] == ["background", "red", "green", "blue"]
  assert metadata["num_classes"] == 4 and metadata["scribbles"] == "skeleton"
  sources = demo_builder.load(tmp_path, name)
  assert sorted(sources) == ["train", "val"]
  for split, size in (("train", 12), ("val", 4)):
    source = sources[split]
    assert len(source) == size
    fractions = []
    for i in range(size):
      got = source[i]
      want = demo_scenes.make_example(i, split=split, **options)
      for key in ("image", "mask", "scribbles"):
        assert got[key].dtype == np.uint8
        np.testing.assert_array_equal(got[key], want[key])
      assert got["name"].decode() == want["name"]
      fractions.append(scribbles_lib.labeled_fraction(
          want["scribbles"][..., 0], want["mask"][..., 0]))
    stored = metadata["labeled_fraction"][split]
    assert stored["mean"] == pytest.approx(np.mean(fractions))
    assert stored["min"] == pytest.approx(min(fractions))
    assert stored["max"] == pytest.approx(max(fractions))
  # Metadata survives a reload from the directory alone.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  reread = tfds.builder_from_directory(
      str(tmp_path / "demo" / name / "1.0.0"))
  assert reread.info.metadata["labeled_fraction"]["val"]["mean"] == (
      pytest.approx(np.mean(fractions)))
  # Preparing again finds it.
  demo_builder.prepare(tmp_path, **SMALL, **options)
