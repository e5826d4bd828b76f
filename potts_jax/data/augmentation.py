"""One training example: checked, flipped, scaled, padded, cropped, blurred.

The augmentation of the rloss / robust-trust-region lineage
(``RandomHorizontalFlip``, ``RandomScaleCrop``, ``RandomGaussianBlur``), in
numpy / PIL only (it runs in grain's workers; see
:mod:`potts_jax.data.pipeline`):

1. random horizontal flip of image, mask and scribbles together;
2. random scale so that the short side is ``s * crop_size``, ``s`` uniform in
   ``scale_range`` (image bilinear, labels nearest: labels are never
   interpolated);
3. padding at the bottom and right to at least ``crop_size`` (image 0, labels
   254 = :data:`potts_jax.labels.PADDING`, never 255);
4. a random ``crop_size x crop_size`` crop;
5. with probability ``blur_prob`` a Gaussian blur of the image (PIL radius
   uniform in ``[0, 1)``, as in rloss).

:func:`read_indexed` reads example ``i`` of a source; an example that cannot
be read or decoded raises :class:`ExampleError` naming the dataset, the split
and the example (:func:`describe_source`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from PIL import ImageFilter

from potts_jax.labels import PADDING
LABEL_KEYS = ("mask", "scribbles")


class ExampleError(ValueError):
  """An example of a source cannot be read, decoded or checked."""


def _name(example: dict[str, Any]) -> str:
  name = example.get("name", "")
  if isinstance(name, np.ndarray):
    name = name.item()
  if isinstance(name, bytes):
    name = name.decode("utf-8", "replace")
  return str(name)


def read_example(example: dict[str, Any]) -> dict[str, Any]:
  """Checks one source example and brings it to the pipeline's layout.

  Args:
    example: a dict with ``image`` ``[H, W, 3]`` uint8, ``mask`` and
      ``scribbles`` ``[H, W]`` or ``[H, W, 1]`` (uint8 class ids, 255
      ignore / unlabeled) and optionally ``name``.

  Returns:
    A dict with ``image`` ``[H, W, 3]`` uint8, ``mask`` and ``scribbles``
    ``[H, W]`` uint8 and ``name`` (``str``, ``""`` when absent).

  Raises:
    KeyError: a key is missing.
    ValueError: a shape or dtype is not as above.
  """
  name = _name(example)
  for key in ("image",) + LABEL_KEYS:
    if key not in example:
      raise KeyError(f"example {name!r} has no {key!r} (keys: "
                     f"{sorted(example)})")
  image = np.asarray(example["image"])
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"example {name!r}: image must be [H, W, 3] uint8, got "
                     f"{image.shape} {image.dtype}")
  out = {"image": image, "name": name}
  for key in LABEL_KEYS:
    label = np.asarray(example[key])
    if label.ndim == 3 and label.shape[-1] == 1:
      label = label[..., 0]
    if label.shape != image.shape[:2] or label.dtype != np.uint8:
      raise ValueError(f"example {name!r}: {key} must be [H, W] = "
                       f"{list(image.shape[:2])} (or [H, W, 1]) uint8, got "
                       f"{label.shape} {label.dtype}")
    out[key] = label
  return out


def describe_source(source: Any) -> str:
  """The dataset and split of a source, as errors name them.

  A TFDS data source (the prepared datasets): ``dataset voc_scribble/
  augmented/1.0.0, split 'train', in DATA_DIR``; a source with a ``split``
  attribute (the demo): ``DemoSource, split 'train'``; any other: its type
  and length.
  """
  info = getattr(source, "dataset_info", None)
  split = getattr(source, "split", None)
  if info is not None:
    return (f"dataset {info.full_name}, split {str(split)!r}, in "
            f"{info.data_dir}")
  try:
    size = f" of {len(source)} examples"
  except TypeError:
    size = ""
  if split is not None:
    return f"{type(source).__name__}{size}, split {str(split)!r}"
  return f"a {type(source).__name__} source{size}"


def read_indexed(source: Any, index: int) -> dict[str, Any]:
  """:func:`read_example` of ``source[index]``, its errors naming the example.

  Raises:
    ExampleError: naming the dataset and split (:func:`describe_source`), the
      index and, when it was decoded, the example's name, with the cause
      chained: the source could not read or decode the record (a corrupt
      file, an undecodable image) or :func:`read_example` rejected it.
  """
  try:
    example = source[index]
  except Exception as e:  # pylint: disable=broad-except
    raise ExampleError(
        f"cannot read example {index} of {describe_source(source)}: "
        f"{type(e).__name__}: {e}") from e
  try:
    return read_example(example)
  except Exception as e:  # pylint: disable=broad-except
    name = f" ({_name(example)!r})" if isinstance(example, dict) else ""
    raise ExampleError(
        f"example {index}{name} of {describe_source(source)} is invalid: "
        f"{type(e).__name__}: {e}") from e


def _resize(array: np.ndarray, size: tuple[int, int],
            resample: int) -> np.ndarray:
  """Resizes ``[H, W]`` or ``[H, W, 3]`` uint8 to ``size = (h, w)``."""
  h, w = size
  return np.asarray(Image.fromarray(array).resize((w, h), resample,
                                                  reducing_gap=None))


def augment(
    example: dict[str, Any],
    rng: np.random.Generator,
    *,
    crop_size: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    blur_prob: float = 0.0,
) -> dict[str, np.ndarray]:
  """The training augmentation of one example (see the module docstring).

  Args:
    example: an output of :func:`read_example`.
    rng: the example's generator; the only source of randomness.
    crop_size: side of the square output.
    scale_range: ``(low, high)``; the short side becomes ``s * crop_size``
      with ``s`` uniform in it.
    flip: whether to flip horizontally with probability 1/2.
    blur_prob: probability of a Gaussian blur of the image.

  Returns:
    ``image`` ``[crop, crop, 3]`` float32 in 0..255, ``mask`` and
    ``scribbles`` ``[crop, crop]`` int32; padding pixels have image 0 and
    labels 254.
  """
  image, mask, scribbles = (example["image"], example["mask"],
                            example["scribbles"])
  # Draw every random number up front, in a fixed order.
  do_flip = rng.random() < 0.5
  s = rng.uniform(scale_range[0], scale_range[1])
  crop_u = rng.random(2)
  do_blur = rng.random() < blur_prob
  radius = rng.random()

  if flip and do_flip:
    image, mask, scribbles = image[:, ::-1], mask[:, ::-1], scribbles[:, ::-1]
    image, mask, scribbles = (np.ascontiguousarray(a)
                              for a in (image, mask, scribbles))
  h, w = mask.shape
  factor = s * crop_size / min(h, w)
  size = (max(1, round(h * factor)), max(1, round(w * factor)))
  if size != (h, w):
    image = _resize(image, size, Image.BILINEAR)
    mask = _resize(mask, size, Image.NEAREST)
    scribbles = _resize(scribbles, size, Image.NEAREST)
  h, w = size
  ph, pw = max(h, crop_size), max(w, crop_size)
  if (ph, pw) != (h, w):
    image = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)))
    mask = np.pad(mask, ((0, ph - h), (0, pw - w)), constant_values=PADDING)
    scribbles = np.pad(scribbles, ((0, ph - h), (0, pw - w)),
                       constant_values=PADDING)
  y0 = int(crop_u[0] * (ph - crop_size + 1))
  x0 = int(crop_u[1] * (pw - crop_size + 1))
  window = (slice(y0, y0 + crop_size), slice(x0, x0 + crop_size))
  image, mask, scribbles = image[window], mask[window], scribbles[window]
  if do_blur:
    image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).filter(
        ImageFilter.GaussianBlur(radius=radius)))
  return {"image": image.astype(np.float32),
          "mask": mask.astype(np.int32),
          "scribbles": scribbles.astype(np.int32)}
