"""How close ``potts_jax.solver.solve`` gets to the exact ``H_Q + P_Q`` optimum.

Paper Appendix B checks its gradient-descent solver against the closed-form
quadratic ("random walker") solution: soft Jaccard 99.2% at 200 steps. This
script repeats that check on the real GrabCut photos with their real set1
scribbles (K = 2), resized to ``--long-side`` px and padded (label 254, in no
term) to a square so that every image shares one compiled solver, with smooth
random logits (a gaussian-filtered noise field, std ``--logit-std``; no
network). For every image and number of steps it compares the solver
(``relaxation='q', cross_entropy='q'``, plain descent, step 0.075, η 0.3,
λ 6; or the update ``--method``, see :data:`METHODS`) with
:func:`potts_jax.baselines.quadratic.solve_exact`::

  python benchmarks/solver_quality.py                     # 50 images
  python benchmarks/solver_quality.py --num-images 5 --steps 100,1000
  python benchmarks/solver_quality.py --out quality.jsonl # resumable
  python benchmarks/solver_quality.py --method adam --steps 25,50,100,200

``benchmarks/solver_options.py`` compares all update options at once (energy
gaps on GrabCut and CamVid, both cases, timings).

Prints one JSON object per (image, steps): soft Jaccard over the unlabeled
pixels, the relative energy gap ``(E(y) - E(y*)) / |E(y*)|`` (both energies
from :func:`potts_jax.solver.energy`, float32) and timings; then one summary
object per number of steps (mean / median / min Jaccard, mean / median / max
gap). With ``--out`` rows are appended to that file as they are measured and
rows already there (same settings) are not measured again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from potts_jax import xla_flags  # noqa: E402

xla_flags.prefer_threaded_cpu_loops()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from potts_jax.baselines import quadratic  # noqa: E402
from potts_jax import solver  # noqa: E402
from potts_jax.data import folder, synthetic  # noqa: E402

PADDING, UNLABELED = folder.PADDING, 255
#: ``--method`` -> solver options (``gd`` uses ``--step-size``).
METHODS = {
    "gd": dict(),
    "adam": dict(method="adam"),
    "adam_coarse": dict(method="adam", warm_start="coarse",
                        warm_start_steps=25),
    "mirror_momentum": dict(method="mirror_momentum"),
}


def problem(root: Path, name: str, index: int, args):
  """One padded ``[1, S, S, ...]`` problem: logits, image, labels."""
  example = folder.load_example(root, name, long_side=args.long_side)
  h, w = example.scribbles.shape
  s = args.long_side
  logits = np.zeros((1, s, s, 2), np.float32)
  logits[0, :h, :w] = synthetic.smooth_logits(
      h, w, 2, seed=args.seed + index, std=args.logit_std,
      smoothness=args.smooth)
  image, labels, _ = folder.pad_batch([example], (s, s))
  return logits, image, labels


def settings(args) -> dict:
  keys = ("long_side", "logit_std", "smooth", "seed", "eta", "lam",
          "step_size")
  out = {k: getattr(args, k) for k in keys}
  if args.method != "gd":  # rows of plain descent predate --method
    out["method"] = args.method
  return out


def emit(row: dict, out) -> None:
  line = json.dumps(row)
  print(line, flush=True)
  if out is not None:
    out.write(line + "\n")
    out.flush()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
  parser.add_argument("--num-images", type=int, default=50)
  parser.add_argument("--steps", default="50,100,200,400,1000")
  parser.add_argument("--long-side", type=int, default=128)
  parser.add_argument("--logit-std", type=float, default=1.0)
  parser.add_argument("--smooth", type=float, default=8.0,
                      help="gaussian sigma (px) of the random logit field")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--eta", type=float, default=0.3)
  parser.add_argument("--lam", type=float, default=6.0)
  parser.add_argument("--step-size", type=float, default=0.075)
  parser.add_argument("--method", default="gd", choices=sorted(METHODS))
  parser.add_argument("--out", type=Path, default=None,
                      help="JSONL file to append rows to and resume from")
  args = parser.parse_args(argv)
  steps_list = [int(s) for s in args.steps.split(",")]
  root = args.data / "grabcut"
  if not (root / "index.tsv").is_file():
    parser.error(f"no GrabCut data at {root} (see shared/data/README.md)")
  names = [line.split("\t")[0]
           for line in (root / "index.tsv").read_text().splitlines()[1:]]
  names = names[:args.num_images]
  config = settings(args)

  done = {}
  if args.out is not None and args.out.exists():
    for line in args.out.read_text().splitlines():
      row = json.loads(line)
      if row.get("kind") == "row" and row["settings"] == config:
        done[(row["image"], row["steps"])] = row
  out = open(args.out, "a") if args.out is not None else None
  emit({"kind": "env", "jax": jax.__version__, "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "settings": config, "steps": steps_list, "images": len(names),
        "resumed_rows": len(done)}, None)
  options = dict(relaxation="q", cross_entropy="q", neighborhood="nn4",
                 eta=args.eta, lam=args.lam)
  for index, name in enumerate(names):
    todo = [n for n in steps_list if (name, n) not in done]
    if not todo:
      continue
    logits, image, labels = problem(root, name, index, args)
    start = time.perf_counter()
    exact = quadratic.solve_exact(logits, image, labels, eta=args.eta,
                                  lam=args.lam)
    exact_s = time.perf_counter() - start
    e_exact = float(solver.energy(exact, logits, image, labels, **options)[0])
    free = labels == UNLABELED
    for num_steps in todo:
      start = time.perf_counter()
      y = solver.solve(logits, image, labels, num_steps=num_steps,
                       step_size=args.step_size, **METHODS[args.method],
                       **options)
      y = np.asarray(jax.block_until_ready(y))
      solve_s = time.perf_counter() - start
      e = float(solver.energy(y, logits, image, labels, **options)[0])
      row = {
          "kind": "row", "image": name, "steps": num_steps,
          "jaccard": quadratic.soft_jaccard(y, exact, free),
          "energy_gap": (e - e_exact) / abs(e_exact),
          "energy": e, "energy_exact": e_exact,
          "free_pixels": int(free.sum()),
          "scribbled_pixels": int(((labels != UNLABELED)
                                   & (labels != PADDING)).sum()),
          "solve_s": round(solve_s, 4), "exact_s": round(exact_s, 4),
          "settings": config,
      }
      done[(name, num_steps)] = row
      emit(row, out)
  for num_steps in steps_list:
    rows = [done[(n, num_steps)] for n in names if (n, num_steps) in done]
    jac = [r["jaccard"] for r in rows]
    gap = [r["energy_gap"] for r in rows]
    emit({"kind": "summary", "steps": num_steps, "images": len(rows),
          "jaccard_mean": statistics.fmean(jac),
          "jaccard_median": statistics.median(jac), "jaccard_min": min(jac),
          "gap_mean": statistics.fmean(gap), "gap_median": statistics.median(gap),
          "gap_max": max(gap), "settings": config}, None)
  if out is not None:
    out.close()


if __name__ == "__main__":
  main()
