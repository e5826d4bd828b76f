"""Tests of potts_jax.data.scribbles and .synthetic_scribbles."""

import dataclasses

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from potts_jax.data import scribbles
from potts_jax.data import scribblesup
from potts_jax.data import synthetic_scribbles
_XML = """<?xml version="1.0"?>
<annotation>
  <filename>toy.jpg</filename>
  <polygon><tag>background</tag>
    <point><X>1</X><Y>2</Y></point><point><X>30</X><Y>2</Y></point>
    <point><X>30</X><Y>20</Y></point>
  </polygon>
  <polygon><tag>person</tag>
    <point><X>12.5</X><Y>7</Y></point><point><X>14</X><Y>9</Y></point>
  </polygon>
  <polygon><tag>monitor</tag><point><X>5</X><Y>15</Y></point></polygon>
</annotation>
"""


def _cells(rows, cols):
  return {(r, c) for r in rows for c in cols}


def _labeled(array, value):
  return set(map(tuple, np.argwhere(array == value).tolist()))


def test_class_table():
  assert len(scribblesup.TAGS) == 21
  assert scribblesup.TAGS[0] == "background"
  assert scribblesup.TAGS.index("person") == 15
  assert scribblesup.TAGS[20] == "monitor"


def test_parse_xml_text_and_path(tmp_path):
  strokes = scribblesup.parse_xml(_XML)
  assert [s.label for s in strokes] == [0, 15, 20]
  np.testing.assert_array_equal(strokes[0].points, [[1, 2], [30, 2], [30, 20]])
  np.testing.assert_array_equal(strokes[1].points, [[12.5, 7], [14, 9]])
  assert strokes[2].points.shape == (1, 2)
  assert strokes[0].points.dtype == np.float64
  path = tmp_path / "toy.xml"
  path.write_text(_XML)
  assert scribblesup.parse_xml(path) == strokes
  assert scribblesup.parse_xml(str(path)) == strokes
  with pytest.raises(dataclasses.FrozenInstanceError):
    strokes[0].label = 3


def test_xml_errors_name_tag_and_file(tmp_path):
  bad_tag = tmp_path / "bad_tag.xml"
  bad_tag.write_text(_XML.replace("person", "aeroplane"))
  with pytest.raises(ValueError, match="aeroplane") as info:
    scribblesup.parse_xml(bad_tag)
  assert "bad_tag.xml" in str(info.value) and "plane" in str(info.value)
  assert "monitor" in str(info.value)  # The valid tags are listed.
  broken = tmp_path / "broken.xml"
  broken.write_text(_XML[:-30])
  with pytest.raises(ValueError, match="broken.xml"):
    scribblesup.parse_xml(broken)
  with pytest.raises(ValueError, match="malformed"):
    scribblesup.parse_xml("<annotation><polygon>")


def test_rasterize_lines_clicks_and_thickness():
  strokes = [
      scribbles.Stroke(1, [[2, 5], [10, 5]]),  # Horizontal, row 5.
      scribbles.Stroke(2, [[15, 1], [15, 9]]),  # Vertical, column 15.
      scribbles.Stroke(3, [[20, 20]]),  # A click.
  ]
  out = scribbles.rasterize(strokes, 25, 30)
  assert out.shape == (25, 30) and out.dtype == np.uint8
  assert _labeled(out, 1) == _cells(range(4, 7), range(2, 11))
  assert _labeled(out, 2) == _cells(range(1, 10), range(14, 17))
  assert _labeled(out, 3) == _cells(range(19, 22), range(19, 22))
  assert (out != 255).sum() == 27 + 27 + 9  # 255 everywhere else.
  thin = scribbles.rasterize(strokes, 25, 30, thickness=1)
  assert _labeled(thin, 1) == _cells([5], range(2, 11))
  assert _labeled(thin, 3) == {(20, 20)}
  wide = scribbles.rasterize(strokes, 25, 30, thickness=5)
  assert _labeled(wide, 1) == _cells(range(3, 8), range(2, 11))
  assert _labeled(wide, 3) == _cells(range(18, 23), range(18, 23))


