"""ScribbleSup annotation files (Lin et al., CVPR 2016): XML polylines.

One XML file per image; each ``<polygon>`` is one polyline (a scribble) of
one class, named by its ``<tag>`` (:data:`TAGS`, PASCAL VOC 2012 class ids
0..20), with its points in pixel coordinates (integer coordinates are pixel
centres, ``(X, Y)`` addresses ``array[Y, X]``)::

  <annotation> <filename>2007_000032.jpg</filename>
    <polygon><tag>plane</tag>
      <point><X>10</X><Y>20</Y></point> ...
    </polygon> ...
  </annotation>

:func:`parse_xml` reads a file into :class:`potts_jax.data.scribbles.Stroke`
objects, :func:`to_xml` writes them; rasterising and shortening are in
:mod:`potts_jax.data.scribbles`.
"""

from __future__ import annotations

import pathlib
import xml.etree.ElementTree as ET
from typing import Iterable

import numpy as np

from potts_jax.data import scribbles
TAGS: tuple[str, ...] = (
    "background", "plane", "bike", "bird", "boat", "bottle", "bus", "car",
    "cat", "chair", "cow", "table", "dog", "horse", "motorbike", "person",
    "plant", "sheep", "sofa", "train", "monitor",
)
"""ScribbleSup tag names in class-id order (PASCAL VOC 2012, 0..20)."""

_TAG_ID = {name: i for i, name in enumerate(TAGS)}

MAX_XML_BYTES = 1 << 20
"""Largest annotation :func:`parse_xml` reads (ScribbleSup files are ~2 KB)."""


class _NoDoctype(ET.TreeBuilder):
  """Refuses DOCTYPE declarations, where entities are declared: no entity
  expansion (billion laughs), no external entity or DTD (XXE). ScribbleSup
  files have none."""

  def doctype(self, name, pubid, system):
    del name, pubid, system
    raise ValueError("DOCTYPE declarations are not allowed (no entities, no "
                     "external DTD)")


def parse_xml(text_or_path: str | pathlib.Path
              ) -> list[scribbles.Stroke]:
  """Parses one ScribbleSup annotation.

  The format::

    <annotation> ...
      <polygon><tag>NAME</tag>
        <point><X>x</X><Y>y</Y></point> ...
      </polygon> ...
    </annotation>

  Files are untrusted: a DOCTYPE (hence any entity declaration or external
  entity) is refused, and so is anything over :data:`MAX_XML_BYTES`.

  Args:
    text_or_path: the XML text, or a path (``pathlib.Path``, or a ``str``
      that does not start with ``<``) to the file.

  Returns:
    The strokes in file order, labels from :data:`TAGS`.

  Raises:
    FileNotFoundError: no file at the path.
    ValueError: on malformed XML, a DOCTYPE, an input over
      :data:`MAX_XML_BYTES`, a root other than ``<annotation>``, an unknown
      tag, a polygon without points or a missing, non-numeric or non-finite
      coordinate; the message names the file when given a path.
  """
  if isinstance(text_or_path, pathlib.Path) or not str(
      text_or_path).lstrip().startswith("<"):
    path = pathlib.Path(text_or_path)
    where, size = f"{path}: ", path.stat().st_size
    data = path.read_bytes() if size <= MAX_XML_BYTES else ""
  else:
    data, where = str(text_or_path), ""
    size = len(data.encode())
  if size > MAX_XML_BYTES:
    raise ValueError(f"{where}{size} bytes, more than any ScribbleSup "
                     f"annotation (at most MAX_XML_BYTES = {MAX_XML_BYTES})")
  parser = ET.XMLParser(target=_NoDoctype())
  try:
    parser.feed(data)
    root = parser.close()
  except (ET.ParseError, ValueError) as e:
    raise ValueError(f"{where}malformed ScribbleSup XML: {e}") from e
  if root.tag != "annotation":
    raise ValueError(f"{where}not a ScribbleSup annotation: the root element "
                     f"is <{root.tag[:40]}>, expected <annotation>")
  strokes = []
  for polygon in root.iter("polygon"):
    tag = (polygon.findtext("tag") or "").strip()
    if tag not in _TAG_ID:
      raise ValueError(f"{where}unknown ScribbleSup tag {tag[:40]!r}; valid "
                       f"tags: {', '.join(TAGS)}")
    points = []
    for point in polygon.iter("point"):
      x, y = point.findtext("X"), point.findtext("Y")
      try:
        xy = (float(x), float(y))
      except (TypeError, ValueError):
        xy = (np.nan, np.nan)
      if not np.all(np.isfinite(xy)):
        raise ValueError(f"{where}bad point in a {tag!r} polygon: X={x!r:.40}"
                         f", Y={y!r:.40}; expected two finite numbers")
      points.append(xy)
    if not points:
      raise ValueError(f"{where}a {tag!r} polygon has no points")
    strokes.append(scribbles.Stroke(_TAG_ID[tag], np.array(points)))
  return strokes


def to_xml(strokes: Iterable[scribbles.Stroke], *, filename: str = "",
           height: int | None = None, width: int | None = None) -> str:
  """Writes strokes as ScribbleSup XML (the inverse of the parser).

  Args:
    strokes: labels must be ``0..20``.
    filename: written to ``<filename>`` when given.
    height, width: written to ``<size>`` when given.

  Returns:
    The XML text.
  """
  root = ET.Element("annotation")
  if filename:
    ET.SubElement(root, "filename").text = filename
  if height is not None and width is not None:
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
  for stroke in strokes:
    if stroke.label >= len(TAGS):
      raise ValueError(f"label {stroke.label} has no ScribbleSup tag")
    polygon = ET.SubElement(root, "polygon")
    ET.SubElement(polygon, "tag").text = TAGS[stroke.label]
    for x, y in stroke.points:
      point = ET.SubElement(polygon, "point")
      ET.SubElement(point, "X").text = f"{x:g}"
      ET.SubElement(point, "Y").text = f"{y:g}"
  return ET.tostring(root, "unicode")
