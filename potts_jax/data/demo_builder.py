r"""TFDS builder ``demo``: a small procedural segmentation dataset (ships as code).

Every example is drawn from ``np.random.default_rng([seed, crc32(split),
index])`` with numpy and PIL only, so it depends on ``(seed, split, index)``
and on nothing else (not on the order of generation, nor on other examples):
no download, no data files. :func:`make_example` draws one example,
:class:`DemoSource` serves a split from memory (list-like, for the pipeline,
CI and the README's command without any preparation) and
:class:`DemoSegmentation` writes the same examples as a TFDS ``array_record``
dataset (:func:`prepare` / :func:`load`).

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

Scribbles: :func:`potts_jax.data.scribbles.skeleton_scribbles` of the mask
(skeletons of the regions eroded by 3 px, 3 px wide, cut to
``max_fraction``, default 3%, of the pixels; seed drawn from the example's
generator), so they lie in the interior of the regions and never contradict
the mask. The labeled fraction is 2.9-3.0% of the pixels for the default
config (a region under 50 px gets no scribble); its mean, min and max per
split are stored in ``info.metadata["labeled_fraction"]``. A network
trained on the scribbles alone (partial CE) sees no labels near boundaries,
so it leaves boundary errors that an edge-aware Potts / CRF term fixes.

Features of each example (:func:`potts_jax.data.builder_base.segmentation_features`):

- ``image``: ``[H, W, 3]`` uint8 (PNG, so reading back is exact);
- ``mask``: ``[H, W, 1]`` uint8 class ids (no 255: every pixel has a class);
- ``scribbles``: ``[H, W, 1]`` uint8 class ids, 255 unlabeled;
- ``name``: ``"<split>_<index:05d>"``.

``info.metadata``: ``classes`` (names, :data:`CLASS_NAMES`), ``num_classes``,
``scribbles`` (``"skeleton"``), ``max_fraction``, ``labeled_fraction``
(``{split: {"mean", "min", "max"}}``), and the config's ``seed``, ``height``,
``width``, ``noise_std``.

Usage::

  from potts_jax.data import demo_builder
  example = demo_builder.make_example(0, seed=0, split="train")
  train = demo_builder.DemoSource("train")          # no preparation
  builder = demo_builder.prepare("/tmp/tfds")       # DATA_DIR/demo/default/1.0.0
  sources = demo_builder.load("/tmp/tfds")          # {"train": ..., "val": ...}

Nothing here imports TensorFlow: the builder writes ``array_record``, read
with :func:`load` (or ``builder.as_data_source(split)``).

Determinism: the same ``(seed, split, index)`` and options give identical
arrays on one machine and numpy version. Only elementwise IEEE arithmetic
runs on the pixel grid (no transcendental functions there; shape angles use
``math.cos``/``math.sin`` on scalars), so other machines should agree too.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import zlib
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
import tensorflow_datasets as tfds

from potts_jax.data import builder_base

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
SPLITS: tuple[str, ...] = ("train", "val")
SCRIBBLES = "skeleton"


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
  _check(height, width, num_classes)
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


def _check(height: int, width: int, num_classes: int) -> None:
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
  from potts_jax.data import scribbles as scribbles_lib  # pylint: disable=g-import-not-at-top

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


@dataclasses.dataclass(eq=False)
class DemoConfig(tfds.core.BuilderConfig):
  """Configuration of :class:`DemoSegmentation` and :class:`DemoSource`.

  Attributes:
    seed: the dataset's seed.
    height, width: image size.
    num_classes: ``K``, background included (``[2, 8]``).
    train_size, val_size: examples of the ``train`` and ``val`` splits.
    noise_std: per-pixel noise std (0..255 scale).
    max_fraction: bound on the scribbles' labeled share.
  """

  seed: int = 0
  height: int = 96
  width: int = 96
  num_classes: int = 5
  train_size: int = 320
  val_size: int = 64
  noise_std: float = 5.0
  max_fraction: float = 0.03

  def split_size(self, split: str) -> int:
    sizes = {"train": self.train_size, "val": self.val_size}
    if split not in sizes:
      raise ValueError(f"unknown split {split!r}; the demo has {SPLITS}")
    return sizes[split]

  def example_options(self) -> dict[str, Any]:
    return dict(seed=self.seed, height=self.height, width=self.width,
                num_classes=self.num_classes, noise_std=self.noise_std,
                max_fraction=self.max_fraction)


class DemoSource:
  """One split of the demo, generated on access (list-like, picklable).

  ``source[i]`` is :func:`make_example` ``(i, split=split, **options)``;
  negative indices count from the end. Pass it to
  :func:`potts_jax.data.pipeline.train_dataset` / ``eval_batches`` directly.

  Args:
    split: ``"train"`` or ``"val"``.
    config: a :class:`DemoConfig` (its sizes and options); overridden by
      ``size`` and ``**options``.
    size: the number of examples; the config's split size by default.
    **options: ``seed``, ``height``, ``width``, ``num_classes``,
      ``noise_std``, ``max_fraction`` (see :func:`make_example`).
  """

  def __init__(self, split: str = "train", config: DemoConfig | None = None,
               *, size: int | None = None, **options: Any):
    config = config or DemoConfig(name="default")
    self.split = split
    self.options = dict(config.example_options(), **options)
    unknown = set(options) - set(config.example_options())
    if unknown:
      raise TypeError(f"unknown options {sorted(unknown)}")
    self.size = config.split_size(split) if size is None else int(size)
    if self.size < 0:
      raise ValueError(f"size {self.size} is negative")
    _check(self.options["height"], self.options["width"],
           self.options["num_classes"])

  @property
  def num_classes(self) -> int:
    return self.options["num_classes"]

  @property
  def classes(self) -> list[str]:
    return list(CLASS_NAMES[:self.num_classes])

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if index < 0:
      index += self.size
    if not 0 <= index < self.size:
      raise IndexError(f"index {index} out of range for {self.size} examples")
    return make_example(index, split=self.split, **self.options)

  def __repr__(self) -> str:
    return f"DemoSource({self.split!r}, size={self.size}, {self.options})"


class DemoSegmentation(builder_base.ArrayRecordBuilder):
  """The procedural demo dataset (module docstring) as array_record.

  Takes ``config=DemoConfig(...)`` (``"default"`` when omitted) and the usual
  builder arguments.
  """

  name = "demo"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS: list[DemoConfig] = [DemoConfig(name="default")]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Procedural textured scenes with dense masks and "
        "skeleton scribbles.",
        features=builder_base.segmentation_features(),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Generated.
    config = self.builder_config
    if not isinstance(config, DemoConfig):
      raise ValueError("DemoSegmentation needs config=DemoConfig(...)")
    _check(config.height, config.width, config.num_classes)
    self.info.metadata.update(
        classes=list(CLASS_NAMES[:config.num_classes]),
        num_classes=config.num_classes, scribbles=SCRIBBLES,
        max_fraction=config.max_fraction, seed=config.seed,
        height=config.height, width=config.width,
        noise_std=config.noise_std, labeled_fraction={})
    return {split: self._generate_examples(split) for split in SPLITS
            if config.split_size(split) > 0}

  def _generate_examples(self, split: str
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    from potts_jax.data import scribbles as scribbles_lib  # pylint: disable=g-import-not-at-top

    source = DemoSource(split, self.builder_config)
    fractions = []
    for index in range(len(source)):
      example = source[index]
      fractions.append(scribbles_lib.labeled_fraction(
          example["scribbles"][..., 0], example["mask"][..., 0]))
      yield index, {
          "image": builder_base.encode_png(example["image"]),
          "mask": builder_base.encode_png(example["mask"][..., 0]),
          "scribbles": builder_base.encode_png(example["scribbles"][..., 0]),
          "name": example["name"],
      }
    self.info.metadata["labeled_fraction"][split] = dict(
        mean=float(np.mean(fractions)), min=float(np.min(fractions)),
        max=float(np.max(fractions)))


def config_name(**options: Any) -> str:
  """The default config name of ``options`` (fields of :class:`DemoConfig`).

  ``"default"`` for the defaults, else the non-default options in field
  order, e.g. ``"seed1-height64-num_classes4"`` (``.`` written ``p``).
  """
  defaults = DemoConfig(name="default")
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  fields = [f.name for f in dataclasses.fields(DemoConfig)
            if f.name not in base]
  unknown = set(options) - set(fields)
  if unknown:
    raise TypeError(f"unknown DemoConfig options {sorted(unknown)}")
  parts = [f"{key}{options[key]}" for key in fields
           if key in options and options[key] != getattr(defaults, key)]
  return "-".join(parts).replace(".", "p") if parts else "default"


def prepare(data_dir: str | pathlib.Path, *, name: str | None = None,
            version: str | None = None, **options: Any) -> DemoSegmentation:
  """Builds (or finds already built) the demo dataset.

  Args:
    data_dir: TFDS data directory to write to
      (``DATA_DIR/demo/<name>/<version>/``).
    name: the config name; :func:`config_name` of ``options`` by default
      (``"default"`` without options), so that different options never
      share a prepared directory.
    version: the config's version (``"1.0.0"`` by default).
    **options: fields of :class:`DemoConfig` (``seed``, ``height``,
      ``width``, ``num_classes``, ``train_size``, ``val_size``,
      ``noise_std``, ``max_fraction``).

  Returns:
    The prepared builder; ``builder.as_data_source(split)`` reads it.
  """
  if name is None:
    name = config_name(**options)
  config = DemoConfig(name=name, version=version, **options)
  builder = DemoSegmentation(config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def load(data_dir: str | pathlib.Path, name: str = "default",
         version: str | None = None, *,
         decoders: dict[str, Any] | None = None) -> dict[str, Any]:
  """Random-access sources of a prepared demo dataset.

  Args:
    data_dir: the TFDS data directory given to :func:`prepare`.
    name: the config name.
    version: the version; the newest prepared one by default.
    decoders: TFDS decoders, e.g. ``{"image": tfds.decode.SkipDecoding()}``.

  Returns:
    ``{split: data source}`` (:func:`builder_base.load_prepared`).
  """
  return builder_base.load_prepared(data_dir, DemoSegmentation.name, name,
                                    version, decoders=decoders)
