r"""The demo dataset's scenes: textured shapes with skeleton scribbles.

Every example is drawn from ``np.random.default_rng([seed, crc32(split),
index])`` with numpy and PIL only (:func:`make_example`), so it depends on
``(seed, split, index)`` and on nothing else. :mod:`potts_jax.data.builders.demo_builder`
serves and prepares them as the ``demo`` dataset.

The scene (``height x width``, default 96 x 96, ``K = num_classes``, default
5: background + 4 object classes):

- class 0 (background) fills the image: its base colour, a smooth
  low-frequency shading (a bilinearly upsampled 4 x 4 random grid, ±12);
- 2-5 objects are painted over it in order (later ones occlude earlier ones),
  each of a random class ``1..K-1``, shape (rotated ellipse, rotated rectangle,
  random star-shaped polygon, or blob: a polygon of 24 vertices whose radius is
  a random smooth function of the angle), centre (anywhere, objects may leave
  the image) and size (semi-axes 12-32% of the short side);
- each class has a base colour (:data:`CLASS_COLOURS`) and a mild texture
  (:data:`CLASS_TEXTURES`: plain, stripes, egg-crate dots, rings; amplitude
  <= 8, periods >= 9 px, so the texture changes neighbouring pixels by a few
  levels at most). The colour of an object is its class colour plus a
  per-image illumination shift (N(0, 10) per channel, the same for every
  class), a per-image per-class jitter (N(0, 8)) and a per-object jitter
  (N(0, 4)), so that class identity is carried by colour and texture and
  stays learnable by a small network;
- per-pixel Gaussian noise (``noise_std``, default 5 per channel) on top,
  rounded and clipped to uint8.

Objects are painted with hard edges, so every mask boundary between two
classes is a colour edge of the image (the classes' colours lie >= 60 apart
in RGB before jitter) and inside a region neighbouring pixels differ only by
noise and texture: the 4-NN affinities ``exp(-|ΔI|² / (2·9²))`` of the
solver (σ_rgb 9 on 0..255 RGB) average about 0.5 inside regions and about
0.001 across boundaries (measured by the tests).

Scribbles: :func:`potts_jax.data.synthetic_scribbles.skeleton_scribbles` of
the mask (skeletons of the regions eroded by 3 px, 3 px wide, cut to
``max_fraction``, default 3%, of the pixels; seed drawn from the example's
generator), so they lie in the interior of the regions and never contradict
the mask. The labeled fraction is 2.9-3.0% of the pixels for the default
config (a region under 50 px gets no scribble); its mean, min and max per
split are stored in ``info.metadata["labeled_fraction"]``. A network
trained on the scribbles alone (partial CE) sees no labels near boundaries,
so it leaves boundary errors that an edge-aware Potts / CRF term fixes.

Determinism: the same ``(seed, split, index)`` and options give identical
arrays on one machine and numpy version. Only elementwise IEEE arithmetic
runs on the pixel grid (no transcendental functions there; shape angles use
``math.cos``/``math.sin`` on scalars), so other machines should agree too.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

CLASS_NAMES: tuple[str, ...] = (
    "background", "red", "green", "blue", "yellow", "purple", "cyan", "orange")
"""Class names (id order); ``num_classes`` takes the first ``K``."""

CLASS_COLOURS = np.array([
    [125, 125, 115],  # background: grey-brown
    [200, 60, 55],    # red
    [60, 165, 75],    # green
    [55, 85, 200],    # blue
    [215, 190, 50],   # yellow
    [160, 60, 175],   # purple
    [50, 180, 185],   # cyan
    [235, 130, 40],   # orange
], np.float64)
"""Base RGB colour of each class."""

CLASS_TEXTURES: tuple[str, ...] = (
    "shading", "plain", "stripes", "dots", "rings", "stripes", "dots", "rings")
"""Texture of each class (background: low-frequency shading)."""

SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "polygon", "blob")
MAX_CLASSES = len(CLASS_NAMES)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), zlib.crc32(split.encode()),
                                int(index)])


def _triangle(t: np.ndarray) -> np.ndarray:
  """Triangle wave of period 1 in ``[-1, 1]`` (arithmetic only)."""
  return 4.0 * np.abs(t - np.floor(t) - 0.5) - 1.0


def _shading(rng: np.random.Generator, height: int, width: int,
             amplitude: float) -> np.ndarray:
  """``[H, W]``: a 4 x 4 uniform grid in ``±amplitude``, bilinear."""
  grid = rng.uniform(-amplitude, amplitude, (4, 4))
  y = (np.arange(height) + 0.5) * (3.0 / height)
  x = (np.arange(width) + 0.5) * (3.0 / width)
  y0 = np.minimum(np.floor(y).astype(int), 2)
  x0 = np.minimum(np.floor(x).astype(int), 2)
  ty, tx = (y - y0)[:, None], (x - x0)[None, :]
  g = lambda dy, dx: grid[(y0 + dy)[:, None], (x0 + dx)[None, :]]
  return ((1 - ty) * ((1 - tx) * g(0, 0) + tx * g(0, 1))
          + ty * ((1 - tx) * g(1, 0) + tx * g(1, 1)))


def _texture(kind: str, rng: np.random.Generator, rows: np.ndarray,
             cols: np.ndarray) -> np.ndarray:
  """``[H, W, 3]`` additive texture of one object (draws a fixed count)."""
  angle = rng.uniform(0.0, math.pi)
  period = rng.uniform(9.0, 14.0)
  amplitude = rng.uniform(5.0, 8.0)
  cy, cx = rng.uniform(0.0, 1.0, 2) * [rows.shape[0], cols.shape[1]]
  c, s = math.cos(angle), math.sin(angle)
  if kind == "plain":
    value = np.zeros(np.broadcast_shapes(rows.shape, cols.shape))
  elif kind == "stripes":
    value = _triangle((c * cols + s * rows) / period)
  elif kind == "dots":
    u, v = c * cols + s * rows, c * rows - s * cols
    value = _triangle(u / period) * _triangle(v / period)
  elif kind == "rings":
    value = _triangle(np.sqrt((rows - cy) ** 2 + (cols - cx) ** 2) / period)
  else:
    raise ValueError(f"unknown texture {kind!r}")
  return (amplitude * value)[..., None] * np.ones(3)


def _polygon_mask(points: Sequence[tuple[float, float]], height: int,
                  width: int) -> np.ndarray:
  image = Image.new("L", (width, height), 0)
  ImageDraw.Draw(image).polygon([(float(x), float(y)) for x, y in points],
                                fill=1)
  return np.asarray(image, bool)


def _shape_mask(kind: str, rng: np.random.Generator, rows: np.ndarray,
                cols: np.ndarray, height: int, width: int) -> np.ndarray:
  """``[H, W]`` bool region of one object (draws a fixed count)."""
  short = min(height, width)
  cy = rng.uniform(0.05, 0.95) * height
  cx = rng.uniform(0.05, 0.95) * width
  a, b = rng.uniform(0.12, 0.32, 2) * short
  angle = rng.uniform(0.0, math.pi)
  c, s = math.cos(angle), math.sin(angle)
  vertices = int(rng.integers(3, 8))
  radii = rng.uniform(0.55, 1.0, 7)
  jitter = rng.uniform(-0.4, 0.4, 7)
  harmonics = rng.uniform(-0.18, 0.18, (3, 2))
  if kind in ("ellipse", "rectangle"):
    u = c * (cols - cx) + s * (rows - cy)
    v = -s * (cols - cx) + c * (rows - cy)
    if kind == "ellipse":
      return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return (np.abs(u) <= a) & (np.abs(v) <= b)
  r = max(a, b)
  if kind == "polygon":
    step = 2.0 * math.pi / vertices
    thetas = [angle + step * (k + jitter[k]) for k in range(vertices)]
    points = [(cx + r * radii[k] * math.cos(t), cy + r * radii[k] * math.sin(t))
              for k, t in enumerate(thetas)]
  elif kind == "blob":
    points = []
    for k in range(24):
      t = angle + 2.0 * math.pi * k / 24
      scale = 0.75 + sum(
          harmonics[h, 0] * math.cos((h + 2) * t)
          + harmonics[h, 1] * math.sin((h + 2) * t) for h in range(3))
      points.append((cx + r * scale * math.cos(t), cy + r * scale * math.sin(t)))
  else:
    raise ValueError(f"unknown shape {kind!r}")
  return _polygon_mask(points, height, width)


def make_scene(rng: np.random.Generator, *, height: int, width: int,
               num_classes: int, noise_std: float = 5.0
               ) -> tuple[np.ndarray, np.ndarray]:
  """Draws one scene (module docstring) from ``rng``.

  Returns:
    ``(image [H, W, 3] uint8, mask [H, W] uint8)``.
  """
  check_size(height, width, num_classes)
  rows = np.arange(height, dtype=np.float64)[:, None]
  cols = np.arange(width, dtype=np.float64)[None, :]
  illumination = rng.normal(0.0, 10.0, 3)
  class_jitter = rng.normal(0.0, 8.0, (MAX_CLASSES, 3))
  colours = CLASS_COLOURS + illumination + class_jitter
  mask = np.zeros((height, width), np.uint8)
  image = np.empty((height, width, 3), np.float64)
  image[:] = colours[0]
  image += _shading(rng, height, width, 12.0)[..., None]
  for _ in range(int(rng.integers(2, 6))):
    label = int(rng.integers(1, num_classes))
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    region = _shape_mask(kind, rng, rows, cols, height, width)
    colour = colours[label] + rng.normal(0.0, 4.0, 3)
    texture = _texture(CLASS_TEXTURES[label], rng, rows, cols)
    mask[region] = label
    image[region] = colour + texture[region]
  image += rng.normal(0.0, noise_std, image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), mask


def check_size(height: int, width: int, num_classes: int) -> None:
  if not 2 <= num_classes <= MAX_CLASSES:
    raise ValueError(f"num_classes {num_classes} is not in [2, {MAX_CLASSES}]")
  if height < 16 or width < 16:
    raise ValueError(f"image size {height}x{width} is below 16x16")


def make_example(index: int, *, seed: int = 0, split: str = "train",
                 height: int = 96, width: int = 96, num_classes: int = 5,
                 noise_std: float = 5.0, max_fraction: float = 0.03
                 ) -> dict[str, Any]:
  """Example ``index`` of ``split`` (a function of the arguments only).

  Args:
    index: the example's index (any non-negative int).
    seed: the dataset's seed.
    split: the split name (any string; it seeds the generator).
    height, width: the image size (>= 16).
    num_classes: ``K`` in ``[2, 8]``, background included.
    noise_std: per-pixel noise (std per channel, 0..255 scale).
    max_fraction: ``skeleton_scribbles``' bound on the labeled share.

  Returns:
    ``image`` ``[H, W, 3]`` uint8, ``mask`` and ``scribbles`` ``[H, W, 1]``
    uint8 (scribbles 255 on unlabeled pixels) and ``name`` (``str``,
    ``"<split>_<index:05d>"``): the layout of a prepared source's examples
    (there ``name`` is ``bytes``).
  """
  from potts_jax.data import synthetic_scribbles as scribbles_lib  # pylint: disable=g-import-not-at-top

  if index < 0:
    raise ValueError(f"index {index} is negative")
  rng = _rng(seed, split, index)
  image, mask = make_scene(rng, height=height, width=width,
                           num_classes=num_classes, noise_std=noise_std)
  scribble_seed = int(rng.integers(2**31))
  strokes = np.asarray(scribbles_lib.skeleton_scribbles(
      mask, seed=scribble_seed, max_fraction=max_fraction), np.uint8)
  return {"image": image, "mask": mask[..., None],
          "scribbles": strokes[..., None], "name": f"{split}_{index:05d}"}
