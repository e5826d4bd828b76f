"""Tests of potts_jax.data.builders.voc_builder (the TFDS ``voc_scribble`` builder).

A miniature VOC tree is built in a temporary folder from the real files of
``shared/data/voc_scribblesup`` (2007_000032 in train_aug, 2007_000033 in
val) plus ``hand``, a copy of 2007_000033 with a hand-written XML. The XMLs
of the real ids are written from the real ScribbleSup PNGs' strokes.
Expected values are computed here, independently of the builder: XML parsed
with ElementTree, arc lengths and windows with numpy.
"""

import pathlib
import shutil
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
import tensorflow_datasets as tfds

from potts_jax.data import scribbles
from potts_jax.data import scribblesup
from potts_jax.data.builders import voc_builder
REAL = ("2007_000032", "2007_000033")
HAND = "hand"
# Long disjoint strokes in a 500x366 image: (tag, class id, points).
HAND_STROKES = (
    ("background", 0, [(20, 20), (220, 20), (220, 120)]),
    ("plane", 1, [(50, 200), (300, 250)]),
    ("person", 15, [(400, 50), (450, 100), (400, 150), (450, 200),
                    (400, 250)]),
    ("monitor", 20, [(480, 340)]),
)
HAND_XML = "<annotation><filename>hand.jpg</filename>" + "".join(
    f"<polygon><tag>{tag}</tag>" + "".join(
        f"<point><X>{x}</X><Y>{y}</Y></point>" for x, y in points)
    + "</polygon>" for tag, _, points in HAND_STROKES) + "</annotation>"
CONFIGS = ("xml", "xml_len0", "xml_len0.3", "xml_len0.5", "xml_len0.8", "png")


def _pil(path) -> np.ndarray:
  with Image.open(path) as image:
    return np.asarray(image)


def _build_tree(shared_data: pathlib.Path, root: pathlib.Path,
                hand: bool = True) -> pathlib.Path:
  """The miniature VOC layout of the module docstring under ``root``."""
  src = shared_data / "voc_scribblesup"
  voc = root / "VOCdevkit" / "VOC2012"
  dirs = [voc / "JPEGImages", voc / "SegmentationClassAug",
          voc / "ImageSets" / "Segmentation", root / "pascal_2012_scribble"]
  for d in dirs:
    d.mkdir(parents=True)
  images, masks, lists, strokes_dir = dirs
  for name in REAL:
    shutil.copy(src / "images" / f"{name}.jpg", images / f"{name}.jpg")
    shutil.copy(src / "masks" / f"{name}.png", masks / f"{name}.png")
    shutil.copy(src / "scribbles" / f"{name}.png", strokes_dir / f"{name}.png")
    png = _pil(src / "scribbles" / f"{name}.png")
    (strokes_dir / f"{name}.xml").write_text(scribblesup.to_xml(
        scribbles.strokes_from_raster(png), filename=f"{name}.jpg",
        height=png.shape[0], width=png.shape[1]))
  (lists / "train_aug.txt").write_text(f"{REAL[0]}\n")
  val = [REAL[1]]
  if hand:
    shutil.copy(src / "images" / f"{REAL[1]}.jpg", images / f"{HAND}.jpg")
    shutil.copy(src / "masks" / f"{REAL[1]}.png", masks / f"{HAND}.png")
    (strokes_dir / f"{HAND}.xml").write_text(HAND_XML)
    raster = scribbles.rasterize(scribblesup.parse_xml(HAND_XML),
                                 366, 500)
    Image.fromarray(raster).save(strokes_dir / f"{HAND}.png")
    val.append(HAND)
  (lists / "val.txt").write_text("\n".join(val) + "\n")
  return root


@pytest.fixture(scope="module")
def tree(shared_data, tmp_path_factory) -> pathlib.Path:
  return _build_tree(shared_data, tmp_path_factory.mktemp("voc") / "root")


@pytest.fixture(scope="module")
def prepared(tree, tmp_path_factory) -> pathlib.Path:
  """A data_dir with every predefined config prepared from ``tree``."""
  data_dir = tmp_path_factory.mktemp("tfds")
  for config in CONFIGS:
    voc_builder.prepare(tree, data_dir, config=config)
  return data_dir


