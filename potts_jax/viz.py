"""Pictures of soft labels: palette mixing, scribble overlays, figure helpers.

matplotlib's object API only (``Figure`` + Agg canvas): no pyplot state is
created or left behind, so these are safe in notebooks, tests and servers.
"""

from __future__ import annotations

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


def colorize(y: np.ndarray, colours: np.ndarray | None = None) -> np.ndarray:
  """Soft labels as colours: the palette mixed by probability (paper Fig. 7).

  Args:
    y: ``[H, W, K]`` distributions.
    colours: ``[K, 3]`` palette; VOC's by default.

  Returns:
    ``[H, W, 3]`` uint8.
  """
  y = np.asarray(y, np.float64)
  colours = palette(y.shape[-1]) if colours is None else np.asarray(colours)
  return np.clip(y @ colours.astype(np.float64), 0, 255).astype(np.uint8)


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


def save_figure(fig: Figure, path: str, dpi: int = 100) -> None:
  """Writes ``fig`` to ``path`` with the Agg canvas (no pyplot)."""
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")


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
