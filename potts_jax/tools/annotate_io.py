"""Requests and files of the annotation tool: names, scribble rasters, writes.

A scribble raster travels as ``{"width": W, "height": H, "runs": [v0, n0,
v1, n1, ...]}`` (row-major run-length code, :func:`encode_runs`) or as
``{"png": BASE64}`` (a single-channel PNG; a ``data:`` URL prefix is
allowed), values ``0..K-1`` for a class and 255 for unlabeled. Every check
raises :class:`RequestError` naming the field and what was expected.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np
from PIL import Image

from potts_jax import labels as label_codes

UNLABELED = label_codes.UNLABELED


class RequestError(ValueError):
  """A refused request: HTTP ``status``, the ``field`` at fault, a message."""

  def __init__(self, status: int, field: str, message: str):
    super().__init__(message)
    self.status, self.field = status, field


def check_name(name: Any, field: str = "name") -> str:
  """``name`` if it is a bare file name (no path part, no leading dot)."""
  if not isinstance(name, str) or not name:
    raise RequestError(400, field, f"{field}: expected a non-empty string "
                       f"(an image name), got {name!r}")
  if ("/" in name or "\\" in name or "\0" in name or name.startswith(".")
      or len(name) > 255):
    raise RequestError(400, field, f"{field}: {name!r} has a path component, "
                       "'..' or a leading dot; expected a bare image name "
                       "as listed by GET /api/images")
  return name


def encode_runs(raster: np.ndarray) -> list[int]:
  """Row-major run-length code ``[v0, n0, v1, n1, ...]`` of ``[H, W]``."""
  flat = np.asarray(raster, np.int64).reshape(-1)
  starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
  lengths = np.diff(np.r_[starts, flat.size])
  return np.stack([flat[starts], lengths], -1).reshape(-1).tolist()


def _check_size(width: Any, height: Any, size: tuple[int, int]) -> None:
  """422 unless ``(width, height)`` is the photo's ``size``."""
  if (width, height) != tuple(size):
    raise RequestError(422, "scribbles", f"scribbles: size {width}x{height} "
                       f"(WxH); expected the photo's {size[0]}x{size[1]}")


def _decode_runs(spec: dict[str, Any], size: tuple[int, int]) -> np.ndarray:
  """``[H, W]`` int64 raster of a run-length code (see :func:`encode_runs`)."""
  width, height, runs = spec.get("width"), spec.get("height"), spec["runs"]
  for key, value in (("width", width), ("height", height)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise RequestError(400, f"scribbles.{key}", f"scribbles.{key}: "
                         f"expected a positive integer, got {value!r}")
  _check_size(width, height, size)
  if (not isinstance(runs, list) or len(runs) % 2 or not all(
      isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**31
      for v in runs)):
    raise RequestError(400, "scribbles.runs", "scribbles.runs: expected a "
                       "flat list of integers [value, length, value, "
                       "length, ...]")
  pairs = np.asarray(runs, np.int64).reshape(-1, 2)
  if pairs.size and pairs[:, 1].min() < 1:
    raise RequestError(400, "scribbles.runs", "scribbles.runs: every run "
                       "length must be >= 1")
  total = int(pairs[:, 1].sum())
  if total != width * height:
    raise RequestError(422, "scribbles.runs", f"scribbles.runs: the lengths "
                       f"add up to {total} pixels; expected width x height = "
                       f"{width} x {height} = {width * height}")
  return np.repeat(pairs[:, 0], pairs[:, 1]).reshape(height, width)


def _decode_png(data: Any, size: tuple[int, int]) -> np.ndarray:
  """``[H, W]`` raster of a base64 single-channel PNG of ``size``."""
  if not isinstance(data, str):
    raise RequestError(400, "scribbles.png", "scribbles.png: expected a "
                       f"base64 string, got {type(data).__name__}")
  try:
    raw = base64.b64decode(data.split(",", 1)[-1], validate=True)
    with Image.open(io.BytesIO(raw)) as img:
      if img.format != "PNG" or img.mode not in ("L", "P"):
        raise RequestError(422, "scribbles.png", "scribbles.png: expected a "
                           "single-channel PNG ('L' or 'P'), got "
                           f"{img.format} mode {img.mode!r}")
      _check_size(*img.size, size)
      return np.asarray(img, np.int64)
  except (binascii.Error, OSError, SyntaxError, ValueError) as e:
    if isinstance(e, RequestError):
      raise
    raise RequestError(422, "scribbles.png", "scribbles.png: not a base64 "
                       f"PNG ({e})") from None


def decode_scribbles(spec: Any, size: tuple[int, int],
                     num_classes: int) -> np.ndarray:
  """Decodes and checks the ``scribbles`` field of a request.

  Args:
    spec: ``{"width": W, "height": H, "runs": [v, n, ...]}`` or
      ``{"png": BASE64}`` (a single-channel PNG, data URL prefix allowed).
    size: the photo's ``(W, H)``; the raster must have it.
    num_classes: ``K``; values must be ``0..K-1`` or 255 (unlabeled).

  Returns:
    ``[H, W]`` uint8 scribbles.

  Raises:
    RequestError: naming the field and what was expected.
  """
  if not isinstance(spec, dict) or len({"runs", "png"} & set(spec)) != 1:
    raise RequestError(400, "scribbles", "scribbles: expected an object with "
                       "either 'runs' (and 'width', 'height') or 'png'")
  raster = (_decode_runs(spec, size) if "runs" in spec else
            _decode_png(spec["png"], size))
  bad = (raster != UNLABELED) & ((raster < 0) | (raster >= num_classes))
  if bad.any():
    values = np.unique(raster[bad])[:8].tolist()
    raise RequestError(422, "scribbles", f"scribbles: unknown class ids "
                       f"{values}; expected 0..{num_classes - 1} or "
                       f"{UNLABELED} (unlabeled)")
  return raster.astype(np.uint8)


def png_bytes(image: Image.Image) -> bytes:
  """``image`` encoded as PNG."""
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()
