"""Hostile ScribbleSup XML and scribble PNG files, and the committed corpus.

Annotations and scribble images come from downloaded datasets; whatever their
bytes, :func:`potts_jax.data.scribblesup.parse_xml`,
:func:`potts_jax.tools.segment.read_scribbles` and
:func:`potts_jax.data.folder.label_image` must return valid data or raise a
``ValueError`` naming the file, never read a local file through an XML entity
nor expand entities, and never decode a decompression bomb. The crafted cases
are those of :mod:`tests.fuzz_corpus.make_corpus`; the last tests load every
file of the committed corpus (``tests/fuzz_corpus``) and check that the
script still writes exactly those files. Hypothesis runs derandomised with a
fixed budget.
"""

import io
import pathlib
import re
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from potts_jax.data import folder
from potts_jax.data import scribbles as scribble_lib
from potts_jax.data import scribblesup
from potts_jax.models import torch_checkpoint as tc
from potts_jax.tools import segment
from tests.fuzz_corpus import make_corpus as corpus
from tests.test_fuzz_checkpoint import fuzz

CORPUS = pathlib.Path(corpus.__file__).resolve().parent
H, W = corpus.PNG_SHAPE


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("fuzz_inputs")


def peak_of(fn):
  """``(fn()`` or the exception it raised, peak bytes allocated)."""
  tracemalloc.start()
  try:
    result = fn()
  except Exception as e:  # noqa: BLE001  (the caller checks the type)
    result = e
  finally:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  return result, peak


def assert_named_error(result, path: pathlib.Path):
  assert isinstance(result, ValueError), repr(result)
  assert str(path) in str(result), str(result)


# ----------------------------------------------------------------------------
# ScribbleSup XML.


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> pathlib.Path:
  """A local file the external-entity cases point at."""
  path = tmp_path_factory.mktemp("secret") / "secret.txt"
  path.write_text("TOP-SECRET-7f3a")
  return path


@pytest.mark.parametrize("name", sorted(corpus.xml_cases()))
def test_crafted_xml_is_rejected(tmp_path, secret, name):
  path = tmp_path / f"{name}.xml"
  path.write_bytes(corpus.xml_cases(str(secret))[name])
  result, peak = peak_of(lambda: scribblesup.parse_xml(path))
  assert_named_error(result, path)
  assert "TOP-SECRET" not in str(result)
  assert peak < 64 * path.stat().st_size + (1 << 20), peak  # No expansion.


@pytest.mark.parametrize("name", ["billion_laughs", "xxe_file", "doctype_only",
                                  "external_dtd"])
def test_doctype_is_refused_in_text_too(secret, name):
  text = corpus.xml_cases(str(secret))[name].decode()
  with pytest.raises(ValueError, match="DOCTYPE declarations are not allowed"):
    scribblesup.parse_xml(text)


def test_entity_bomb_is_refused_before_any_expansion(tmp_path):
  # Forty levels of ten: 1e40 "lol"s if expanded; refused at the DOCTYPE.
  levels = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">'
                   for i in range(1, 40))
  path = tmp_path / "bomb.xml"
  path.write_text(f'<!DOCTYPE a [<!ENTITY l0 "lol">{levels}]>'
                  "<annotation><filename>&l39;</filename></annotation>")
  result, peak = peak_of(lambda: scribblesup.parse_xml(path))
  assert_named_error(result, path)
  assert peak < 1 << 20


def test_oversized_xml_is_refused_unread(tmp_path):
  path = tmp_path / "huge.xml"
  with open(path, "wb") as f:  # Sparse: no disk used.
    f.truncate(50 * scribblesup.MAX_XML_BYTES)
  result, peak = peak_of(lambda: scribblesup.parse_xml(path))
  assert_named_error(result, path)
  assert "MAX_XML_BYTES" in str(result) and peak < 1 << 20


def test_deep_nesting_inside_an_annotation_is_parsed_safely(tmp_path):
  path = tmp_path / "deep.xml"
  good = ("<polygon><tag>dog</tag><point><X>3</X><Y>4</Y></point>"
          "</polygon>")
  path.write_text("<annotation>" + "<a>" * 20000 + "</a>" * 20000 + good +
                  "</annotation>")
  [stroke] = scribblesup.parse_xml(path)
  assert stroke.label == scribblesup.TAGS.index("dog")