def test_rasterize_overwrites_in_order_and_clips():
  across = [scribbles.Stroke(1, [[0, 5], [10, 5]]),
            scribbles.Stroke(2, [[5, 0], [5, 10]])]
  out = scribbles.rasterize(across, 11, 11)
  assert out[5, 5] == 2 and out[5, 0] == 1
  out = scribbles.rasterize(across[::-1], 11, 11)
  assert out[5, 5] == 1 and out[0, 5] == 2
  outside = [scribbles.Stroke(4, [[-5, 2], [3, 2]]),
             scribbles.Stroke(4, [[100, 100], [200, 100]])]
  out = scribbles.rasterize(outside, 8, 8)
  assert _labeled(out, 4) == _cells(range(1, 4), range(0, 4))


@pytest.mark.parametrize("name", ["2007_000032", "2007_000033"])
def test_real_scribblesup_round_trip(shared_data, tmp_path, name):
  # Strokes from the PNG: per class and 8-connected component, the skeleton
  # split into polylines (scribbles.strokes_from_raster); then XML, parse,
  # rasterise 3 px wide and compare on the PNG's labeled pixels.
  png = np.array(Image.open(
      shared_data / "voc_scribblesup" / "scribbles" / f"{name}.png"))
  strokes = scribbles.strokes_from_raster(png)
  path = tmp_path / f"{name}.xml"
  path.write_text(scribblesup.to_xml(
      strokes, filename=f"{name}.jpg", height=png.shape[0],
      width=png.shape[1]))
  parsed = scribblesup.parse_xml(path)
  assert parsed == strokes
  out = scribbles.rasterize(parsed, *png.shape, thickness=3)
  labeled = png != 255
  agreement = float(np.mean(out[labeled] == png[labeled]))
  extra = float(np.mean(out[~labeled] != 255))
  print(f"{name}: agreement {agreement:.4f} on {labeled.sum()} labeled "
        f"pixels, {extra:.5f} of unlabeled pixels drawn")
  assert agreement >= 0.9
  assert set(np.unique(out)) == set(np.unique(png))
  assert extra < 0.005


def _bent():
  return scribbles.Stroke(7, [[0, 0], [10, 0], [10, 10], [20, 10]])


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_shorten_keeps_arc_length_around_midpoint(fraction):
  stroke = _bent()
  assert stroke.length == 30
  short = scribbles.shorten(stroke, fraction)
  assert short.label == 7
  assert abs(short.length - fraction * 30) <= 0.05 * fraction * 30
  # Centred: the midpoint of the kept part is the stroke's midpoint (10, 5).
  half = scribbles.shorten(short, 0.0)
  np.testing.assert_allclose(half.points, [[10, 5]])
  # Every kept point lies on the original polyline (x == 10 or y in {0, 10}).
  x, y = short.points.T
  assert np.all((np.isclose(x, 10)) | np.isclose(y, 0) | np.isclose(y, 10))
  assert scribbles.shorten(stroke, fraction) == short  # Deterministic.


def test_shorten_ends():
  stroke = _bent()
  click = scribbles.shorten(stroke, 0.0)
  np.testing.assert_allclose(click.points, [[10, 5]])
  assert scribbles.shorten(stroke, 1.0) == stroke
  dot = scribbles.Stroke(1, [[3, 4]])
  assert scribbles.shorten(dot, 0.5) == dot
  with pytest.raises(ValueError):
    scribbles.shorten(stroke, 1.5)