def _examples(data_dir, config, **kwargs) -> dict[str, dict]:
  out = {}
  for source in voc_builder.load(data_dir, config, **kwargs).values():
    for i in range(len(source)):
      out[source[i]["name"].decode()] = source[i]
  return out


def _xml_polylines(path: pathlib.Path) -> list[tuple[int, np.ndarray]]:
  """``(class id, [N, 2] (x, y))`` per ``<polygon>``, parsed here."""
  tags = {t: i for i, t in enumerate(scribblesup.TAGS)}
  return [(tags[p.findtext("tag").strip()],
           np.array([(float(q.findtext("X")), float(q.findtext("Y")))
                     for q in p.iter("point")]))
          for p in ET.parse(path).getroot().iter("polygon")]


def _arc(points: np.ndarray) -> np.ndarray:
  return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(points, axis=0).T))])


def _project(pixels_xy: np.ndarray, points: np.ndarray) -> np.ndarray:
  """Arc length of the nearest polyline point of each ``(x, y)``."""
  if len(points) == 1:
    return np.zeros(len(pixels_xy))
  cum = _arc(points)
  best = np.full(len(pixels_xy), np.inf)
  where = np.zeros(len(pixels_xy))
  for a, b, s0 in zip(points[:-1], points[1:], cum[:-1]):
    d = b - a
    t = np.clip(((pixels_xy - a) @ d) / (d @ d), 0.0, 1.0)
    dist = np.linalg.norm(pixels_xy - (a + t[:, None] * d), axis=1)
    closer = dist < best
    best[closer], where[closer] = dist[closer], s0 + t[closer] * np.sqrt(d @ d)
  return where


def _distance(pixels_xy: np.ndarray, points: np.ndarray) -> np.ndarray:
  if len(points) == 1:
    return np.linalg.norm(pixels_xy - points[0], axis=1)
  out = np.full(len(pixels_xy), np.inf)
  for a, b in zip(points[:-1], points[1:]):
    d = b - a
    t = np.clip(((pixels_xy - a) @ d) / (d @ d), 0.0, 1.0)
    out = np.minimum(out, np.linalg.norm(pixels_xy - (a + t[:, None] * d),
                                         axis=1))
  return out


def _labeled_xy(raster: np.ndarray, label: int) -> np.ndarray:
  return np.argwhere(raster == label)[:, ::-1].astype(np.float64)


def test_configs_and_metadata(prepared):
  assert [c.name for c in voc_builder.VocScribble.BUILDER_CONFIGS] == list(
      CONFIGS)
  for config in CONFIGS:
    builder = voc_builder.VocScribble(config=config, data_dir=str(prepared))
    meta = builder.info.metadata
    assert meta["num_classes"] == 21 and len(meta["classes"]) == 21
    assert meta["classes"][1] == "aeroplane" and meta["classes"][20] == (
        "tvmonitor")
    assert meta["scribblesup_tags"] == list(scribblesup.TAGS)
    expected = (None if config == "png" else
                float(config[len("xml_len"):]) if "len" in config else 1.0)
    assert meta["scribbles"] == ("png" if config == "png" else "xml")
    assert meta["fraction"] == expected
    assert set(builder.info.splits) == {"train_aug", "val"}
  assert "JPEGImages/<id>.jpg" in voc_builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert "10,581" in voc_builder.__doc__ and "10,582" in voc_builder.__doc__
  # Registered: tfds.data_source finds it; nothing imported TensorFlow.
  assert len(tfds.data_source("voc_scribble/png", data_dir=str(prepared),
                              split="val")) == 2
  assert not [m for m in sys.modules if m.split(".")[0] == "tensorflow"]


