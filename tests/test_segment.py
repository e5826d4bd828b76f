"""Tests of the scribbles-to-mask command (potts_jax.tools.segment) on GrabCut."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from potts_jax.tools import segment
from potts_jax.tools import segment_benchmark as bench
from potts_jax.tools import segment_report as report
from potts_jax import solver
from potts_jax.data import folder
ROOT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "grabcut"
REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not ROOT.is_dir(), reason="no GrabCut data")


def _write_example(tmp_path, name="124084", long_side=96, extra_class=False):
  """A downscaled GrabCut photo and its set-1 scribbles as files."""
  ex = folder.load_example(ROOT, name, scribble_set="set1", long_side=long_side)
  scribbles = ex.scribbles.copy()
  if extra_class:  # background strokes in the right half become class 2.
    w = scribbles.shape[1]
    right = np.zeros_like(scribbles, bool)
    right[:, w // 2:] = True
    scribbles[(scribbles == 0) & right] = 2
    assert set(np.unique(scribbles)) == {0, 1, 2, 255}
  image_path, scribble_path = tmp_path / "photo.png", tmp_path / "scrib.png"
  Image.fromarray(ex.image.astype(np.uint8)).save(image_path)
  Image.fromarray(scribbles.astype(np.uint8), "L").save(scribble_path)
  return image_path, scribble_path, scribbles


def _run_cli(*args, module="potts_jax.tools.segment"):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # conftest's fake devices are not needed here.
  return subprocess.run([sys.executable, "-m", module, *args],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=120)


def test_cli_respects_every_scribble_and_three_classes(tmp_path):
  image, scrib, scribbles = _write_example(tmp_path, extra_class=True)
  out = tmp_path / "out" / "mask.png"
  proc = _run_cli("--image", str(image), "--scribbles", str(scrib),
                  "--out", str(out), "--num_steps", "60")
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  mask = np.asarray(Image.open(out), np.int32)
  assert mask.shape == scribbles.shape
  labeled = scribbles != 255
  np.testing.assert_array_equal(mask[labeled], scribbles[labeled])
  assert set(np.unique(mask).tolist()) == {0, 1, 2}
  assert report["num_classes"] == 3 and np.isfinite(report["energy"])
  soft = np.asarray(Image.open(tmp_path / "out" / "mask_soft.png"))
  assert soft.shape == scribbles.shape + (3,)


@pytest.mark.parametrize("unary", segment.UNARIES)
def test_segment_function_every_unary(tmp_path, unary):
  image, scrib, _ = _write_example(tmp_path, long_side=64)
  img = segment.read_image(str(image))
  scribbles, k = segment.read_scribbles(str(scrib), img.shape[:2])
  y, mask, e, _ = segment.segment(img, scribbles, k, unary=unary,
                                  num_steps=30)
  labeled = scribbles != 255
  np.testing.assert_array_equal(mask[labeled], scribbles[labeled])
  np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
  assert k == 2 and np.isfinite(e)


def test_histogram_logits_are_normalised_log_likelihoods():
  rng = np.random.default_rng(0)
  image = rng.uniform(0, 255, (20, 30, 3)).astype(np.float32)
  scribbles = np.full((20, 30), 255, np.int32)
  scribbles[:5] = 0
  scribbles[-5:] = 1
  logits = segment.histogram_logits(image, scribbles, 2, bins=4, blur=0.0)
  # Every pixel of a bin gets that bin's ln p; summing p over all 4³ bins = 1.
  grid = np.stack(np.meshgrid(*[np.arange(4) * 64 + 1] * 3, indexing="ij"),
                  -1).reshape(1, 64, 3).astype(np.float32)
  per_bin = segment.histogram_logits(
      np.concatenate([grid, image.reshape(1, -1, 3)], 1),
      np.concatenate([np.full((1, 64), 255), scribbles.reshape(1, -1)], 1),
      2, bins=4, blur=0.0)
  np.testing.assert_allclose(np.exp(per_bin[0, :64]).sum(0), 1.0, rtol=1e-5)
  assert logits.shape == (20, 30, 2)


def test_bad_scribble_size(tmp_path):
  image, _, _ = _write_example(tmp_path, long_side=64)
  bad = tmp_path / "small.png"
  Image.fromarray(np.zeros((10, 12), np.uint8), "L").save(bad)
  with pytest.raises(ValueError, match=r"small\.png.*size 12x10.*differs"):
    segment.read_scribbles(str(bad), segment.read_image(str(image)).shape[:2])


def test_no_scribble_at_all(tmp_path):
  bad = tmp_path / "empty.png"
  Image.fromarray(np.full((10, 12), 255, np.uint8), "L").save(bad)
  with pytest.raises(ValueError, match=r"empty\.png.*no scribble at all"):
    segment.read_scribbles(str(bad), (10, 12))


def test_values_outside_the_encoding(tmp_path):
  bad = tmp_path / "values.png"
  arr = np.full((10, 12), 255, np.uint8)
  arr[0, :3] = (0, 1, 128)
  Image.fromarray(arr, "L").save(bad)
  with pytest.raises(ValueError, match=r"values\.png.*\[128\].*outside"):
    segment.read_scribbles(str(bad), (10, 12))
  with pytest.raises(ValueError, match=r"values\.png.*\[1, 128\].*0\.\.0"):
    segment.read_scribbles(str(bad), (10, 12), num_classes=1)
  rgb = tmp_path / "rgb.png"
  Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(rgb)
  with pytest.raises(ValueError, match=r"rgb\.png.*single-channel"):
    segment.read_scribbles(str(rgb), (10, 12))
  gap = tmp_path / "gap.png"
  arr[0, :3] = (0, 2, 255)
  Image.fromarray(arr, "L").save(gap)
  with pytest.raises(ValueError, match=r"gap\.png.*classes \[1\]"):
    segment.read_scribbles(str(gap), (10, 12))


def test_cli_bad_input_exits_with_message(tmp_path):
  image, _, _ = _write_example(tmp_path, long_side=64)
  bad = tmp_path / "empty.png"
  h, w = segment.read_image(str(image)).shape[:2]
  Image.fromarray(np.full((h, w), 255, np.uint8), "L").save(bad)
  proc = _run_cli("--image", str(image), "--scribbles", str(bad))
  assert proc.returncode != 0
  assert "empty.png" in proc.stderr and "no scribble at all" in proc.stderr
  assert "Traceback" not in proc.stderr


def _small_copy(tmp_path, names, long_side=120):
  """A GrabCut-layout copy of ``names`` (set 1) at ``long_side`` pixels."""
  data = tmp_path / "grabcut"
  for sub in ("images", "masks", "scribbles/set1"):
    (data / sub).mkdir(parents=True)
  for name in names:
    ex = folder.load_example(ROOT, name, scribble_set="set1",
                             long_side=long_side)
    Image.fromarray(ex.image.astype(np.uint8)).save(data / "images" / f"{name}.png")
    for sub, arr in (("masks", ex.mask), ("scribbles/set1", ex.scribbles)):
      Image.fromarray(arr.astype(np.uint8), "L").save(data / sub / f"{name}.png")
  return data


def test_benchmark_table_matches_numpy(tmp_path):
  names = folder.names(ROOT)[:3]  # 106024 is a tuning photo, the others not.
  assert names[0] in bench.TUNING_NAMES and names[1] not in bench.TUNING_NAMES
  data = _small_copy(tmp_path, names)  # full resolution here is 120 px.
  table, jsonl = tmp_path / "table.md", tmp_path / "rows.jsonl"
  rows = bench.benchmark(str(data), "set1", max_size=80, num_steps=40,
                         exclude=[names[2]], mask_dir=str(tmp_path / "masks"),
                         table=str(table), jsonl=str(jsonl))
  names = names[:2]
  text = table.read_text()
  assert len(rows) == 2 * len(bench.METHODS)
  meta, read_back = report.read_jsonl(jsonl)
  assert read_back == rows and meta["options"] == dict(segment.DEFAULTS, num_steps=40)
  assert meta["cpu_count"] == os.cpu_count() and meta["jax"]
  for method in bench.METHODS:
    errors = []
    for name in names:
      pred = np.asarray(Image.open(tmp_path / "masks" / method / f"{name}.png"))
      truth = np.asarray(Image.open(data / "masks" / f"{name}.png"))
      assert pred.shape == truth.shape  # upsampled to the mask's size.
      keep = truth != 255
      errors.append(100.0 * np.count_nonzero(pred[keep] != truth[keep])
                    / np.count_nonzero(keep))
      row = next(r for r in rows if r["name"] == name and r["method"] == method)
      assert row["error"] == pytest.approx(errors[-1], abs=1e-3)
      assert row["heldout"] == (name != names[0])
    assert f"| set1 | all (2) | {method} | **{np.mean(errors):.2f}** |" in text
    assert f"| set1 | held-out (1) | {method} | **{errors[1]:.2f}** |" in text
  assert f"| {names[0]}\\* |" in text and f"| {names[1]} |" in text
  # The RESULTS block is generated from the JSON lines, between the markers.
  results = tmp_path / "RESULTS.md"
  results.write_text(f"# R\n{report.BEGIN}\nold\n{report.END}\ntail\n")
  report.update_results(results, [jsonl])
  out = results.read_text()
  assert "old" not in out and out.endswith(f"{report.END}\ntail\n")
  assert report.summary_table(rows) in out and "<details>" in out
  assert f"jax {meta['jax']}" in out


def test_tuning_split_is_every_fourth_photo():
  names = sorted(folder.names(ROOT))
  assert len(names) == 50
  assert bench.TUNING_NAMES == tuple(names[::4])
  assert len(bench.heldout_names(names)) == 37


def test_names_and_exclude(tmp_path):
  listing = tmp_path / "names.txt"
  listing.write_text("# two photos\nbook\n\nteddy  # a comment\n")
  assert bench.read_names(str(listing)) == ["book", "teddy"]
  assert bench.read_names("tuning") == list(bench.TUNING_NAMES)
  assert bench.select_names(["a", "book", "teddy"], ["teddy", "book"],
                            ["book"]) == ["teddy"]
  with pytest.raises(ValueError, match=r"names: \['nope'\] are not images"):
    bench.select_names(["a", "b"], ["a", "nope"])
  with pytest.raises(ValueError, match=r"exclude: \['x'\]"):
    bench.select_names(["a", "b"], None, ["x"])
  with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
    bench.read_names(str(tmp_path / "missing.txt"))
  empty = tmp_path / "empty.txt"
  empty.write_text("# nothing\n")
  with pytest.raises(ValueError, match=r"empty\.txt lists no image name"):
    bench.read_names(str(empty))


def test_cli_benchmark_heldout_names(tmp_path):
  names = folder.names(ROOT)[:2]
  data = _small_copy(tmp_path, names, long_side=64)
  jsonl = tmp_path / "rows.jsonl"
  proc = _run_cli("run", "--root", str(data), "--names", "heldout",
                  "--methods", "graphcut", "--jsonl", str(jsonl),
                  module="potts_jax.tools.segment_benchmark")
  assert proc.returncode == 0, proc.stderr[-2000:]
  _, rows = report.read_jsonl(jsonl)
  assert [r["name"] for r in rows] == [names[1]]  # names[0] is tuning.
  proc = _run_cli("run", "--root", str(data), "--names", "nope.txt",
                  module="potts_jax.tools.segment_benchmark")
  assert proc.returncode != 0 and "nope.txt not found" in proc.stderr


DENSE = dict(neighborhood="dense", relaxation="bl", lam=0.05, num_steps=20,
             unary="gaussian")


@pytest.mark.slow
def test_sigma_xy_reaches_the_solver(tmp_path):
  image, scrib, _ = _write_example(tmp_path, long_side=48)
  img = segment.read_image(str(image))
  scribbles, k = segment.read_scribbles(str(scrib), img.shape[:2])
  y3, _, e3, logits = segment.segment(img, scribbles, k, sigma_xy=3.0, **DENSE)
  y100, _, e100, _ = segment.segment(img, scribbles, k, **DENSE)
  energy, opts = segment.solver_objects(
      dict(segment.DEFAULTS, sigma_xy=3.0, **DENSE))
  assert energy.sigma_xy == 3.0
  want = solver.solve(logits[None], img[None], scribbles[None], energy,
                      opts)[0]
  np.testing.assert_allclose(y3, want, atol=1e-5)
  assert abs(e3 - e100) > 1e-3 * abs(e100)  # σ_xy changes the problem.
  proc = _run_cli("--image", str(image), "--scribbles", str(scrib),
                  "--out", str(tmp_path / "m.png"), "--sigma_xy", "3",
                  *[f"--{k}={v}" for k, v in DENSE.items()])
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["sigma_xy"] == 3.0 and report["neighborhood"] == "dense"
  assert report["energy"] == pytest.approx(e3, rel=1e-4)
  assert abs(report["energy"] - e100) > 1e-3 * abs(e100)


def test_import_defines_no_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  assert not {"image", "scribbles", "benchmark", "unary"} & set(flags.FLAGS)
