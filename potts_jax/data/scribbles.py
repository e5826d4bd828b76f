"""Scribble strokes for the dataset builders: :class:`Stroke`, rasterising,
shortening and vectorising raster scribbles into strokes.

Synthetic scribbles made from dense masks (block and skeleton scribbles) are
in :mod:`potts_jax.data.synthetic_scribbles`; ScribbleSup XML files are read
and written by :mod:`potts_jax.data.scribblesup`.

Label codes (:mod:`potts_jax.labels`): class ids ``0..K-1``,
:data:`UNLABELED` (255) on pixels without a label, :data:`PADDING` (254) on
crop padding. All label arrays here are ``[H, W]`` uint8 numpy arrays.

A :class:`Stroke` is one polyline of one class in pixel coordinates ``(x, y)``
where integer coordinates are pixel centres (PIL's convention, and the one of
the ScribbleSup annotations): ``(x, y)`` addresses ``array[y, x]``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage.morphology import skeletonize

from potts_jax.labels import PADDING, UNLABELED

_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0),
               (1, 1))


@dataclasses.dataclass(frozen=True, eq=False)
class Stroke:
  """One scribble: a polyline of one class.

  Attributes:
    label: the class id (``0..253``).
    points: ``[N, 2]`` float64, ``(x, y)`` pixel coordinates, ``N >= 1``; a
      single point (or points that all coincide) is a click.
  """

  label: int
  points: np.ndarray

  def __post_init__(self):
    points = np.asarray(self.points, np.float64).reshape(-1, 2)
    if points.shape[0] == 0:
      raise ValueError("a stroke needs at least one point")
    if not 0 <= int(self.label) < PADDING:
      raise ValueError(f"stroke label {self.label} is not a class id 0..253")
    points.setflags(write=False)
    object.__setattr__(self, "label", int(self.label))
    object.__setattr__(self, "points", points)

  def __eq__(self, other):
    return (isinstance(other, Stroke) and self.label == other.label
            and np.array_equal(self.points, other.points))

  __hash__ = None

  @property
  def length(self) -> float:
    """Arc length of the polyline in pixels (0 for a click)."""
    return float(_cumulative_length(self.points)[-1])


# ----------------------------------------------------------------------------
# Rasterising and shortening.


def _is_click(points: np.ndarray) -> bool:
  return bool(np.all(points == points[0]))


def _draw(draw: ImageDraw.ImageDraw, points: np.ndarray, fill: int,
          thickness: int) -> None:
  if _is_click(points):
    # A square dot of side `thickness` around the nearest pixel (the
    # footprint of a line end); PIL draws nothing or one pixel otherwise.
    x, y = np.floor(points[0] + 0.5).astype(int)
    lo = (thickness - 1) // 2
    hi = thickness - 1 - lo
    draw.rectangle([x - lo, y - lo, x + hi, y + hi], fill=fill)
  else:
    draw.line([tuple(p) for p in points], fill=fill, width=thickness,
              joint="curve" if thickness > 2 else None)


def rasterize(strokes: Iterable[Stroke], height: int, width: int, *,
              thickness: int = 3) -> np.ndarray:
  """Draws strokes into a label image.

  Each polyline is drawn ``thickness`` px wide with ``PIL.ImageDraw.line``
  (round joints); a click is a ``thickness`` x ``thickness`` square dot.
  Strokes are drawn in order, so **a later stroke overwrites earlier ones**
  where they overlap. Parts outside the image are clipped.

  Args:
    strokes: the strokes.
    height, width: the image size.
    thickness: line width in pixels (>= 1).

  Returns:
    ``[H, W]`` uint8: the stroke's class on drawn pixels, 255 elsewhere.
  """
  if thickness < 1:
    raise ValueError(f"thickness must be >= 1, got {thickness}")
  image = Image.new("L", (width, height), UNLABELED)
  draw = ImageDraw.Draw(image)
  for stroke in strokes:
    _draw(draw, stroke.points, stroke.label, thickness)
  return np.array(image, np.uint8)


def _cumulative_length(points: np.ndarray) -> np.ndarray:
  """``[N]`` arc length from the first point to each point."""
  steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
  return np.concatenate([[0.0], np.cumsum(steps)])


def _point_at(points: np.ndarray, cum: np.ndarray, s: float) -> np.ndarray:
  """The point at arc length ``s`` (``[2]``), linear between vertices."""
  return np.array([np.interp(s, cum, points[:, 0]),
                   np.interp(s, cum, points[:, 1])])


def window(stroke: Stroke, start: float, stop: float) -> Stroke:
  """The sub-polyline between arc lengths ``start <= stop`` (a click when
  they are equal), with interpolated end points."""
  points = stroke.points
  cum = _cumulative_length(points)
  if start == stop:
    return Stroke(stroke.label, _point_at(points, cum, start)[None])
  inner = points[(cum > start) & (cum < stop)]
  new = np.concatenate([_point_at(points, cum, start)[None], inner,
                        _point_at(points, cum, stop)[None]])
  return Stroke(stroke.label, new)


def shorten(stroke: Stroke, fraction: float) -> Stroke:
  """Keeps ``fraction`` of the stroke's arc length, centred on its midpoint.

  The kept part runs from arc length ``(1 - fraction) L / 2`` to
  ``(1 + fraction) L / 2`` with interpolated end points and the original
  vertices between them. ``fraction == 0`` gives a click at the arc-length
  midpoint, ``fraction == 1`` the stroke itself. A click stays a click.

  Args:
    stroke: the stroke.
    fraction: in ``[0, 1]``.

  Returns:
    The shortened stroke (same label).
  """
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f"fraction must be in [0, 1], got {fraction}")
  if fraction == 1.0:
    return stroke
  total = stroke.length
  if total == 0.0:
    return Stroke(stroke.label, stroke.points[:1])
  half = 0.5 * total
  return window(stroke, half * (1.0 - fraction), half * (1.0 + fraction))


# ----------------------------------------------------------------------------
# Strokes from raster scribbles.


def order_skeleton(pixels: np.ndarray) -> list[np.ndarray]:
  """Splits an 8-connected pixel set into polylines covering every pixel.

  Greedy walk: start at an end pixel (fewest neighbours), step to an
  unvisited 8-neighbour (4-neighbours first, so that corners are not cut)
  until none is left; then start the next polyline at a visited pixel that
  still has unvisited neighbours (so that branches stay attached), else at a
  fresh pixel. Deterministic.

  Args:
    pixels: ``[N, 2]`` int ``(row, col)``.

  Returns:
    Polylines, each ``[M, 2]`` float ``(x, y)``.
  """
  remaining = set(map(tuple, pixels.tolist()))
  order = sorted(remaining)

  def free(p):
    r, c = p
    near = [(r + dr, c + dc) for dr, dc in _NEIGHBOURS]
    near.sort(key=lambda q: abs(q[0] - r) + abs(q[1] - c))
    return [q for q in near if q in remaining]

  degree = {p: len(free(p)) for p in order}
  lines = []
  trail: list[tuple[int, int]] = []  # visited pixels in visiting order
  cursor = 0  # trail[:cursor] have no unvisited neighbours (for good)
  while remaining:
    while cursor < len(trail) and not free(trail[cursor]):
      cursor += 1
    if cursor < len(trail):
      start = trail[cursor]
    else:
      start = min(remaining, key=lambda p: (degree[p], p))
      remaining.discard(start)
      trail.append(start)
    line = [start]
    current = start
    while True:
      nxt = free(current)
      if not nxt:
        break
      current = nxt[0]
      remaining.discard(current)
      trail.append(current)
      line.append(current)
    lines.append(np.array(line, np.float64)[:, ::-1].copy())
  return lines


def strokes_from_raster(scribbles: np.ndarray) -> list[Stroke]:
  """Vectorises raster scribbles into strokes.

  For each class and each 8-connected component of its pixels: the
  component's skeleton (``skimage.morphology.skeletonize``; the component
  itself when the skeleton is empty) is split into polylines by a greedy walk
  over 8-neighbours (see :func:`order_skeleton`). Drawing the strokes with
  the scribbles' width (3 px for ScribbleSup) reproduces the raster up to the
  pixels at stroke ends and corners.

  Args:
    scribbles: ``[H, W]`` int, class ids, 255/254 unlabeled.

  Returns:
    The strokes, class by class in increasing order.
  """
  scribbles = np.asarray(scribbles)
  strokes = []
  for label in np.unique(scribbles):
    if label in (UNLABELED, PADDING):
      continue
    components, _ = ndimage.label(scribbles == label,
                                      structure=np.ones((3, 3)))
    for index, box in enumerate(ndimage.find_objects(components), start=1):
      region = components[box] == index
      skeleton = skeletonize(region)
      if not skeleton.any():
        skeleton = region
      pixels = np.argwhere(skeleton) + [box[0].start, box[1].start]
      for line in order_skeleton(pixels):
        strokes.append(Stroke(int(label), line))
  return strokes
