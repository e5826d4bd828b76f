"""What every TFDS builder of ``potts_jax.data`` shares.

- :class:`ArrayRecordBuilder`: a ``GeneratorBasedBuilder`` that writes
  ``array_record`` (the one TFDS file format that needs no TensorFlow) and
  resolves its ``code_path`` without ``importlib_resources``.
- :func:`segmentation_features`: the features of every example (``image``
  ``[H, W, 3]``, ``mask`` and ``scribbles`` ``[H, W, 1]`` uint8 PNG, ``name``).
- :func:`open_image`, :func:`open_label`, :func:`encode_png`,
  :func:`read_list`: file readers that keep the source bytes when they can (so
  reading back is byte-identical) and name the file in every error.
- :func:`load_prepared`: data sources of a prepared dataset, newest version.

Errors raised while generating examples abort ``download_and_prepare``; TFDS
writes into a temporary directory renamed only at the end, so a failed
preparation leaves no readable dataset.
"""

from __future__ import annotations

import inspect
import io
import pathlib
import re
from typing import Any

from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from potts_jax.data import folder
class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the project's builders: ``array_record`` by default."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """The subclass's file (TFDS's default resolves it through
    ``importlib_resources``, which is not installed)."""
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, file_format: str = "array_record", **kwargs: Any):
    """Takes the usual builder arguments.

    Args:
      file_format: TFDS file format; ``array_record`` (the default here) is
        the one that needs no TensorFlow.
      **kwargs: ``config``, ``data_dir``, ``version``, ... of
        ``tfds.core.GeneratorBasedBuilder``.
    """
    super().__init__(file_format=file_format, **kwargs)

  ROOT_NAME: str | None = None
  """How errors name the source folder (the builder's name by default)."""

  def _root(self, dl_manager) -> pathlib.Path:
    """The source folder: the config's ``root``, else TFDS's ``manual_dir``.

    Raises:
      FileNotFoundError: naming the folder when it does not exist.
    """
    what = self.ROOT_NAME or self.name
    configured = getattr(self.builder_config, "root", "")
    if configured:
      root = pathlib.Path(configured)
    else:
      try:
        root = pathlib.Path(dl_manager.manual_dir)
      except AssertionError as e:  # TFDS's "does not exist or is empty".
        raise FileNotFoundError(f"{what} root not found: {e}") from e
    if not root.is_dir():
      raise FileNotFoundError(f"{what} root {root} not found")
    return root


def segmentation_features() -> tfds.features.FeaturesDict:
  """``image`` ``[H, W, 3]``, ``mask``/``scribbles`` ``[H, W, 1]``, ``name``."""
  label = lambda: tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                      encoding_format="png")
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
      "mask": label(),
      "scribbles": label(),
      "name": tfds.features.Text(),
  })


def decode_error(path: pathlib.Path, error: Exception) -> ValueError:
  return ValueError(f"{path}: cannot decode image ({error})")


def encode_png(image: Image.Image | np.ndarray) -> bytes:
  """PNG bytes of a PIL image or a ``[H, W]``/``[H, W, 3]`` uint8 array."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def open_image(path: pathlib.Path) -> tuple[bytes, np.ndarray]:
  """Reads a photo.

  Args:
    path: a JPEG or PNG file.

  Returns:
    ``(encoded, pixels)``: the bytes to store (the file's own when it is an
    RGB JPEG/PNG, else a PNG of the RGB conversion) and ``[H, W, 3]`` uint8.

  Raises:
    FileNotFoundError: naming ``path``.
    ValueError: naming ``path`` when it does not decode.
  """
  if not path.is_file():
    raise FileNotFoundError(f"image {path} not found")
  data = path.read_bytes()
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.format in ("JPEG", "PNG") and image.mode == "RGB":
        return data, np.asarray(image)
      rgb = image.convert("RGB")
  except (OSError, SyntaxError, ValueError) as e:
    raise decode_error(path, e) from e
  return encode_png(rgb), np.asarray(rgb)


def open_label(path: pathlib.Path, size: tuple[int, int]
               ) -> tuple[bytes, np.ndarray]:
  """Reads a label PNG of the given ``(width, height)``.

  Returns:
    ``(encoded 'L' PNG, [H, W] uint8)``: the file's own bytes when it is an
    8-bit 'L' PNG; palette PNGs are stored as their indices.

  Raises:
    FileNotFoundError: naming ``path``.
    ValueError: naming ``path`` when it does not decode or its size is not
      ``size``.
  """
  try:
    label = folder.label_image(path, size)
    label.load()
    pixels = np.asarray(label, np.uint8)
    if label.format == "PNG" and label.mode == "L":
      return path.read_bytes(), pixels
  except (FileNotFoundError, ValueError):
    raise
  except (OSError, SyntaxError) as e:
    raise decode_error(path, e) from e
  return encode_png(pixels), pixels


def read_list(path: pathlib.Path) -> list[str]:
  """The non-empty, stripped lines of a text file (an id list)."""
  if not path.is_file():
    raise FileNotFoundError(f"list {path} not found")
  return [line.strip() for line in path.read_text().splitlines()
          if line.strip()]


def load_prepared(data_dir: str | pathlib.Path, builder_name: str,
                  config_name: str, version: str | None = None, *,
                  decoders: dict[str, Any] | None = None) -> dict[str, Any]:
  """Random-access sources of a prepared dataset (no source files needed).

  Args:
    data_dir: the TFDS data directory it was prepared into.
    builder_name: e.g. ``"folder"``, ``"voc_scribble"``.
    config_name: the builder config's name.
    version: the version; the newest prepared one by default.
    decoders: TFDS decoders, e.g. ``{"image": tfds.decode.SkipDecoding()}``
      for the stored bytes.

  Returns:
    ``{split: data source}``; ``source[i]`` is a dict of numpy arrays.

  Raises:
    FileNotFoundError: naming the directory when nothing is prepared there.
  """
  base = pathlib.Path(data_dir) / builder_name / config_name
  if version is None:
    prepared = sorted((p for p in base.glob("*")
                       if re.fullmatch(r"\d+\.\d+\.\d+", p.name)
                       and (p / "dataset_info.json").is_file()),
                      key=lambda p: tfds.core.Version(p.name))
    if not prepared:
      raise FileNotFoundError(f"no prepared dataset in {base}")
    path = prepared[-1]
  else:
    path = base / version
    if not (path / "dataset_info.json").is_file():
      raise FileNotFoundError(f"no prepared dataset in {path}")
  builder = tfds.builder_from_directory(str(path))
  return {split: builder.as_data_source(split, decoders=decoders)
          for split in builder.info.splits}