@pytest.mark.parametrize("config", ["xml", "png"])
def test_round_trip_is_byte_identical(prepared, tree, config):
  voc = tree / "VOCdevkit" / "VOC2012"
  sources = voc_builder.load(prepared, config)
  raw = voc_builder.load(prepared, config,
                         decoders={"image": tfds.decode.SkipDecoding()})
  for split, names in (("train_aug", [REAL[0]]), ("val", [REAL[1], HAND])):
    assert len(sources[split]) == len(names)
    for i, name in enumerate(names):  # The order of the list.
      example = sources[split][i]
      assert example["name"].decode() == name
      image_path = voc / "JPEGImages" / f"{name}.jpg"
      assert raw[split][i]["image"] == image_path.read_bytes()
      assert example["image"].shape == _pil(image_path).shape
      np.testing.assert_array_equal(
          example["mask"][..., 0],
          _pil(voc / "SegmentationClassAug" / f"{name}.png"))
      if config == "png":
        np.testing.assert_array_equal(
            example["scribbles"][..., 0],
            _pil(tree / "pascal_2012_scribble" / f"{name}.png"))


def test_xml_scribbles_agree_with_real_pngs(prepared, shared_data):
  examples = _examples(prepared, "xml")
  for name in REAL:
    png = _pil(shared_data / "voc_scribblesup" / "scribbles" / f"{name}.png")
    out = examples[name]["scribbles"][..., 0]
    labeled = png != 255
    agreement = float(np.mean(out[labeled] == png[labeled]))
    extra = float(np.mean(out[~labeled] != 255))
    print(f"{name}: XML raster agrees with the real PNG on {agreement:.2%} "
          f"of {labeled.sum()} labeled pixels; {extra:.4%} extra")
    assert agreement >= 0.9 and extra < 0.005
    assert set(np.unique(out)) == set(np.unique(png))