def _random_mask(shape, classes, seed):
  rng = np.random.default_rng(seed)
  small = rng.integers(0, classes, (shape[0] // 16, shape[1] // 16))
  return np.kron(small, np.ones((16, 16), np.int64)).astype(np.uint8)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_block_scribbles_fraction_and_labels(fraction):
  mask = _random_mask((256, 256), 5, 0)
  out = synthetic_scribbles.block_scribbles(mask, fraction, block=32, seed=1)
  assert out.shape == mask.shape and out.dtype == np.uint8
  kept = out != 255
  assert abs(kept.mean() - fraction) <= 1 / 64  # One 32x32 tile of 64.
  np.testing.assert_array_equal(out[kept], mask[kept])
  # Kept pixels are whole tiles.
  tiles = kept.reshape(8, 32, 8, 32).mean(axis=(1, 3))
  assert set(np.unique(tiles)) <= {0.0, 1.0}
  again = synthetic_scribbles.block_scribbles(mask, fraction, block=32, seed=1)
  np.testing.assert_array_equal(out, again)
  other = synthetic_scribbles.block_scribbles(mask, fraction, block=32, seed=2)
  assert not np.array_equal(out, other)


def test_block_scribbles_keep_ignore_and_padding():
  mask = _random_mask((256, 256), 5, 3)
  mask[:, 200:] = 254
  mask[10:20, 10:20] = 255
  out = synthetic_scribbles.block_scribbles(mask, 1.0, block=32, seed=0)
  np.testing.assert_array_equal(out, mask)
  out = synthetic_scribbles.block_scribbles(mask, 0.2, block=32, seed=0)
  assert np.all(out[:, 200:] == 254) and np.all(out[10:20, 10:20] == 255)
  assert not np.any(out[:, :200] == 254)
  assert abs(synthetic_scribbles.labeled_fraction(out, mask) - 0.2) < 0.03


def _real_masks(shared_data):
  files = sorted((shared_data / "camvid" / "masks" / "train").glob("*.png"))
  files = files[:4] + sorted((shared_data / "grabcut" / "masks").glob("*.png"))[:2]
  assert len(files) == 6
  return [(f.name, np.array(Image.open(f))) for f in files]


def test_skeleton_scribbles_on_real_masks(shared_data):
  fractions = {}
  for name, mask in _real_masks(shared_data):
    out = synthetic_scribbles.skeleton_scribbles(mask, seed=0, min_area=50)
    assert out.shape == mask.shape and out.dtype == np.uint8
    labeled = out != 255
    assert np.all(out[labeled] == mask[labeled])  # Never contradicts.
    assert not np.any(labeled & ((mask == 255) | (mask == 254)))
    fraction = synthetic_scribbles.labeled_fraction(out, mask)
    fractions[name] = round(fraction, 4)
    assert 0.01 <= fraction <= 0.06
    for label in np.unique(mask):
      if label >= 254:
        continue
      regions, count = ndimage.label(mask == label, structure=np.ones((3, 3)))
      sizes = np.bincount(regions.ravel())
      for index in range(1, count + 1):
        if sizes[index] >= 50:
          assert labeled[regions == index].any(), (name, label, index)
    np.testing.assert_array_equal(
        out, synthetic_scribbles.skeleton_scribbles(mask, seed=0, min_area=50))
  print("labeled fractions:", fractions)


def test_skeleton_scribbles_seed_padding_and_tiny_regions():
  mask = np.zeros((64, 64), np.uint8)
  mask[:, 32:] = 1
  mask[5:8, 5:8] = 2  # 9 pixels: below min_area.
  mask[50:, :] = 254
  mask[40:45, 40:45] = 255
  outs = [synthetic_scribbles.skeleton_scribbles(
      mask, seed=s, min_area=20, max_fraction=0.03) for s in (0, 1)]
  for out in outs:
    assert not np.any(out == 2)
    assert set(np.unique(out)) == {0, 1, 255}
    labeled = out != 255
    assert np.all(out[labeled] == mask[labeled])
    assert synthetic_scribbles.labeled_fraction(out, mask) <= 0.035
  assert not np.array_equal(outs[0], outs[1])


def test_labeled_fraction():
  mask = np.array([[0, 1, 255, 254]], np.uint8)
  labeled_fraction = synthetic_scribbles.labeled_fraction
  assert labeled_fraction(np.array([[0, 255, 255, 254]]), mask) == 0.5
  assert labeled_fraction(mask, np.full((1, 4), 255)) == 0.0
