r"""Held-out check of the VOC solver settings, 4-NN against dense, on GrabCut.

Runs the pseudo-label solver (no network) with the settings of
``configs/voc.py`` (H_CCE + P_CD, 4-NN, η 0.3, λ 6, σ_rgb 9, 200 steps of
0.075) and of ``configs/voc.py:neighborhood=dense,relaxation=q`` on GrabCut
photos (``../shared/data/grabcut``) with their real set-1 scribbles and the
weak colour unary of :mod:`potts_jax.tools.segment` (per-class colour histograms
of the scribbled pixels), at long side ``--long_side``: per photo and
setting, the solver's energy at its start and end, the classes left in
``argmax y`` and the error rate (% of the pixels of the mask, 255 ignored,
mislabelled at the working size).

Sizes. The settings are for VOC's ~500 px photos; a photo shrunk by
``r = long_side / its long side`` keeps their meaning with σ_xy × r (the
bandwidth in pixels) and, for ``dense``, λ / r² (a pixel's dense affinity
``Σ_j w_ij`` shrinks as r² with the pixel count under the Gaussian, while
its unary and 4-NN terms do not). ``dense_scale_factor`` is not used: at
these sizes the filter runs at full size.

``--before`` adds ``dense_before``: the dense setting as it was, λ 6 on a
sum over ordered pairs (λ 12 in today's unordered-pair convention).

Run::

  python benchmarks/dense_setting.py                  # 37 held-out photos
  python benchmarks/dense_setting.py --limit 8 --before --long_side 64

Prints one JSON line per photo and setting, then the mean error, the count
of energies lowered and of photos keeping both classes, per setting.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import voc  # noqa: E402  pylint: disable=g-import-not-at-top
from potts_jax.tools import segment  # noqa: E402
from potts_jax.tools import segment_benchmark  # noqa: E402
from potts_jax import solver  # noqa: E402
from potts_jax.data import folder  # noqa: E402

GRABCUT = REPO.parent / "shared" / "data" / "grabcut"
#: The former λ of neighborhood=dense: 6 on ordered pairs = 12 on unordered.
BEFORE_LAM = 2 * 6.0


def settings(before: bool = False) -> dict[str, dict]:
  """``{name: config}``: the 4-NN recipe, the dense setting (and the former)."""
  out = {"nn4": voc.get_config(""),
         "dense": voc.get_config("neighborhood=dense,relaxation=q")}
  if before:
    old = voc.get_config("neighborhood=dense,relaxation=q")
    old.energy.lam = BEFORE_LAM
    out["dense_before"] = old
  return out


def solver_options(config, ratio: float) -> dict:
  """Keywords of :func:`potts_jax.solver.solve` for ``config`` on a photo
  shrunk by ``ratio`` (module docstring: σ_xy × r, dense λ / r²)."""
  e = config.energy
  options = dict(relaxation=e.relaxation, cross_entropy=e.cross_entropy,
                 neighborhood=e.neighborhood, eta=e.eta, lam=e.lam,
                 sigma_rgb=e.sigma_rgb, num_steps=config.solver.num_steps,
                 step_size=config.solver.step_size)
  if e.neighborhood == "dense":
    options.update(sigma_xy=e.sigma_xy * ratio, lam=e.lam / ratio**2)
  return options


def run(names, long_side: int = 64, before: bool = False, root=GRABCUT,
        pad_to: int = 64) -> list[dict]:
  """One row per photo and setting (module docstring).

  Photos are padded (label 254, in no term) to multiples of ``pad_to`` so
  that photos of similar sizes share one compilation.

  Returns:
    dicts with ``name``, ``setting``, ``error`` (%), ``energy_start``,
    ``energy_end`` and ``classes`` (those in ``argmax y``).
  """
  configs = settings(before)
  rows = []
  for name in names:
    full_size = max(folder.load_example(root, name).mask.shape)
    ex = folder.load_example(root, name, scribble_set="set1",
                             long_side=long_side)
    h, w = ex.scribbles.shape
    logits = segment.unary_logits(ex.image, ex.scribbles, 2,
                                  **segment.DEFAULTS)
    image, scribbles = segment_benchmark._pad(ex.image, ex.scribbles, pad_to)  # pylint: disable=protected-access
    logits = np.pad(logits, ((0, image.shape[0] - h),
                             (0, image.shape[1] - w), (0, 0)))
    for setting, config in configs.items():
      y, energies = solver.solve_with_energies(
          logits[None], image[None], scribbles[None],
          **solver_options(config, max(h, w) / full_size))
      pred = np.asarray(y[0, :h, :w]).argmax(-1)
      energies = np.asarray(energies)[:, 0]
      error, _ = segment_benchmark.error_and_iou(pred, ex.mask)
      rows.append(dict(name=name, setting=setting, error=round(error, 3),
                       energy_start=float(energies[0]),
                       energy_end=float(energies[-1]),
                       classes=np.unique(pred).tolist()))
  return rows


def summary(rows) -> dict[str, dict]:
  """Per setting: photos, mean error, energies lowered, both classes kept."""
  out = {}
  for setting in dict.fromkeys(r["setting"] for r in rows):
    r = [x for x in rows if x["setting"] == setting]
    out[setting] = dict(
        photos=len(r), mean_error=round(float(np.mean(
            [x["error"] for x in r])), 3),
        lowered=sum(x["energy_end"] < x["energy_start"] for x in r),
        both_classes=sum(x["classes"] == [0, 1] for x in r))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--long_side", type=int, default=64)
  parser.add_argument("--limit", type=int, default=None)
  parser.add_argument("--before", action="store_true")
  args = parser.parse_args()
  names = segment_benchmark.heldout_names(folder.names(GRABCUT))[:args.limit]
  rows = run(names, args.long_side, args.before)
  for row in rows:
    print(json.dumps(row))
  print(json.dumps(summary(rows)))


if __name__ == "__main__":
  main()