def test_hand_written_xml(prepared, tree):
  out = _examples(prepared, "xml")[HAND]["scribbles"][..., 0]
  polylines = _xml_polylines(tree / "pascal_2012_scribble" / f"{HAND}.xml")
  assert [c for c, _ in polylines] == [c for _, c, _ in HAND_STROKES]
  assert set(np.unique(out)) == {0, 1, 15, 20, 255}
  for label, points in polylines:
    pixels = _labeled_xy(out, label)
    # 3 px wide: every pixel within 1.5 px (+ rounding) of its polyline, and
    # 2-4 pixels per pixel of arc length (PIL's 3-px lines measure 2.2 on
    # the shallow plane line, 3.5 on the 45-degree person zigzag).
    assert _distance(pixels, points).max() <= 2.0
    for x, y in points:
      assert out[int(y), int(x)] == label
    if len(points) == 1:  # The click: a 3x3 dot.
      x, y = points[0].astype(int)
      assert set(map(tuple, pixels.astype(int).tolist())) == {
          (x + dx, y + dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
    else:
      assert 2.0 <= len(pixels) / _arc(points)[-1] <= 4.0


def _shorten_here(points: np.ndarray, fraction: float) -> np.ndarray:
  """The kept window ``[(1-f) L/2, (1+f) L/2]``, computed independently."""
  cum = _arc(points)
  total = cum[-1]
  lo, hi = (1 - fraction) * total / 2, (1 + fraction) * total / 2
  at = lambda s: np.array([np.interp(s, cum, points[:, 0]),
                           np.interp(s, cum, points[:, 1])])
  if total == 0 or lo == hi:
    return at(lo)[None] if total else points[:1]
  inner = points[(cum > lo) & (cum < hi)]
  return np.concatenate([at(lo)[None], inner, at(hi)[None]])


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_shortened_scribbles_have_the_length_fraction(prepared, tree,
                                                      fraction):
  examples = _examples(prepared, f"xml_len{fraction:g}")
  full = _examples(prepared, "xml")
  for name in REAL + (HAND,):
    polylines = _xml_polylines(tree / "pascal_2012_scribble" / f"{name}.xml")
    out = examples[name]["scribbles"][..., 0]
    kept = [(c, _shorten_here(p, fraction)) for c, p in polylines]
    ratio = (sum(_arc(p)[-1] for _, p in kept)
             / sum(_arc(p)[-1] for _, p in polylines))
    assert abs(ratio / fraction - 1) < 0.05
    # The stored raster is the recomputed window drawn 3 px wide.
    expected = scribbles.rasterize(
        [scribbles.Stroke(c, p) for c, p in kept], *out.shape)
    union = (expected != 255) | (out != 255)
    same = float(np.mean(expected[union] == out[union]))
    assert same >= 0.99
    # Shortened scribbles lie (mostly: PIL draws non-integer end points and
    # overlaps slightly differently; 95.9% measured) inside the whole ones.
    whole = full[name]["scribbles"][..., 0]
    inside = float(np.mean(whole[out != 255] == out[out != 255]))
    assert inside >= 0.9
    area = np.sum(out != 255) / np.sum(whole != 255)
    print(f"{name} len{fraction:g}: recomputed length ratio {ratio:.4f}, "
          f"raster match {same:.2%}, area ratio {area:.3f}")
  # Measured on the stored raster of the hand-written strokes (disjoint, one
  # per class): the arc-length extent of the drawn pixels along the whole
  # polyline.
  out = examples[HAND]["scribbles"][..., 0]
  for label, points in _xml_polylines(
      tree / "pascal_2012_scribble" / f"{HAND}.xml"):
    if len(points) == 1:
      continue
    s = _project(_labeled_xy(out, label), points)
    total = _arc(points)[-1]
    measured = (s.max() - s.min()) / total
    print(f"hand class {label}: measured length fraction {measured:.4f} "
          f"(target {fraction})")
    assert abs(measured / fraction - 1) < 0.05
    assert abs((s.max() + s.min()) / 2 - total / 2) < 1.5  # Centred.


def test_clicks_are_small_dots(prepared, tree):
  examples = _examples(prepared, "xml_len0")
  for name in REAL + (HAND,):
    polylines = _xml_polylines(tree / "pascal_2012_scribble" / f"{name}.xml")
    out = examples[name]["scribbles"][..., 0]
    mids = np.array([np.floor(_shorten_here(p, 0.0)[0] + 0.5)
                     for _, p in polylines])
    labeled = np.argwhere(out != 255)[:, ::-1]
    assert len(labeled) <= 9 * len(polylines)
    # Every labeled pixel is within one pixel of a stroke's midpoint.
    chebyshev = np.abs(labeled[:, None, :] - mids[None]).max(-1).min(1)
    assert chebyshev.max() <= 1
    components, count = ndimage.label(out != 255, structure=np.ones((3, 3)))
    sizes = np.bincount(components.ravel())[1:]
    print(f"{name} clicks: {len(polylines)} strokes -> {count} dots, "
          f"sizes {sorted(sizes.tolist())}")
    if name == HAND:  # Disjoint strokes: one 3x3 dot each.
      assert count == len(polylines) and np.all(sizes == 9)
      for (label, _), (x, y) in zip(polylines, mids.astype(int)):
        assert np.all(out[y - 1:y + 2, x - 1:x + 2] == label)


def test_prepare_names_custom_configs(tree, tmp_path):
  lists = tree / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
  short = tmp_path / "train_aug_short.txt"
  short.write_text(f"{REAL[0]}\n{REAL[1]}\n")
  builder = voc_builder.prepare(tree, tmp_path / "tfds", name="mine",
                                train_list=str(short), splits=["train_aug"])
  assert builder.builder_config.name == "mine"
  sources = voc_builder.load(tmp_path / "tfds", "mine")
  assert list(sources) == ["train_aug"] and len(sources["train_aug"]) == 2
  builder = voc_builder.prepare(tree, tmp_path / "tfds", fraction=0.25,
                                splits=None)
  assert builder.builder_config.name == "xml_len0.25"
  assert builder.info.metadata["fraction"] == 0.25
  with pytest.raises(ValueError, match="needs a name"):
    voc_builder.prepare(tree, tmp_path / "tfds", train_list=str(short))
  with pytest.raises(ValueError, match="unknown config"):
    voc_builder.prepare(tree, tmp_path / "tfds", config="xml_len0.9")
  assert (lists / "train_aug.txt").read_text() == f"{REAL[0]}\n"


def _corrupt(path: pathlib.Path):
  path.write_bytes(path.read_bytes()[:60])


@pytest.mark.parametrize("case, config, error, pattern", [
    ("no_root", "xml", FileNotFoundError, r"VOC root .*nowhere"),
    ("no_root_custom", "xml", FileNotFoundError, r"VOC root .*nowhere not "),
    ("no_list", "xml", FileNotFoundError, r"list .*Segmentation/val\.txt not"),
    ("no_masks_dir", "xml", FileNotFoundError,
     r"masks folder .*SegmentationClassAug not found"),
    ("no_image", "xml", FileNotFoundError,
     r"image .*JPEGImages/2007_000033\.jpg not found"),
    ("no_xml", "xml", FileNotFoundError,
     r"scribble file .*2007_000033\.xml not found"),
    ("unknown_tag", "xml_len0.5", ValueError,
     r"2007_000033\.xml: unknown ScribbleSup tag 'aeroplane'"),
    ("size_mismatch", "xml", ValueError,
     r"SegmentationClassAug/2007_000033\.png: size \(5, 5\) differs"),
    ("xml_size", "xml", ValueError, r"2007_000033\.xml: size \(9, 9\) differs"),
    ("corrupt_mask", "xml", ValueError,
     r"SegmentationClassAug/2007_000033\.png: cannot decode"),
    ("corrupt_scribble", "png", ValueError,
     r"pascal_2012_scribble/2007_000033\.png: cannot decode"),
    ("corrupt_image", "png", ValueError, r"2007_000033\.jpg: cannot decode"),
    ("class_id", "png", ValueError,
     r"pascal_2012_scribble/2007_000033\.png: class id 21 is not"),
])
def test_bad_input_names_the_file_and_leaves_no_dataset(
    shared_data, tmp_path, case, config, error, pattern):
  # train_aug (2007_000032) is fine, so val fails after a split was written.
  root = _build_tree(shared_data, tmp_path / "root", hand=False)
  voc = root / "VOCdevkit" / "VOC2012"
  name = "2007_000033"
  kwargs = {}
  if case == "no_root":
    root = tmp_path / "nowhere"
  elif case == "no_root_custom":
    root, kwargs = tmp_path / "nowhere", dict(name="custom", fraction=0.1)
  elif case == "no_list":
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
  elif case == "no_masks_dir":
    shutil.rmtree(voc / "SegmentationClassAug")
  elif case == "no_image":
    (voc / "JPEGImages" / f"{name}.jpg").unlink()
  elif case == "no_xml":
    (root / "pascal_2012_scribble" / f"{name}.xml").unlink()
  elif case == "unknown_tag":
    (root / "pascal_2012_scribble" / f"{name}.xml").write_text(
        HAND_XML.replace(">plane<", ">aeroplane<"))
  elif case == "size_mismatch":
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(
        voc / "SegmentationClassAug" / f"{name}.png")
  elif case == "xml_size":
    path = root / "pascal_2012_scribble" / f"{name}.xml"
    path.write_text(scribblesup.to_xml(
        scribblesup.parse_xml(path), height=9, width=9))
  elif case == "corrupt_mask":
    _corrupt(voc / "SegmentationClassAug" / f"{name}.png")
  elif case == "corrupt_scribble":
    _corrupt(root / "pascal_2012_scribble" / f"{name}.png")
  elif case == "corrupt_image":
    _corrupt(voc / "JPEGImages" / f"{name}.jpg")
  elif case == "class_id":
    png = _pil(root / "pascal_2012_scribble" / f"{name}.png").copy()
    png[0, 0] = 21
    Image.fromarray(png).save(root / "pascal_2012_scribble" / f"{name}.png")
  data_dir = tmp_path / "tfds"
  with pytest.raises(error, match=pattern):
    voc_builder.prepare(root, data_dir, config=config, **kwargs)
  written = kwargs.get("name", config)
  with pytest.raises(FileNotFoundError, match="no prepared dataset"):
    voc_builder.load(data_dir, written)
  # No temporary directory is left behind either.
  assert not list((data_dir / "voc_scribble").glob(f"{written}/*"))
