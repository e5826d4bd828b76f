"""Examples from a local dataset folder in the layout of ``shared/data``.

Layout (GrabCut-50 and CamVid in the project's shared data follow it)::

  ROOT/images/<name>.jpg|png      RGB photo
  ROOT/masks/<name>.png           'L' PNG, class ids, 255 ignore
  ROOT/scribbles/<set>/<name>.png 'L' PNG, class ids, 255 unlabeled (optional)

All label images have the size of their photo. Every missing or mismatched
file raises an error naming it.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

from potts_jax.labels import PADDING
class Example(NamedTuple):
  """One image with its labels, as numpy arrays."""

  name: str
  image: np.ndarray  # [H, W, 3] float32 in 0..255.
  mask: np.ndarray  # [H, W] int32 ground truth, 255 ignore.
  scribbles: np.ndarray  # [H, W] int32, 255 unlabeled.


def names(root: str | pathlib.Path) -> list[str]:
  """Image names of ``root``: ``index.tsv``'s first column, else ``images/``."""
  root = pathlib.Path(root)
  index = root / "index.tsv"
  if index.is_file():
    rows = index.read_text().splitlines()[1:]
    return [row.split("\t")[0] for row in rows if row.strip()]
  if not (root / "images").is_dir():
    raise FileNotFoundError(f"{root} has neither index.tsv nor images/")
  return sorted(p.stem for p in (root / "images").iterdir())


def image_path(root: pathlib.Path, name: str) -> pathlib.Path:
  """``root/images/<name>.*`` (the first match); raises when there is none."""
  found = sorted((root / "images").glob(name + ".*"))
  if not found:
    raise FileNotFoundError(f"no image {root / 'images' / name}.* found")
  return found[0]


def label_image(path: pathlib.Path, size: tuple[int, int]) -> Image.Image:
  """The 'L'/'P' label PNG at ``path``, decoded; raises naming it when
  missing (FileNotFoundError), not a readable image (random bytes,
  truncated, a decompression bomb), of another mode, or not of ``size``
  (``(width, height)``, PIL's order) (ValueError). Mode and size are checked
  on the header, before the pixels are decoded."""
  if not path.is_file():
    raise FileNotFoundError(f"label file {path} not found")
  try:
    label = Image.open(path)
    if label.mode not in ("L", "P"):
      raise ValueError(f"{path}: expected a single-channel PNG ('L'), got "
                       f"mode {label.mode!r}")
    if label.size != size:
      raise ValueError(f"{path}: size {label.size} differs from its image's "
                       f"{size}")
    label.load()
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f"{path}: cannot decode image ({type(e).__name__}: "
                     f"{e})") from e
  return label


def load_example(
    root: str | pathlib.Path,
    name: str,
    *,
    scribble_set: str | None = "set1",
    long_side: int | None = None,
) -> Example:
  """Loads ``name`` from ``root``, optionally resized.

  Args:
    root: the dataset folder.
    name: base name of the files.
    scribble_set: sub-folder of ``scribbles/`` (``None`` for ``scribbles/``
      itself, as in the VOC fixture).
    long_side: resize so that the longer side has this many pixels (photo
      bilinear with antialiasing, labels nearest); ``None`` keeps the size.

  Returns:
    An :class:`Example`.
  """
  root = pathlib.Path(root)
  image = Image.open(image_path(root, name)).convert("RGB")
  size = image.size
  mask = label_image(root / "masks" / f"{name}.png", size)
  folder = root / "scribbles" if scribble_set is None else (
      root / "scribbles" / scribble_set)
  scribbles = label_image(folder / f"{name}.png", size)
  if long_side is not None:
    scale = long_side / max(size)
    new = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    image = image.resize(new, Image.BILINEAR, reducing_gap=None)
    mask = mask.resize(new, Image.NEAREST)
    scribbles = scribbles.resize(new, Image.NEAREST)
  return Example(name, np.asarray(image, np.float32),
                 np.asarray(mask, np.int32), np.asarray(scribbles, np.int32))


def pad_batch(
    examples: Sequence[Example], shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Stacks examples of different sizes, padding labels with 254.

  Args:
    examples: the examples.
    shape: ``(H, W)`` to pad to; the largest example's by default.

  Returns:
    ``(images [B, H, W, 3], scribbles [B, H, W], masks [B, H, W])``; padded
    pixels have image 0, scribble 254 and mask 255.
  """
  if shape is None:
    shape = (max(e.image.shape[0] for e in examples),
             max(e.image.shape[1] for e in examples))
  h, w = shape
  images = np.zeros((len(examples), h, w, 3), np.float32)
  scribbles = np.full((len(examples), h, w), PADDING, np.int32)
  masks = np.full((len(examples), h, w), 255, np.int32)
  for b, e in enumerate(examples):
    eh, ew = e.scribbles.shape
    if eh > h or ew > w:
      raise ValueError(f"example {e.name!r} of size {(eh, ew)} does not fit "
                       f"in {shape}")
    images[b, :eh, :ew] = e.image
    scribbles[b, :eh, :ew] = e.scribbles
    masks[b, :eh, :ew] = e.mask
  return images, scribbles, masks