_COORD = st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: round(v, 2))
_STROKES = st.lists(st.builds(
    scribble_lib.Stroke, st.integers(0, len(scribblesup.TAGS) - 1),
    st.lists(st.tuples(_COORD, _COORD), min_size=1, max_size=5).map(
        np.array)), max_size=4)


@fuzz(40)
@given(strokes=_STROKES)
def test_xml_round_trip(workdir, strokes):
  path = workdir / "round_trip.xml"
  path.write_text(scribblesup.to_xml(strokes, filename="a.jpg"))
  got = scribblesup.parse_xml(path)
  assert [s.label for s in got] == [s.label for s in strokes]
  for a, b in zip(got, strokes):
    np.testing.assert_allclose(a.points, b.points, rtol=1e-5)


_VALID_XML = scribblesup.to_xml([
    scribble_lib.Stroke(1, np.array([[1.0, 2.0], [3.5, 4.0]])),
    scribble_lib.Stroke(15, np.array([[7.0, 8.0]]))], filename="x.jpg",
    height=10, width=12).encode()


@fuzz(120)
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                st.sampled_from(list(b"<>/&;!#xX%\"' 0.9aZ"
                                                     b"\x00\xff"))),
                      min_size=1, max_size=6),
       cut=st.floats(0.05, 1))
def test_mutated_xml(workdir, edits, cut):
  """Byte edits and truncations of a valid file: strokes or a named error."""
  data = bytearray(_VALID_XML[:int(len(_VALID_XML) * cut)])
  for where, value in edits:
    if data:
      data[int(where * len(data))] = value
  path = workdir / "mutated.xml"
  path.write_bytes(bytes(data))
  result, _ = peak_of(lambda: scribblesup.parse_xml(path))
  if isinstance(result, Exception):
    assert_named_error(result, path)
  else:
    for stroke in result:
      assert 0 <= stroke.label < len(scribblesup.TAGS)
      assert stroke.points.ndim == 2 and np.isfinite(stroke.points).all()


@fuzz(40)
@given(data=st.binary(max_size=600))
def test_random_bytes_as_xml(workdir, data):
  path = workdir / "random.xml"
  path.write_bytes(data)
  result, _ = peak_of(lambda: scribblesup.parse_xml(path))
  if isinstance(result, Exception):
    assert_named_error(result, path)


# ----------------------------------------------------------------------------
# Scribble PNGs.

PNG_CASES = corpus.png_cases()
#: The cases label_image accepts: it has no class count to check values by.
LABEL_IMAGE_ACCEPTS = {"class_out_of_range"}


def read_both(path: pathlib.Path):
  """(read_scribbles's result, label_image's pixels), or the exceptions."""
  with warnings.catch_warnings():  # PIL warns from 89 Mpixels: fine here.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    scribbles, _ = peak_of(lambda: segment.read_scribbles(str(path), (H, W)))
    label, peak = peak_of(lambda: np.asarray(folder.label_image(path, (W, H))))
  return scribbles, label, peak


@pytest.mark.parametrize("name", sorted(PNG_CASES))
def test_crafted_png_is_rejected(tmp_path, name):
  path = tmp_path / f"{name}.png"
  path.write_bytes(PNG_CASES[name])
  scribbles, label, peak = read_both(path)
  assert_named_error(scribbles, path)
  if name in LABEL_IMAGE_ACCEPTS:
    assert label.shape == (H, W)
  else:
    assert_named_error(label, path)
  assert peak < 1 << 20  # No bomb was decoded.


def test_class_ids_outside_the_encoding_are_named(tmp_path):
  path = tmp_path / "values.png"
  path.write_bytes(PNG_CASES["class_out_of_range"])
  with pytest.raises(ValueError, match=r"values\.png: values \[77\] outside"):
    segment.read_scribbles(str(path), (H, W))


