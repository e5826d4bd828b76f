"""Tables and plot of ``benchmarks/solver_options.py``'s JSON lines.

Reads the rows of a quality run (``kind: row``) and of ``--timing``
(``kind: timing``); used by that script's ``--plot`` and ``--summary``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from potts_jax.solver import native  # noqa: E402


def _rows(path: Path, kind: str) -> list[dict]:
  """The JSON lines of ``path`` with ``"kind": kind``."""
  rows = (json.loads(l) for l in path.read_text().splitlines())
  return [r for r in rows if r.get("kind") == kind]


def _cases(rows: list[dict]) -> list[str]:
  """The cases of ``rows``, in the order they were measured."""
  return list(dict.fromkeys(r["case"] for r in rows))


def _step_ms(timing: list, shape, case: str) -> dict:
  """ms per step of each curve's method at ``shape`` from ``--timing`` rows.

  ``gd`` and ``adam`` take the loop ``kernel="auto"`` picks at that ``K``;
  ``adam_coarse`` maps to ``(fine ms per step, coarse overhead ms)``.
  """
  sel = [t for t in timing if t["shape"] == list(shape) and t["case"] == case]
  if not sel:
    return {}
  ms = sel[-1]["min"]["ms_per_step"]
  loop = "native" if shape[-1] >= native.MIN_CLASSES else "xla"
  out = {m: (ms[m], 0.0) for m in ms}
  out["gd"] = (ms[f"gd_{loop}"], 0.0)
  out["adam"] = (ms[f"adam_{loop}"], 0.0)
  steps = sel[-1]["steps"]
  out["adam_coarse"] = (ms["adam_xla" if loop == "xla" else "adam_native"],
                        steps * (ms["adam_coarse"] - out["adam"][0]))
  return out


def plot(path: Path, out_png: Path, timing_path: Path | None = None):
  """Median gap vs steps and vs seconds (``--timing`` rows, min ms/step)."""
  from matplotlib.figure import Figure
  rows = _rows(path, "row")
  timing = [] if timing_path is None else _rows(timing_path, "timing")
  fig = Figure(figsize=(12, 8.5), layout="constrained")
  cases = _cases(rows)
  axes = fig.subplots(len(cases), 2, squeeze=False)
  for i, case in enumerate(cases):
    for dataset, style in (("grabcut", "-"), ("camvid", "--")):
      sel = [r for r in rows if r["case"] == case and r["dataset"] == dataset]
      if not sel:
        continue
      steps = sel[0]["steps"]
      ms = _step_ms(timing, sel[0]["shape"], case)
      for j, method in enumerate(sel[0]["curves"]):
        gap = [statistics.median(r["curves"][method]["gap"][n] for r in sel)
               for n in range(len(steps))]
        gap = np.maximum(gap, 1e-6)
        color = f"C{j}"
        axes[i, 0].loglog(steps, gap, style, color=color, marker="o",
                          label=f"{method} ({dataset}, {len(sel)})")
        if method in ms:
          per_step, overhead = ms[method]
          seconds = [(n * per_step + overhead) / 1e3 for n in steps]
          axes[i, 1].loglog(seconds, gap, style, color=color, marker="o")
    for ax, xlabel in zip(axes[i], (
        "steps (adam_coarse: fine steps, after 25 coarse ones)",
        "seconds per solve (B=1, 128², ms/step of --timing × steps)")):
      ax.set_xlabel(xlabel)
      ax.set_ylabel("median relative energy gap")
      ax.set_title(f"{case.replace('_', ' + ').upper()}: solid GrabCut "
                   "(K=2), dashed CamVid (K=11)")
      ax.grid(True, which="both", alpha=0.3)
    if rows:
      steps = rows[0]["steps"]
      axes[i, 0].set_xticks(steps, [str(n) for n in steps])
      axes[i, 0].set_xticks([], minor=True)
  fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside right",
             fontsize=7)
  fig.savefig(out_png, dpi=90)


def _reach(rows, method, steps, target):
  """Per row, the fewest steps in ``steps`` with energy <= ``target``."""
  out = []
  for r in rows:
    energy = r["curves"][method]["energy"]
    hit = [n for n, e in zip(steps, energy) if e <= target(r) * (1 + 1e-6)]
    out.append(hit[0] if hit else None)
  return out


def summarize(path: Path, timing_path: Path | None = None):
  """Prints the RESULTS.md tables of ``path``: quality, then cost.

  The cost table comes from ``timing_path`` (``--timing`` rows) when given,
  else from the rows' own timings (first image per dataset, measured during
  the run).
  """
  rows = _rows(path, "row")
  print("| data | case | method | images | median gap @25 / 50 / 100 / 200 "
        "/ 400 | E ≤ GD@200 by 25 / 50 / 100 / 200 steps | Jaccard mean @50 "
        "/ 200 / 400 | min @200 | ≥ 0.99 @200 |")
  print("|---|---|---|---:|---|---|---|---:|---:|")
  timing = {}
  for dataset in ("grabcut", "camvid"):
    for case in _cases(rows):
      sel = [r for r in rows if r["dataset"] == dataset and r["case"] == case]
      if not sel:
        continue
      steps = sel[0]["steps"]
      gd200 = lambda r: r["curves"]["gd"]["energy"][steps.index(200)]
      for method in sel[0]["curves"]:
        gap = [statistics.median(r["curves"][method]["gap"][i] for r in sel)
               for i in range(len(steps))]
        reach = _reach(sel, method, steps, gd200)
        counts = " / ".join(
            f"{sum(x is not None and x <= n for x in reach)}/{len(sel)}"
            for n in (25, 50, 100, 200))
        jac = low = good = ""
        if "jaccard" in sel[0]["curves"][method]:
          at = lambda n: [r["curves"][method]["jaccard"][steps.index(n)]
                          for r in sel]
          jac = " / ".join(f"{statistics.fmean(at(n)):.4f}"
                           for n in (50, 200, 400))
          low = f"{min(at(200)):.4f}"
          good = f"{sum(j >= 0.99 for j in at(200))}/{len(sel)}"
        print(f"| {dataset} | {case} | {method} | {len(sel)} | "
              + " / ".join(f"{g:.1e}" for g in gap)
              + f" | {counts} | {jac} | {low} | {good} |")
      timed = [r["step_s"] for r in sel if r.get("step_s")]
      if timed:
        timing[(dataset, case, tuple(sel[0]["shape"]))] = {
            m: 1e3 * statistics.median(t[m] for t in timed) for m in timed[0]}
  if timing_path is not None:
    _timing_table(timing_path)
  elif timing:
    methods = list(next(iter(timing.values())))
    print()
    print("| data | case | shape | " + " | ".join(methods) + " |")
    print("|---|---|---|" + "---:|" * len(methods))
    for (dataset, case, shape), ms in timing.items():
      cells = [f"{ms[m]:.2f} ({ms[m] / ms['gd']:.2f}×)" for m in methods]
      print(f"| {dataset} | {case} | {'x'.join(map(str, shape))} | "
            + " | ".join(cells) + " |")


def _timing_table(path: Path):
  """Prints ms per step (min over rounds) and ratios of ``--timing`` rows."""
  rows = _rows(path, "timing")
  methods = list(rows[0]["min"]["ms_per_step"])
  print()
  print("| B×S×S×K | case | load | " + " | ".join(methods) + " |")
  print("|---|---|---:|" + "---:|" * len(methods))
  for r in rows:
    ms, best = r["min"]["ms_per_step"], r["min"]["vs_best_gd"]
    cells = [f"{ms[m]:.2f} ({best[m]:.2f}×)" for m in methods]
    shape = "×".join(str(x) for x in (r["shape"][0], r["shape"][1],
                                       r["shape"][2], r["shape"][3]))
    print(f"| {shape} | {r['case']} | {r['loadavg'][0]:.1f} | "
          + " | ".join(cells) + " |")
