"""Figure helpers of ``notebooks/loss_landscapes.ipynb``: landscapes as plots.

Contour maps of two-pixel potentials (paper Figure 1), level sets on the
3-class simplex (paper Figure 2) and grids of line plots (paper Figure 3,
energy curves). The numbers come from :mod:`potts_jax.plots.landscapes`; soft-label
pictures are in :mod:`potts_jax.plots.viz`. Like :mod:`potts_jax.plots.viz`, only
matplotlib's object API (``Figure``): no pyplot state is created; write a
figure with :func:`potts_jax.plots.viz.save_figure`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def _grid(fig: Figure, n: int, ncols: int | None):
  ncols = n if ncols is None else min(ncols, n)
  nrows = -(-n // ncols)
  return [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]


def _levels(values: np.ndarray, vmax: float | None, levels: int):
  """Contour levels from the minimum to ``vmax`` (default: the 95th
  percentile, so that capped infinite values do not flatten the map)."""
  finite = values[np.isfinite(values)]
  lo = float(finite.min())
  hi = float(np.percentile(finite, 95)) if vmax is None else float(vmax)
  return np.linspace(lo, max(hi, lo + 1e-9), levels)


def pair_contours_figure(x: np.ndarray, panels: dict[str, np.ndarray], *,
                         xlabel: str = "x_i", ylabel: str = "x_j",
                         vmax: float | None = None, levels: int = 12,
                         ncols: int | None = None, title: str = "") -> Figure:
  """Contour maps of two-pixel potentials (paper Figure 1).

  Args:
    x: ``[N]`` the grid on both axes.
    panels: name -> ``[N, N]`` values, entry ``[a, b]`` at ``(x[a], x[b])``
      (``x[a]`` on the horizontal axis).
    xlabel, ylabel: axis names.
    vmax: top contour level (default: each panel's 95th percentile).
    levels: number of contour levels.
    ncols: panels per row (all in one row by default).
    title: figure title.

  Returns:
    A matplotlib ``Figure``.
  """
  x = np.asarray(x, np.float64)
  for name, v in panels.items():
    if np.shape(v) != (x.size, x.size):
      raise ValueError(f"panel {name!r} must be [{x.size}, {x.size}] (the "
                       f"grid x twice); got shape {np.shape(v)}")
  ncols = len(panels) if ncols is None else min(ncols, len(panels))
  fig = Figure(figsize=(2.9 * ncols, 2.6 * -(-len(panels) // ncols) + 0.4),
               layout="constrained")
  for ax, (name, v) in zip(_grid(fig, len(panels), ncols), panels.items()):
    v = np.asarray(v, np.float64).T  # rows: x_j (vertical), cols: x_i.
    lv = _levels(v, vmax, levels)
    filled = ax.contourf(x, x, v, levels=lv, cmap="viridis", extend="max")
    ax.contour(x, x, v, levels=lv, colors="k", linewidths=0.4)
    fig.colorbar(filled, ax=ax, shrink=0.8, format="%.2g")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_aspect("equal")
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def simplex_xy(points: np.ndarray) -> np.ndarray:
  """Barycentric ``[..., 3]`` → ``[..., 2]`` in the triangle A (0, 0),
  B (1, 0), C (½, √3/2)."""
  points = np.asarray(points, np.float64)
  if points.ndim < 1 or points.shape[-1] != 3:
    raise ValueError(f"points must be [..., 3] (three classes); got shape "
                     f"{points.shape}")
  return np.stack([points[..., 1] + 0.5 * points[..., 2],
                   np.sqrt(3.0) / 2.0 * points[..., 2]], -1)


def simplex_figure(points: np.ndarray, panels: dict[str, np.ndarray], *,
                   marks: dict[str, np.ndarray] | None = None,
                   vmax: float | None = None, levels: int = 12,
                   ncols: int | None = None, title: str = "",
                   vertex_names: tuple[str, str, str] = ("A", "B", "C")
                   ) -> Figure:
  """Level sets of functions on the 3-class simplex (paper Figure 2).

  Args:
    points: ``[M, 3]`` barycentric points (e.g. a simplex lattice).
    panels: name -> ``[M]`` values at ``points``.
    marks: name -> ``[N, 3]`` points drawn as white dots on that panel.
    vmax: top level (default: each panel's 95th percentile).
    levels: number of levels.
    ncols: panels per row.
    title: figure title.
    vertex_names: labels of the vertices (1,0,0), (0,1,0), (0,0,1).

  Returns:
    A matplotlib ``Figure``.
  """
  from matplotlib.tri import Triangulation  # pylint: disable=g-import-not-at-top
  xy = simplex_xy(points)
  for name, v in panels.items():
    if np.shape(v) != (len(xy),):
      raise ValueError(f"panel {name!r} must be [{len(xy)}] (one value per "
                       f"point); got shape {np.shape(v)}")
  tri = Triangulation(xy[:, 0], xy[:, 1])
  corners = simplex_xy(np.eye(3))
  ncols = len(panels) if ncols is None else min(ncols, len(panels))
  fig = Figure(figsize=(2.7 * ncols, 2.5 * -(-len(panels) // ncols) + 0.4),
               layout="constrained")
  for ax, (name, v) in zip(_grid(fig, len(panels), ncols), panels.items()):
    lv = _levels(np.asarray(v, np.float64), vmax, levels)
    filled = ax.tricontourf(tri, v, levels=lv, cmap="viridis", extend="max")
    ax.tricontour(tri, v, levels=lv, colors="k", linewidths=0.4)
    fig.colorbar(filled, ax=ax, shrink=0.7, format="%.2g")
    ax.plot(*np.vstack([corners, corners[:1]]).T, color="k", linewidth=0.8)
    for corner, label, off in zip(corners, vertex_names,
                                  ((-0.06, -0.06), (0.02, -0.06), (-0.02, 0.03))):
      ax.text(corner[0] + off[0], corner[1] + off[1], label, fontsize=8)
    for mark in np.atleast_2d((marks or {}).get(name, np.zeros((0, 3)))):
      ax.plot(*simplex_xy(mark), "o", color="w", markeredgecolor="k",
              markersize=5, clip_on=False, zorder=5)
    ax.set_title(name, fontsize=9, pad=14)
    ax.set_aspect("equal")
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def line_panels_figure(panels: list[dict], *, ncols: int | None = None,
                       title: str = "", size: tuple[float, float] = (3.4, 2.6)
                       ) -> Figure:
  """A grid of line plots, one dict per panel.

  Args:
    panels: each a dict with ``x`` ``[T]`` and ``curves`` (label -> ``[T]``),
      and optionally ``title``, ``xlabel``, ``ylabel``, ``ylim`` (pair),
      ``yscale`` (e.g. ``"log"``) and ``hlines`` (label -> value, dashed).
    ncols: panels per row (all in one row by default).
    title: figure title.
    size: inches per panel.

  Returns:
    A matplotlib ``Figure``.
  """
  if not panels:
    raise ValueError("panels is empty; expected at least one panel dict")
  ncols = len(panels) if ncols is None else min(ncols, len(panels))
  nrows = -(-len(panels) // ncols)
  fig = Figure(figsize=(size[0] * ncols, size[1] * nrows + 0.4),
               layout="constrained")
  for ax, panel in zip(_grid(fig, len(panels), ncols), panels):
    x = np.asarray(panel["x"])
    for i, (label, y) in enumerate(panel["curves"].items()):
      if np.shape(y) != x.shape:
        raise ValueError(f"curve {label!r} has shape {np.shape(y)}; expected "
                         f"{x.shape} (the shape of x)")
      # Line styles cycle too, so that curves lying on each other show.
      ax.plot(x, y, label=label, linewidth=1.2,
              linestyle=("-", "--", "-.", ":")[i // 2 % 4])
    for label, value in panel.get("hlines", {}).items():
      ax.axhline(value, linestyle="--", color="k", linewidth=0.8, label=label)
    if "yscale" in panel:
      ax.set_yscale(panel["yscale"])
    if "ylim" in panel:
      ax.set_ylim(*panel["ylim"])
    ax.set_title(panel.get("title", ""), fontsize=9)
    ax.set_xlabel(panel.get("xlabel", ""), fontsize=8)
    ax.set_ylabel(panel.get("ylabel", ""), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig
