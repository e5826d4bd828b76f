"""Pictures of soft labels: palette mixing, scribble overlays, figure helpers.

matplotlib's object API only (``Figure`` + Agg canvas): no pyplot state is
created or left behind, so these are safe in notebooks, tests and servers.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# PASCAL VOC colour map (class i -> RGB), the usual choice for label images.
def palette(num_classes: int) -> np.ndarray:
  """``[K, 3]`` uint8 VOC-style palette (bit-interleaved class index)."""
  colours = np.zeros((num_classes, 3), np.uint8)
  for i in range(num_classes):
    c, r, g, b = i, 0, 0, 0
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    colours[i] = (r, g, b)
  return colours


def _distributions(y) -> np.ndarray:
  y = np.asarray(y, np.float64)
  if y.ndim < 1 or y.shape[-1] < 1:
    raise ValueError(f"y must be [..., K] distributions; got shape {y.shape}")
  return y


def entropy(y: np.ndarray) -> np.ndarray:
  """Normalised Shannon entropy ``-Σ_k y_k ln y_k / ln K`` in ``[0, 1]``.

  0 at a one-hot label, 1 at the uniform distribution (``0 ln 0 = 0``).

  Args:
    y: ``[..., K]`` distributions.

  Returns:
    ``[...]`` float64 (all zeros when ``K = 1``).
  """
  y = _distributions(y)
  k = y.shape[-1]
  safe = np.where(y > 0, y, 1.0)
  h = -np.sum(np.where(y > 0, y * np.log(safe), 0.0), axis=-1)
  return np.clip(h / np.log(k), 0.0, 1.0) if k > 1 else np.zeros_like(h)


def colorize(y: np.ndarray, colours: np.ndarray | None = None, *,
             shade: bool = False) -> np.ndarray:
  """Soft labels as colours: the palette mixed by probability (paper Fig. 7).

  Args:
    y: ``[H, W, K]`` distributions.
    colours: ``[K, 3]`` palette; VOC's by default.
    shade: entropy as brightness: each colour is scaled by
      ``1 - entropy(y)`` (:func:`entropy`), so one-hot labels keep their
      colour and uniform ones turn black.

  Returns:
    ``[H, W, 3]`` uint8.
  """
  y = _distributions(y)
  colours = palette(y.shape[-1]) if colours is None else np.asarray(colours)
  if colours.ndim != 2 or colours.shape != (y.shape[-1], 3):
    raise ValueError(f"colours must be [K, 3] with K = {y.shape[-1]} (the "
                     f"classes of y); got shape {colours.shape}")
  rgb = y @ colours.astype(np.float64)
  if shade:
    rgb = rgb * (1.0 - entropy(y))[..., None]
  return np.clip(rgb, 0, 255).astype(np.uint8)


def overlay_labels(
    image: np.ndarray,
    labels: np.ndarray,
    colours: np.ndarray | None = None,
    alpha: float = 1.0,
) -> np.ndarray:
  """Draws labeled pixels (class ids; 254/255 left out) over ``image``.

  Args:
    image: ``[H, W, 3]`` in 0..255.
    labels: ``[H, W]`` int, 255 unlabeled and 254 padding not drawn.
    colours: ``[K, 3]`` palette (VOC's by default, sized to the labels).
    alpha: opacity of the drawn labels.

  Returns:
    ``[H, W, 3]`` uint8.
  """
  labels = np.asarray(labels)
  drawn = labels < 254
  if colours is None:
    colours = palette(int(labels[drawn].max()) + 1 if drawn.any() else 1)
  out = np.asarray(image, np.float64).copy()
  ink = np.asarray(colours, np.float64)[np.where(drawn, labels, 0)]
  out[drawn] = (1 - alpha) * out[drawn] + alpha * ink[drawn]
  return np.clip(out, 0, 255).astype(np.uint8)


def save_figure(fig: Figure, path: str, dpi: int = 100,
                data: dict[str, np.ndarray] | None = None) -> None:
  """Writes ``fig`` to ``path`` with the Agg canvas (no pyplot).

  Args:
    fig: the figure.
    path: image file (its suffix picks the format).
    dpi: resolution.
    data: if given, also writes these arrays (the figure's numbers) with
      ``np.savez`` next to the image, as ``<path without suffix>.npz``.
  """
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  if data is not None:
    np.savez(os.path.splitext(path)[0] + ".npz",
             **{k: np.asarray(v) for k, v in data.items()})


def solver_figure(
    image: np.ndarray,
    labels: np.ndarray,
    sigma: np.ndarray,
    y: np.ndarray,
    energies: np.ndarray,
    title: str = "",
) -> Figure:
  """Image + scribbles, prediction σ, pseudo-labels y, argmax, energy curve.

  Args:
    image: ``[H, W, 3]`` 0..255.
    labels: ``[H, W]`` scribbles (255 unlabeled).
    sigma: ``[H, W, K]`` the unary's distributions.
    y: ``[H, W, K]`` solver output.
    energies: ``[T + 1]`` energy after each step.
    title: figure title.

  Returns:
    A matplotlib ``Figure``.
  """
  colours = palette(y.shape[-1])
  fig = Figure(figsize=(16, 3.4))
  panels = [
      ("image + scribbles", overlay_labels(image, labels, colours)),
      ("unary σ (soft)", colorize(sigma, colours)),
      ("pseudo-labels y (soft)", colorize(y, colours)),
      ("argmax y", colours[np.argmax(y, axis=-1)]),
  ]
  for i, (name, picture) in enumerate(panels):
    ax = fig.add_subplot(1, 5, i + 1)
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(name, fontsize=9)
    ax.axis("off")
  ax = fig.add_subplot(1, 5, 5)
  ax.plot(np.arange(len(energies)), energies)
  ax.set_xlabel("solver step")
  ax.set_ylabel("energy E(y)")
  ax.set_title("energy", fontsize=9)
  ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def training_figure(examples: list[dict[str, np.ndarray]],
                    title: str = "") -> Figure:
  """One row per example: image + scribbles, ground truth, y, prediction.

  Args:
    examples: dicts with ``image`` ``[H, W, 3]`` 0..255, ``scribbles`` and
      ``mask`` ``[H, W]`` (255 unlabeled / ignore, 254 padding), and
      ``pseudo_labels`` and ``prediction`` ``[H, W, K]`` distributions.
    title: figure title.

  Returns:
    A matplotlib ``Figure``.
  """
  k = examples[0]["prediction"].shape[-1]
  colours = palette(k)
  names = ("image + scribbles", "ground truth", "pseudo-labels y (soft)",
           "prediction (soft)")
  fig = Figure(figsize=(2.6 * len(names), 2.6 * len(examples) + 0.4))
  for row, ex in enumerate(examples):
    panels = (overlay_labels(ex["image"], ex["scribbles"], colours),
              overlay_labels(np.zeros_like(ex["image"]), ex["mask"], colours),
              colorize(ex["pseudo_labels"], colours),
              colorize(ex["prediction"], colours))
    for col, picture in enumerate(panels):
      ax = fig.add_subplot(len(examples), len(names),
                           row * len(names) + col + 1)
      ax.imshow(picture, interpolation="nearest")
      if row == 0:
        ax.set_title(names[col], fontsize=9)
      ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def soft_label_figure(columns: dict[str, np.ndarray], *,
                      image: np.ndarray | None = None,
                      scribbles: np.ndarray | None = None,
                      mask: np.ndarray | None = None,
                      colours: np.ndarray | None = None,
                      entropy_row: bool = True, title: str = "",
                      size: float = 2.2) -> Figure:
  """Soft labels side by side: colours on top, entropy below (paper Fig. 5, 7).

  Args:
    columns: name -> ``[H, W, K]`` distributions, one column each.
    image: optional ``[H, W, 3]`` photo (0..255) shown first, with
      ``scribbles`` ``[H, W]`` (255 unlabeled) drawn over it.
    scribbles: see ``image``.
    mask: optional ``[H, W]`` ground truth (255 ignore), drawn half
      transparent over ``image`` in a column of its own.
    colours: ``[K, 3]`` palette (VOC's by default).
    entropy_row: add a second row with :func:`entropy` (0 black, 1 white).
    title: figure title.
    size: inches per panel.

  Returns:
    A matplotlib ``Figure``.
  """
  if not columns:
    raise ValueError("columns is empty; expected name -> [H, W, K] labels")
  k = next(iter(columns.values())).shape[-1]
  colours = palette(k) if colours is None else np.asarray(colours)
  if image is None and (scribbles is not None or mask is not None):
    raise ValueError("scribbles and mask are drawn over the image; pass "
                     "image too")
  pictures = []
  if image is not None:
    drawn = np.full(np.shape(image)[:2], 255) if scribbles is None else (
        scribbles)
    pictures.append(("image + scribbles",
                     overlay_labels(image, drawn, colours), None))
  if mask is not None:
    pictures.append(("ground truth",
                     overlay_labels(image, mask, colours, alpha=0.6), None))
  pictures += [(name, colorize(y, colours), entropy(y))
               for name, y in columns.items()]
  rows = 2 if entropy_row else 1
  fig = Figure(figsize=(size * len(pictures), size * rows * 0.75 + 0.4),
               layout="constrained")
  for col, (name, picture, ent) in enumerate(pictures):
    ax = fig.add_subplot(rows, len(pictures), col + 1)
    ax.imshow(picture, interpolation="nearest")
    ax.set_title(name, fontsize=9)
    ax.axis("off")
    if entropy_row:
      ax = fig.add_subplot(rows, len(pictures), len(pictures) + col + 1)
      ax.axis("off")
      if ent is not None:
        ax.imshow(ent, cmap="gray", vmin=0.0, vmax=1.0,
                  interpolation="nearest")
        ax.set_title(f"entropy (mean {ent.mean():.3f})", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig
