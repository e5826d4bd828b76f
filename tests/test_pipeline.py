"""Tests of potts_jax.data.pipeline (grain input pipeline)."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from PIL import Image

from potts_jax import labels
from potts_jax.data import folder
from potts_jax.data import eval_pipeline
from potts_jax.data import pipeline
PAD = labels.PADDING


@pytest.fixture(scope="module")
def grabcut(shared_data):
  """Six GrabCut images (long side 48) as a list source of uint8 dicts."""
  root = shared_data / "grabcut"
  source = []
  for name in folder.names(root)[:6]:
    e = folder.load_example(root, name, scribble_set="set1", long_side=48)
    source.append({"image": e.image.round().astype(np.uint8),
                   "mask": e.mask.astype(np.uint8)[..., None],
                   "scribbles": e.scribbles.astype(np.uint8),
                   "name": e.name.encode()})
  return source


def _index_source(n, size=(24, 32)):
  """``n`` examples whose mask is their index (for visiting checks)."""
  rng = np.random.default_rng(0)
  h, w = size
  return [{"image": rng.integers(1, 255, (h, w, 3), np.uint8),
           "mask": np.full((h, w), i, np.uint8),
           "scribbles": np.full((h, w), 255, np.uint8)} for i in range(n)]


def _block_source(n, size=(30, 40), seed=0):
  """Images of 5 x 5 constant blocks whose labels are a function of colour.

  Colours are never 0, so padding (image 0) is recognisable; block labels
  include 255 (unlabeled) and 254 (source padding).
  """
  rng = np.random.default_rng(seed)
  h, w = size
  colours = rng.integers(1, 255, (25, 3), np.uint8)
  table = np.array([0, 1, 2, 255, 254] * 5, np.uint8)
  examples = []
  for _ in range(n):
    blocks = rng.permutation(25).reshape(5, 5)
    rows = np.minimum(np.arange(h) * 5 // h, 4)
    cols = np.minimum(np.arange(w) * 5 // w, 4)
    ids = blocks[rows[:, None], cols[None, :]]
    examples.append({"image": colours[ids], "mask": table[ids],
                     "scribbles": table[(ids + 1) % 25]})
  return examples, colours, table


def _constant_interior(image):
  """``[B, H, W]`` bool: pixels whose 3 x 3 neighbourhood has their colour."""
  same = np.ones(image.shape[:3], bool)
  same[:, :1] = same[:, -1:] = same[:, :, :1] = same[:, :, -1:] = False
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      shifted = np.roll(image, (dy, dx), axis=(1, 2))
      same &= np.all(shifted == image, axis=-1)
  return same


def test_reads_a_tfds_folder_dataset(shared_data, tmp_path):
  from potts_jax.data.builders import folder_builder  # pylint: disable=g-import-not-at-top
  builder = folder_builder.prepare(shared_data / "grabcut", tmp_path,
                                   name="grabcut", scribble_set="set1")
  source = builder.as_data_source("train")
  batch = next(iter(pipeline.train_dataset(
      source, crop_size=64, batch_size=2, seed=0, worker_count=0)))
  assert batch["image"].shape == (2, 64, 64, 3)
  assert set(np.unique(batch["scribbles"])) <= {0, 1, 254, 255}


def test_crops_padding_and_label_values_on_grabcut(grabcut):
  # Short side 48 scaled to 32..64 < crop 80: every crop has padding.
  ds = pipeline.train_map_dataset(
      grabcut, crop_size=80, batch_size=3, seed=0, scale_range=(0.4, 0.8),
      process_index=0, process_count=1, num_epochs=1)
  assert len(ds) == 2
  batches = list(ds)
  for b in batches:
    assert b["image"].shape == (3, 80, 80, 3) and b["image"].dtype == np.float32
    assert b["mask"].shape == b["scribbles"].shape == (3, 80, 80)
    assert b["mask"].dtype == b["scribbles"].dtype == np.int32
    assert 0 <= b["image"].min() and b["image"].max() <= 255
    padding = np.all(b["image"] == 0, axis=-1)
    assert padding[:, -1, -1].all()  # Padding sits at the bottom-right.
    for key in ("mask", "scribbles"):
      np.testing.assert_array_equal(b[key] == PAD, padding)
  for key in ("mask", "scribbles"):
    source_values = set(np.unique(np.concatenate(
        [np.ravel(e[key]) for e in grabcut])).tolist())
    out_values = set(np.unique(
        np.concatenate([b[key] for b in batches])).tolist())
    assert out_values <= source_values | {PAD}
  assert 255 in set(np.unique(batches[0]["scribbles"]).tolist())


def test_labels_follow_pixels_through_flip_scale_and_crop():
  source, colours, table = _block_source(8)
  ds = pipeline.train_map_dataset(
      source, crop_size=48, batch_size=4, seed=3, scale_range=(0.5, 2.0),
      blur_prob=0.0, process_index=0, process_count=1, num_epochs=1)
  lookup = {tuple(c): i for i, c in enumerate(colours)}
  checked = 0
  for b in ds:
    image = b["image"].astype(np.uint8)
    padding = np.all(image == 0, axis=-1)
    for key, shift in (("mask", 0), ("scribbles", 1)):
      labels_ = b[key]
      # Padding added by the pipeline is 254; nowhere else does 254 or 255
      # appear except where the source block had it.
      assert np.all(labels_[padding] == PAD)
      interior = _constant_interior(image) & ~padding
      ids = np.array([lookup.get(tuple(c), -1) for c in image[interior]])
      assert np.all(ids >= 0)  # Interior colours are source colours.
      np.testing.assert_array_equal(labels_[interior],
                                    table[(ids + shift) % 25])
      checked += interior.sum()
  assert checked > 1000


def test_scales_lie_in_range():
  # Square 40 x 40 images scaled to s * 128 <= 128 fit in the crop entirely
  # (offset 0), so the unpadded extent reads back the scale.
  source = _index_source(24, size=(40, 40))
  ds = pipeline.train_map_dataset(
      source, crop_size=128, batch_size=24, seed=5, scale_range=(0.5, 1.0),
      process_index=0, process_count=1, num_epochs=1)
  mask = ds[0]["mask"]
  rows = (mask[:, :, 0] != PAD).sum(1)
  cols = (mask[:, 0, :] != PAD).sum(1)
  np.testing.assert_array_equal(rows, cols)
  assert np.all(rows >= 64) and np.all(rows <= 128)
  assert rows.min() < 80 and rows.max() > 110  # Spread over the range.
  with pytest.raises(ValueError, match="scale_range"):
    pipeline.train_map_dataset(source, crop_size=8, batch_size=1, seed=0,
                               scale_range=(0.0, 1.0), process_count=1,
                               process_index=0)


@pytest.mark.parametrize("n", [10, 11])
def test_epoch_visits_every_example_once_per_host(n):
  source = _index_source(n)
  seen = []
  for host in (0, 1):
    ds = pipeline.train_map_dataset(
        source, crop_size=16, batch_size=1, seed=7, scale_range=(1.0, 1.0),
        process_index=host, process_count=2, num_epochs=2)
    values = [int(b["mask"][0, 0, 0]) for b in ds]
    assert np.all(np.stack([b["mask"] for b in ds]) != PAD)
    per_epoch = len(pipeline.host_indices(n, host, 2))
    # Remainder: the first n % 2 hosts hold one example more.
    assert per_epoch == (n + 1 - host) // 2
    first, second = values[:per_epoch], values[per_epoch:]
    assert sorted(first) == sorted(second) == list(range(host, n, 2))
    assert first != second  # Reshuffled every epoch.
    seen.append(set(first))
  assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))


def test_iterator_state_resumes_identically(grabcut):
  kwargs = dict(crop_size=32, batch_size=2, seed=11, blur_prob=0.5,
                process_index=0, process_count=1)
  iterator = iter(pipeline.train_dataset(grabcut, **kwargs))
  for _ in range(4):  # Into the second epoch (3 batches per epoch).
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(4)]
  fresh = iter(pipeline.train_dataset(grabcut, **kwargs))
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for key in ("image", "mask", "scribbles"):
      np.testing.assert_array_equal(got[key], want[key])
  # The iterator gives the batches of the random-access dataset.
  reference = pipeline.train_map_dataset(grabcut, **kwargs)
  np.testing.assert_array_equal(expected[0]["image"], reference[4]["image"])


def test_worker_count_does_not_change_batches(grabcut):
  kwargs = dict(crop_size=32, batch_size=2, seed=2, blur_prob=0.5,
                process_index=0, process_count=1, num_epochs=2)
  serial = list(pipeline.train_dataset(grabcut, worker_count=0, **kwargs))
  parallel = list(pipeline.train_dataset(grabcut, worker_count=2, **kwargs))
  assert len(serial) == len(parallel) == 6
  for a, b in zip(serial, parallel):
    for key in ("image", "mask", "scribbles"):
      np.testing.assert_array_equal(a[key], b[key])


def test_eval_batches_pad_and_flag(grabcut):
  source = grabcut[:5]
  batches = list(eval_pipeline.eval_batches(source, batch_size=2, process_index=0,
                                       process_count=1))
  assert len(batches) == 3
  np.testing.assert_array_equal(batches[-1]["valid"], [True, False])
  assert list(batches[-1]["name"]) == [source[4]["name"].decode(), ""]
  for b, start in zip(batches, (0, 2, 4)):
    chunk = source[start:start + 2]
    h = max(e["image"].shape[0] for e in chunk)
    w = max(e["image"].shape[1] for e in chunk)
    assert b["image"].shape == (2, h, w, 3) and b["image"].dtype == np.float32
    assert b["mask"].shape == b["scribbles"].shape == (2, h, w)
    assert b["mask"].dtype == np.int32 and b["valid"].dtype == bool
    for i, e in enumerate(chunk):
      eh, ew = e["image"].shape[:2]
      np.testing.assert_array_equal(b["image"][i, :eh, :ew], e["image"])
      np.testing.assert_array_equal(b["mask"][i, :eh, :ew], e["mask"][..., 0])
      np.testing.assert_array_equal(b["scribbles"][i, :eh, :ew],
                                    e["scribbles"])
      for key in ("mask", "scribbles"):
        assert np.all(b[key][i, eh:] == PAD)
        assert np.all(b[key][i, :, ew:] == PAD)
      assert np.all(b["image"][i, eh:] == 0)
      assert np.all(b["image"][i, :, ew:] == 0)
      assert b["name"][i] == e["name"].decode()
  assert np.all(batches[-1]["mask"][1] == PAD)
  assert np.all(batches[-1]["image"][1] == 0)
  # Two hosts: disjoint, covering, the same number of batches, fixed size.
  hosts = [list(eval_pipeline.eval_batches(source, batch_size=2, process_index=p,
                                      process_count=2, pad_to=(48, 48)))
           for p in (0, 1)]
  assert len(hosts[0]) == len(hosts[1]) == 2
  names = [[n for b in h for n, v in zip(b["name"], b["valid"]) if v]
           for h in hosts]
  assert sorted(names[0] + names[1]) == sorted(e["name"].decode()
                                               for e in source)
  assert not set(names[0]) & set(names[1])
  assert all(b["image"].shape == (2, 48, 48, 3) for h in hosts for b in h)
  assert not hosts[1][1]["valid"].any()


def _sized_source(sizes, seed=0):
  """Random examples of the given ``(h, w)`` sizes, named by their index."""
  rng = np.random.default_rng(seed)
  return [{"image": rng.integers(0, 256, (h, w, 3), np.uint8),
           "mask": rng.integers(0, 3, (h, w), np.uint8),
           "scribbles": np.full((h, w), 255, np.uint8),
           "name": str(i)} for i, (h, w) in enumerate(sizes)]


SIZES = [(20, 30), (30, 20), (20, 30), (17, 17), (20, 30), (30, 20),
         (20, 30)]


def test_full_image_batches_group_by_shape_without_padding():
  source = _sized_source(SIZES)
  batches = list(eval_pipeline.full_image_batches(source, batch_size=2,
                                             process_index=0, process_count=1))
  # (20, 30): 0, 2 | 4, 6; (30, 20): 1, 5; (17, 17): 3 + a padding example.
  assert [list(b["name"]) for b in batches] == [
      ["0", "2"], ["4", "6"], ["1", "5"], ["3", ""]]
  for b in batches:
    names = [n for n, v in zip(b["name"], b["valid"]) if v]
    for i, n in enumerate(names):
      e = source[int(n)]
      assert b["image"].shape[1:3] == e["mask"].shape  # Nothing padded.
      np.testing.assert_array_equal(b["image"][i], e["image"])
      np.testing.assert_array_equal(b["mask"][i], e["mask"])
      np.testing.assert_array_equal(b["size"][i], e["mask"].shape)
  np.testing.assert_array_equal(batches[-1]["valid"], [True, False])
  np.testing.assert_array_equal(batches[-1]["size"][1], [0, 0])
  assert np.all(batches[-1]["mask"][1] == PAD)
  # Shapes given: the same batches.
  again = list(eval_pipeline.full_image_batches(
      source, batch_size=2, process_index=0, process_count=1,
      shapes=[e["mask"].shape for e in source]))
  assert [list(b["name"]) for b in again] == [list(b["name"]) for b in batches]
  with pytest.raises(ValueError, match="not the"):
    list(eval_pipeline.full_image_batches(source, batch_size=2, process_index=0,
                                     process_count=1, shapes=[(1, 1)] * 7))


def test_full_image_batches_agree_across_hosts():
  source = _sized_source(SIZES)
  hosts = [list(eval_pipeline.full_image_batches(source, batch_size=2,
                                            process_index=p, process_count=2))
           for p in (0, 1)]
  # Same number of batches, same shapes, in the same order on every host.
  assert [b["image"].shape for b in hosts[0]] == [
      b["image"].shape for b in hosts[1]]
  names = [[n for b in h for n, v in zip(b["name"], b["valid"]) if v]
           for h in hosts]
  assert sorted(names[0] + names[1], key=int) == [str(i) for i in range(7)]
  assert not set(names[0]) & set(names[1])


def _pil_resize(array, size, resample):
  h, w = size
  return np.asarray(Image.fromarray(array).resize((w, h), resample))


@pytest.mark.parametrize("size, resized, corner", [
    # (h, w) -> rloss's (oh, ow) = short side 32, long int(long * 32 / short);
    # corner (y1, x1) = int(round((side - 32) / 2)), half to even.
    ((37, 50), (32, 43), (0, 6)),    # round(5.5) = 6
    ((40, 47), (32, 37), (0, 2)),    # round(2.5) = 2
    ((50, 37), (43, 32), (6, 0)),
    ((21, 33), (32, 50), (0, 9)),    # upscaled
    ((64, 64), (32, 32), (0, 0)),    # downscaled
])
def test_fix_scale_crop_is_rlosss(size, resized, corner):
  e = _sized_source([size])[0]
  out = eval_pipeline.fix_scale_crop(e, 32)
  (y1, x1), (oh, ow) = corner, resized
  want_image = _pil_resize(e["image"], (oh, ow), Image.BILINEAR)
  want_mask = _pil_resize(e["mask"], (oh, ow), Image.NEAREST)
  np.testing.assert_array_equal(out["image"],
                                want_image[y1:y1 + 32, x1:x1 + 32])
  np.testing.assert_array_equal(out["mask"], want_mask[y1:y1 + 32, x1:x1 + 32])
  assert out["scribbles"].shape == (32, 32)
  batches = list(eval_pipeline.center_crop_batches(
      _sized_source([size, (20, 30)]), batch_size=4, crop_size=32,
      process_index=0, process_count=1))
  assert len(batches) == 1 and batches[0]["image"].shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(batches[0]["size"],
                                [[32, 32]] * 2 + [[0, 0]] * 2)
  np.testing.assert_array_equal(batches[0]["image"][0], out["image"])


def test_to_global_shards_the_batch_axis(grabcut):
  devices = jax.devices()
  assert len(devices) >= 4
  mesh = Mesh(np.array(devices[:4]), ("data",))
  batch = next(eval_pipeline.eval_batches(grabcut[:3], batch_size=4,
                                     process_index=0, process_count=1))
  out = pipeline.to_global(batch, mesh)
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  for key in ("image", "mask", "scribbles", "valid"):
    assert isinstance(out[key], jax.Array)
    assert out[key].shape == batch[key].shape  # One process: global = local.
    assert out[key].dtype == batch[key].dtype
    assert out[key].sharding.is_equivalent_to(sharding, out[key].ndim)
    assert len(out[key].addressable_shards) == 4
    for shard in out[key].addressable_shards:
      assert shard.data.shape[0] == 1
      np.testing.assert_array_equal(np.asarray(shard.data),
                                    batch[key][shard.index])
  assert out["name"] is batch["name"]


def test_augmentation_differs_between_epochs():
  source = _index_source(6)
  ds = pipeline.train_map_dataset(
      source, crop_size=16, batch_size=6, seed=1, scale_range=(1.0, 1.0),
      process_index=0, process_count=1, num_epochs=2)
  epochs = []
  for b in ds:
    order = np.argsort(b["mask"][:, 0, 0])
    epochs.append(b["image"][order])
  assert not np.array_equal(epochs[0], epochs[1])
  again = pipeline.train_map_dataset(
      source, crop_size=16, batch_size=6, seed=1, scale_range=(1.0, 1.0),
      process_index=0, process_count=1, num_epochs=2)
  np.testing.assert_array_equal(again[1]["image"], ds[1]["image"])
