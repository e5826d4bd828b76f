"""The annotation workspace: a photo folder, its saved labels, the solver.

:class:`Workspace` is what the HTTP server of :mod:`potts_jax.tools.annotate`
works on: it lists the photos of ``--images``, takes the scribble rasters
that the page sends (checked by :mod:`potts_jax.tools.annotate_io`), solves them
at the working size with :func:`potts_jax.tools.segment.segment`, and saves
photo, scribbles, mask, ``classes.txt`` and ``index.tsv`` into ``--out`` in
the layout of :mod:`potts_jax.data.folder` (every file written atomically).

Working size: a photo whose long side exceeds ``max_size`` is reduced as
:func:`potts_jax.data.folder.load_example` does (photo bilinear, scribbles
nearest, long side ``max_size``), then padded to ``max_size x max_size``
(image 0, scribbles :data:`potts_jax.labels.PADDING`, which takes part in no
term), so that every photo runs the one solver program compiled by
:meth:`Workspace.warm_up`. The mask is upsampled to the photo nearest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import shutil
import tempfile
import threading
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image

from potts_jax import labels as label_codes
from potts_jax.plots import viz
from potts_jax.tools import segment
from potts_jax.tools.annotate_io import RequestError
from potts_jax.files import atomic_write
from potts_jax.tools.annotate_io import check_name
from potts_jax.tools.annotate_io import png_bytes

#: File suffixes listed as photos (other files of the folder are ignored).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                  ".webp")
UNLABELED = label_codes.UNLABELED
#: Distinct stroke colours for classes 0..8 (the VOC palette beyond).
COLOURS = ((30, 144, 255), (255, 48, 48), (50, 205, 50), (255, 215, 0),
           (186, 85, 211), (255, 140, 0), (0, 206, 209), (255, 105, 180),
           (139, 69, 19))
DEFAULT_CLASSES = ("background", "foreground")
_EXIF_ORIENTATION = 0x0112


def palette(num_classes: int) -> np.ndarray:
  """``[K, 3]`` uint8 class colours (:data:`COLOURS`, then VOC's)."""
  colours = viz.palette(max(num_classes, len(COLOURS)))
  colours[:len(COLOURS)] = COLOURS
  return colours[:num_classes]


def read_classes(path: pathlib.Path) -> list[str]:
  """Class names of a ``classes.txt`` (one a line, blank lines dropped)."""
  names = [line.strip() for line in path.read_text().splitlines()]
  names = [n for n in names if n]
  if not 1 <= len(names) <= segment.MAX_CLASSES:
    raise ValueError(f"{path}: {len(names)} class names; expected 1.."
                     f"{segment.MAX_CLASSES}, one a line")
  return names


@dataclasses.dataclass(frozen=True)
class Photo:
  """One photo of the folder: base name, file, ``(W, H)``, PIL format."""

  name: str
  path: pathlib.Path
  size: tuple[int, int]
  format: str


def scan_photos(images: pathlib.Path) -> tuple[dict[str, Photo],
                                                dict[str, str]]:
  """The photos of a folder by name, and the unreadable files' reasons.

  Raises:
    FileNotFoundError: naming ``images`` when it is not a folder.
    ValueError: when two files share a base name (``a.jpg``, ``a.png``).
  """
  if not images.is_dir():
    raise FileNotFoundError(f"--images: folder {images} not found")
  photos, skipped = {}, {}
  for path in sorted(images.iterdir()):
    if (path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file()
        or path.name.startswith(".")):
      continue
    if path.stem in photos or path.stem in skipped:
      raise ValueError(f"{images}: two photos are named {path.stem!r}; "
                       "expected one file per base name")
    try:
      with Image.open(path) as img:
        photos[path.stem] = Photo(path.stem, path, img.size, img.format)
    except (OSError, SyntaxError, ValueError) as e:
      skipped[path.stem] = f"{path} is not an image PIL can read ({e})"
  return photos, skipped


class Workspace:
  """The photos of ``images``, saved into ``out`` (module docstring).

  Args:
    images: folder of photos.
    out: dataset folder written by :meth:`save`.
    classes: class names (``K = len(classes)``).
    scribble_set: sub-folder of ``out/scribbles/``.
    write_masks: also write ``out/masks/<name>.png``.
    max_size: working size: the long side solved, and the padded square.
    options: :func:`potts_jax.tools.segment.segment` options
      (:data:`potts_jax.tools.segment.DEFAULTS` by default).
  """

  def __init__(self, images: str | os.PathLike, out: str | os.PathLike,
               classes: Sequence[str] = DEFAULT_CLASSES, *,
               scribble_set: str = "set1", write_masks: bool = True,
               max_size: int = 240, options: dict[str, Any] | None = None):
    self.images, self.out = pathlib.Path(images), pathlib.Path(out)
    self.classes = list(classes)
    if not 1 <= len(self.classes) <= segment.MAX_CLASSES:
      raise ValueError(f"{len(self.classes)} classes; expected 1.."
                       f"{segment.MAX_CLASSES}")
    check_name(scribble_set, "--set")
    if max_size < 8:
      raise ValueError(f"--max_size={max_size}; expected >= 8 pixels")
    self.scribble_set, self.write_masks = scribble_set, write_masks
    self.max_size = max_size
    self.options = dict(segment.DEFAULTS, **(options or {}))
    self.photos, self.skipped = scan_photos(self.images)
    self.colours = palette(len(self.classes))
    self._solve_lock = threading.Lock()  # one solve at a time (2 CPUs).
    self._index_lock = threading.Lock()
    self._locks: dict[str, threading.Lock] = {}
    self._locks_lock = threading.Lock()
    self._work: dict[str, np.ndarray] = {}
    self._last: dict[str, tuple[str, np.ndarray]] = {}

  # --- reading ---------------------------------------------------------------

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def scribble_path(self, name: str) -> pathlib.Path:
    return self.out / "scribbles" / self.scribble_set / f"{name}.png"

  def photo(self, name: Any) -> Photo:
    """The photo called ``name``; 400/404/415 when it is not one."""
    name = check_name(name)
    if name in self.skipped:
      raise RequestError(415, "name", f"name: {self.skipped[name]}")
    if name not in self.photos:
      raise RequestError(404, "name", f"name: no image {name!r} in "
                         f"{self.images} (GET /api/images lists them)")
    return self.photos[name]

  def listing(self) -> dict[str, Any]:
    """The answer of ``GET /api/images`` (:mod:`potts_jax.tools.annotate`)."""
    rows = [dict(name=p.name, width=p.size[0], height=p.size[1],
                 labelled=self.scribble_path(p.name).is_file())
            for p in self.photos.values()]
    return dict(images=rows, total=len(rows),
                labelled=sum(r["labelled"] for r in rows),
                classes=self.classes, colours=self.colours.tolist(),
                set=self.scribble_set, max_size=self.max_size,
                skipped=self.skipped, options=self.options)

  def image_bytes(self, name: Any) -> tuple[bytes, str]:
    """``(bytes, content type)`` of the photo: the file's own when JPEG or
    PNG, else a PNG of its RGB conversion. Pixels are sent as stored, as the
    dataset reads them: a browser would turn a JPEG by its EXIF orientation,
    so such a JPEG is sent as a PNG without it."""
    photo = self.photo(name)
    with Image.open(photo.path) as img:
      turned = img.getexif().get(_EXIF_ORIENTATION, 1) != 1
      if photo.format in ("JPEG", "PNG") and not turned:
        return photo.path.read_bytes(), f"image/{photo.format.lower()}"
      return png_bytes(img.convert("RGB")), "image/png"

  def saved_scribbles(self, name: Any) -> np.ndarray:
    """``[H, W]`` uint8 saved strokes of ``name`` (all 255 when none)."""
    photo = self.photo(name)
    path = self.scribble_path(photo.name)
    width, height = photo.size
    if not path.is_file():
      return np.full((height, width), UNLABELED, np.uint8)
    with Image.open(path) as img:
      raster = np.asarray(img)
      mode = img.mode
    if mode not in ("L", "P") or raster.shape != (height, width):
      raise RequestError(409, "name", f"{path}: mode {mode!r} size "
                         f"{raster.shape[::-1]}; expected an 'L' PNG of the "
                         f"photo's {width}x{height}")
    bad = (raster != UNLABELED) & (raster >= self.num_classes)
    if bad.any():
      raise RequestError(409, "name", f"{path}: class ids "
                         f"{np.unique(raster[bad])[:8].tolist()}; expected "
                         f"0..{self.num_classes - 1} or 255")
    return raster.astype(np.uint8)

  # --- solving ---------------------------------------------------------------

  def working_size(self, size: tuple[int, int]) -> tuple[int, int]:
    """``(w, h)`` solved for a photo of ``size`` ``(W, H)``."""
    if max(size) <= self.max_size:
      return size
    scale = self.max_size / max(size)
    return (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))

  def _working_image(self, photo: Photo) -> np.ndarray:
    """``[h, w, 3]`` float32 photo at the working size (cached)."""
    if photo.name not in self._work:
      pixels = segment.read_image(str(photo.path))
      work = self.working_size(photo.size)
      if work != photo.size:
        pixels = np.asarray(Image.fromarray(pixels.astype(np.uint8)).resize(
            work, Image.BILINEAR, reducing_gap=None), np.float32)
      if len(self._work) > 16:
        self._work.clear()
      self._work[photo.name] = pixels
    return self._work[photo.name]

  def _solve_padded(self, image: np.ndarray, scribbles: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """``segment`` on ``[h, w]`` inputs padded to ``max_size`` squared."""
    h, w = scribbles.shape
    s = self.max_size
    pimage = np.zeros((s, s, 3), np.float32)
    pimage[:h, :w] = image
    pscrib = np.full((s, s), label_codes.PADDING, np.int32)
    pscrib[:h, :w] = scribbles
    with self._solve_lock:
      y, mask, energy, _ = segment.segment(pimage, pscrib, self.num_classes,
                                           **self.options)
    return y[:h, :w], mask[:h, :w], energy

  def warm_up(self) -> float:
    """Compiles the solver for the working square; returns the seconds."""
    start = time.perf_counter()
    s = self.max_size
    scribbles = np.full((s, s), UNLABELED, np.int32)
    scribbles[0, :self.num_classes] = np.arange(self.num_classes)
    self._solve_padded(np.zeros((s, s, 3), np.float32), scribbles)
    return time.perf_counter() - start

  def solve(self, name: Any, raster: np.ndarray) -> dict[str, Any]:
    """Solves the full-size ``raster`` ``[H, W]`` of ``name``.

    Returns:
      ``dict(mask=[h, w] int32, y=[h, w, K], energy, seconds, size=(w, h))``
      at the working size.
    """
    photo = self.photo(name)
    if not (raster != UNLABELED).any():
      raise RequestError(422, "scribbles", "scribbles: nothing is scribbled; "
                         f"expected class ids 0..{self.num_classes - 1} on "
                         "at least one pixel")
    image = self._working_image(photo)
    work = (image.shape[1], image.shape[0])
    small = raster if work == photo.size else np.asarray(
        Image.fromarray(raster).resize(work, Image.NEAREST))
    start = time.perf_counter()
    y, mask, energy = self._solve_padded(image, small.astype(np.int32))
    seconds = time.perf_counter() - start
    self._last[photo.name] = (hashlib.sha1(raster.tobytes()).hexdigest(), mask)
    return dict(mask=mask, y=y, energy=energy, seconds=seconds, size=work)

  # --- saving ----------------------------------------------------------------

  def _lock(self, name: str) -> threading.Lock:
    with self._locks_lock:
      return self._locks.setdefault(name, threading.Lock())

  def save(self, name: Any, raster: np.ndarray) -> dict[str, Any]:
    """Writes the photo, its strokes, mask, classes.txt and index.tsv."""
    photo = self.photo(name)
    mask = None
    if self.write_masks:
      digest = hashlib.sha1(raster.tobytes()).hexdigest()
      last = self._last.get(photo.name)
      small = last[1] if last and last[0] == digest else self.solve(
          photo.name, raster)["mask"]
      mask = np.asarray(Image.fromarray(small.astype(np.uint8)).resize(
          photo.size, Image.NEAREST))
    elif not (raster != UNLABELED).any():
      raise RequestError(422, "scribbles", "scribbles: nothing is scribbled; "
                         "expected at least one class id")
    written = {}
    with self._lock(photo.name):
      written["image"] = self._place_image(photo)
      path = self.scribble_path(photo.name)
      atomic_write(path, lambda f: Image.fromarray(raster, "L").save(f, "PNG"))
      written["scribbles"] = path
      if mask is not None:
        path = self.out / "masks" / f"{photo.name}.png"
        atomic_write(path, lambda f: Image.fromarray(mask, "L").save(f, "PNG"))
        written["mask"] = path
    with self._index_lock:
      self._write_classes()
      self._write_index(photo, int((raster != UNLABELED).sum()))
    listing = self.listing()
    return dict(name=photo.name, labelled=listing["labelled"],
                total=listing["total"],
                files={k: str(v.relative_to(self.out))
                       for k, v in written.items()})

  def _place_image(self, photo: Photo) -> pathlib.Path:
    """Links (else copies) the photo into ``out/images/``."""
    folder = self.out / "images"
    target = folder / photo.path.name
    others = [p for p in folder.glob(photo.name + ".*") if p != target]
    if others:
      raise RequestError(409, "name", f"name: {others[0]} is already in "
                         f"{folder} under another suffix than {target.name}")
    if target.exists() and os.path.samefile(target, photo.path):
      return target
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.")
    os.close(fd)
    os.unlink(tmp)
    try:
      os.link(photo.path, tmp)
    except OSError:
      shutil.copyfile(photo.path, tmp)
    os.replace(tmp, target)
    return target

  def _write_classes(self) -> None:
    path = self.out / "classes.txt"
    text = "".join(f"{c}\n" for c in self.classes)
    if not path.is_file() or path.read_text() != text:
      atomic_write(path, lambda f: f.write(text.encode()))

  def _write_index(self, photo: Photo, labelled: int) -> None:
    """Adds or updates ``photo``'s row of ``out/index.tsv`` (other columns
    and rows kept); its first column lists the dataset's names."""
    path = self.out / "index.tsv"
    column = f"{self.scribble_set}_labeled"
    header, rows = ["name", "width", "height", column], {}
    if path.is_file():
      lines = [l.split("\t") for l in path.read_text().splitlines() if l]
      if lines:
        header = lines[0] + ([column] if column not in lines[0] else [])
        rows = {r[0]: r + [""] * (len(header) - len(r)) for r in lines[1:]}
    values = dict(name=photo.name, width=photo.size[0],
                  height=photo.size[1], **{column: labelled})
    row = rows.get(photo.name, [""] * len(header))
    rows[photo.name] = [str(values.get(h, v)) for h, v in zip(header, row)]
    text = "".join("\t".join(r) + "\n" for r in [header, *rows.values()])
    atomic_write(path, lambda f: f.write(text.encode()))