def test_bomb_is_refused_before_decoding_even_under_the_pil_limit(tmp_path):
  """A 144-Mpixel PNG of a few hundred bytes: PIL only warns below twice its
  limit, so the header's size must be checked before the pixels."""
  path = tmp_path / "bomb.png"
  path.write_bytes(corpus.png_bomb(12_000, 12_000, bit_depth=8))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    with Image.open(path) as img:
      assert img.mode == "L" and img.size == (12_000, 12_000)
    for fn in (lambda: segment.read_scribbles(str(path), (H, W)),
               lambda: folder.label_image(path, (W, H))):
      result, peak = peak_of(fn)
      assert_named_error(result, path)
      assert "size" in str(result) and peak < 1 << 20


def _valid_png() -> bytes:
  good = np.full((H, W), 255, np.uint8)
  good[1, 1:4], good[4, 2:6] = 0, 1
  bio = io.BytesIO()
  Image.fromarray(good).save(bio, "PNG")
  return bio.getvalue()


VALID_PNG = _valid_png()


def test_valid_png_reads(tmp_path):
  path = tmp_path / "valid.png"
  path.write_bytes(VALID_PNG)
  scribbles, k = segment.read_scribbles(str(path), (H, W))
  assert k == 2 and scribbles[1, 1] == 0 and scribbles[4, 2] == 1
  np.testing.assert_array_equal(np.asarray(folder.label_image(path, (W, H))),
                                scribbles)


@fuzz(60)
@given(cut=st.integers(0, len(VALID_PNG) - 1),
       edits=st.lists(st.tuples(st.integers(0, len(VALID_PNG) - 1),
                                st.integers(0, 255)), max_size=3))
def test_mutated_png(workdir, cut, edits):
  """Truncations and byte edits of a valid scribble PNG."""
  data = bytearray(VALID_PNG[:max(cut, 1)])
  for where, value in edits:
    data[where % len(data)] = value
  path = workdir / "mutated.png"
  path.write_bytes(bytes(data))
  scribbles, label, _ = read_both(path)
  if isinstance(scribbles, Exception):
    assert_named_error(scribbles, path)
  else:
    array, k = scribbles
    assert array.shape == (H, W) and k >= 1
  if isinstance(label, Exception):
    assert_named_error(label, path)
  else:
    assert label.shape == (H, W)


@fuzz(30)
@given(data=st.binary(max_size=400))
def test_random_bytes_as_png(workdir, data):
  path = workdir / "random.png"
  path.write_bytes(data)
  scribbles, label, _ = read_both(path)
  assert_named_error(scribbles, path)
  assert_named_error(label, path)


# ----------------------------------------------------------------------------
# The committed corpus.


def _corpus_files(sub: str) -> list[pathlib.Path]:
  return sorted((CORPUS / sub).iterdir())


def test_corpus_is_what_the_script_writes():
  """Every committed case is reproducible from make_corpus.py, and the
  corpus stays small."""
  for sub, cases, ext in (("torch", corpus.torch_cases(), "pth"),
                          ("xml", corpus.xml_cases(), "xml"),
                          ("png", corpus.png_cases(), "png")):
    files = {p.name: p.read_bytes() for p in _corpus_files(sub)}
    assert files == {f"{n}.{ext}": data for n, data in cases.items()}, (
        f"tests/fuzz_corpus/{sub} is stale: run "
        "`python -m tests.fuzz_corpus.make_corpus`")
  total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file()
              and "__pycache__" not in p.parts)
  assert total < 200_000, total


def test_every_corpus_file_raises_the_named_error():
  pathlib.Path(corpus.SENTINEL).unlink(missing_ok=True)
  corpus.TRIPPED.clear()
  checked = 0
  for path in _corpus_files("torch"):
    with pytest.raises(tc.CheckpointError, match=re.escape(str(path))):
      tc.load(path)
    checked += 1
  for path in _corpus_files("xml"):
    with pytest.raises(ValueError, match=re.escape(str(path))):
      scribblesup.parse_xml(path)
    checked += 1
  for path in _corpus_files("png"):
    scribbles, label, _ = read_both(path)
    assert_named_error(scribbles, path)
    if path.stem not in LABEL_IMAGE_ACCEPTS:
      assert_named_error(label, path)
    checked += 1
  assert checked >= 150
  assert not pathlib.Path(corpus.SENTINEL).exists() and not corpus.TRIPPED
