"""Convergence of the solver's update options (``method=``).

For every option of :data:`METHODS` (plain GD as in the paper, Adam on the
logits in the native/XLA loop, Adam with the coarse-to-fine warm start,
Nesterov SGD on the logits, mirror descent and mirror descent with momentum
on ``y``) and every number of steps in ``--steps``: the relative energy gap
``(E(y_n) - E_best) / |E_best|`` to the best energy any option reaches, the
soft Jaccard to :func:`potts_jax.baselines.quadratic.solve_exact` (Q+Q only) and the
wall time. ``E_best`` is the lowest of: every option's energy within
``max(--steps)`` steps; the reference ``--ref-method`` (Adam with a step
decaying from 0.1 to 0.001, native loop) after ``--ref-steps`` steps, run
for the cases in ``--ref-cases``; and for Q+Q the exact optimum (the global
minimum of that convex problem). Data: real GrabCut photos with their real
set1 scribbles (K = 2) and CamVid ``--camvid-split`` frames with synthetic
skeleton scribbles
(:func:`potts_jax.data.synthetic_scribbles.skeleton_scribbles`, 3%, K = 11),
resized to ``--long-side`` px, smooth random logits (std ``--logit-std``, no
network), η 0.3, λ 6, σ_rgb 9, nn4, cases H_CCE + P_CD
and H_Q + P_Q::

  python benchmarks/solver_options.py --grabcut 50 --camvid 20 \
      --out benchmarks/results/solver_options_full.jsonl
  python benchmarks/solver_options.py --timing "1,128,2;1,128,11;4,128,21" \
      > benchmarks/results/solver_options_full_timing.jsonl   # ms per step
  python benchmarks/solver_options.py --plot benchmarks/results/solver_options_full.jsonl \
      --timing-rows benchmarks/results/solver_options_full_timing.jsonl
  python benchmarks/solver_options.py --summary benchmarks/results/solver_options_full.jsonl \
      --timing-rows benchmarks/results/solver_options_full_timing.jsonl

Resumable: one JSON line per (dataset, image, case) is appended to ``--out``
and lines already there (same settings) are skipped, so a killed run loses
at most the line it was measuring. ``--plot`` draws
``benchmarks/solver_options.png`` (median gap vs steps and vs seconds) and
``--summary`` prints the RESULTS.md tables, both by
``benchmarks/solver_options_report.py``.
Energy curves come from :func:`potts_jax.solver.solve_with_energies` (the
XLA loop), Jaccards and times from :func:`potts_jax.solver.solve` (the
native CPU loop for ``gd`` and ``adam``). For ``adam_coarse`` a step count
``n`` means ``n`` fine steps after its 25 coarse ones (each ~1/4 of a fine
step); its measured seconds include them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
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
import optax  # noqa: E402
from PIL import Image  # noqa: E402

from potts_jax.baselines import quadratic  # noqa: E402
from potts_jax import solver  # noqa: E402
from potts_jax.data import folder, synthetic, synthetic_scribbles  # noqa: E402
from solver_options_report import plot, summarize  # noqa: E402

NESTEROV = optax.sgd(0.075, momentum=0.9, nesterov=True)
METHODS = {
    "gd": dict(),
    "gd_xla": dict(kernel="xla"),
    "adam": dict(method="adam"),
    "adam_xla": dict(method="adam", kernel="xla"),
    "adam_coarse": dict(method="adam", warm_start="coarse",
                        warm_start_steps=25),
    "nesterov": dict(method="optax", optimizer=NESTEROV),
    "mirror": dict(method="mirror"),
    "mirror_momentum": dict(method="mirror_momentum"),
}
# Same iterates as another option (only their time differs): no curves.
TIMING_ONLY = {"gd_xla": "gd", "adam_xla": "adam"}
# Adam with a step decaying 0.1 -> 0.001 (native loop); the warm-started one
# lands in lower minima of the non-convex CCE+CD problem than plain Adam.
REFERENCES = {
    "adam_decay": dict(method="adam", adam_step_size=0.1, adam_decay=0.01),
    "adam_coarse_decay": dict(method="adam", adam_step_size=0.1,
                              adam_decay=0.01, warm_start="coarse",
                              warm_start_steps=200),
}
CASES = {"cce_cd": dict(cross_entropy="cce", relaxation="cd"),
         "q_q": dict(cross_entropy="q", relaxation="q")}
COMMON = dict(neighborhood="nn4", eta=0.3, lam=6.0, sigma_rgb=9.0)


def grabcut(root: Path, count: int, side: int):
  for name in folder.names(root)[:count]:
    e = folder.load_example(root, name, long_side=side)
    yield name, e.image, e.scribbles, 2


def camvid(root: Path, count: int, side: int, split: str = "test"):
  names = (root / f"{split}.txt").read_text().split()[:count]
  for index, name in enumerate(names):
    image = Image.open(root / "images" / split / f"{name}.jpg").convert("RGB")
    mask = Image.open(root / "masks" / split / f"{name}.png")
    scale = side / max(image.size)
    size = (round(image.size[0] * scale), round(image.size[1] * scale))
    image = np.asarray(image.resize(size, Image.BILINEAR), np.float32)
    mask = np.asarray(mask.resize(size, Image.NEAREST), np.int32)
    labels = synthetic_scribbles.skeleton_scribbles(
        mask, seed=index).astype(np.int32)
    yield name, image, labels, 11


def emit(row, out):
  line = json.dumps(row)
  print(line, flush=True)
  if out is not None:
    out.write(line + "\n")
    out.flush()


def solve_seconds(args3, opts, steps, repeats=2):
  """Median wall seconds of ``solve`` per step count (compile excluded)."""
  run = lambda n: jax.block_until_ready(solver.solve(*args3, num_steps=n,
                                                     **opts))
  out = {}
  for n in steps:
    run(n)
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      run(n)
      times.append(time.perf_counter() - start)
    out[n] = statistics.median(times)
  return out


def pad(image, labels, side):
  """Pads to ``[side, side]`` (label 254, in no term): one compiled solver."""
  h, w = labels.shape
  image = np.pad(image, ((0, side - h), (0, side - w), (0, 0)))
  labels = np.pad(labels, ((0, side - h), (0, side - w)),
                  constant_values=folder.PADDING)
  return image, labels


def measure(name, image, labels, k, case, index, args, steps):
  h, w = labels.shape
  image, labels = pad(image, labels, args.long_side)
  logits = np.zeros((1, args.long_side, args.long_side, k), np.float32)
  logits[0, :h, :w] = synthetic.smooth_logits(h, w, k, seed=args.seed + index,
                                              std=args.logit_std)
  image, labels = image[None], labels[None]
  opts = dict(COMMON, **CASES[case])
  energy = lambda y: float(solver.energy(y, logits, image, labels, **opts)[0])
  candidates = {}
  exact = None
  if case == "q_q":
    exact = quadratic.solve_exact(logits, image, labels, eta=0.3, lam=6.0)
    candidates["exact"] = energy(exact)
  ref_s = None
  if case in args.ref_cases.split(","):
    start = time.perf_counter()
    y = solver.solve(logits, image, labels, num_steps=args.ref_steps,
                     **REFERENCES[args.ref_method], **opts)
    candidates[f"{args.ref_method}@{args.ref_steps}"] = energy(y)
    ref_s = time.perf_counter() - start
  curves = {}
  free = labels == 255
  for method, extra in METHODS.items():
    if method in TIMING_ONLY:
      continue
    _, e = solver.solve_with_energies(logits, image, labels,
                                      num_steps=max(steps), **extra, **opts)
    e = np.asarray(e)[:, 0]
    candidates[f"{method}@{max(steps)}"] = float(np.min(e))
    curves[method] = {"energy": [float(e[n]) for n in steps]}
    if exact is not None:
      curves[method]["jaccard"] = [
          quadratic.soft_jaccard(solver.solve(logits, image, labels,
                                              num_steps=n, **extra, **opts),
                                 exact, free) for n in steps]
  best = min(candidates.values())
  for c in curves.values():
    c["gap"] = [(e - best) / abs(best) for e in c["energy"]]
  seconds = step_s = None
  if index < args.time:
    seconds = {m: solve_seconds((logits, image, labels), dict(x, **opts),
                                steps)
               for m, x in METHODS.items()}
    step_s = {m: s[200] / 200 for m, s in seconds.items()}
    seconds = {m: [s[n] for n in steps] for m, s in seconds.items()}
  return {"kind": "row", "image": name, "case": case, "size": [h, w],
          "shape": list(logits.shape),
          "steps": steps, "best": best, "candidates": candidates,
          "curves": curves, "step_s": step_s, "seconds": seconds,
          "ref_s": ref_s,
          "scribbled": int(((labels < 254)).sum()), "free": int(free.sum())}


# The loops timed by --timing: every option, gd and adam in both loops, and
# Adam through optax (the way before method="adam").
TIMED = {
    "gd_native": dict(kernel="native"),
    "gd_xla": dict(kernel="xla"),
    "adam_native": dict(method="adam", kernel="native"),
    "adam_xla": dict(method="adam", kernel="xla"),
    "adam_coarse": dict(METHODS["adam_coarse"]),
    "optax_adam": dict(method="optax", optimizer=optax.adam(0.1)),
    "nesterov": METHODS["nesterov"],
    "mirror": METHODS["mirror"],
    "mirror_momentum": METHODS["mirror_momentum"],
}


def time_shape(spec: str, repeats: int, steps: int = 100):
  """Prints ms per step of every loop of :data:`TIMED` at ``B,S,K``.

  nn4, both cases, random image and smooth random logits, one scribbled
  row. The loops run interleaved (one call of each per round, ``repeats``
  rounds, compile excluded), so that load from other processes falls on all
  of them alike; both the median and the minimum over rounds are printed
  (the minimum is the least disturbed). ``adam_coarse`` includes its 25
  coarse steps.
  """
  b, side, k = (int(x) for x in spec.split(","))
  rng = np.random.default_rng(0)
  logits = np.stack([synthetic.smooth_logits(side, side, k, seed=i)
                     for i in range(b)])
  image = rng.uniform(0, 255, (b, side, side, 3)).astype(np.float32)
  labels = np.full((b, side, side), 255, np.int32)
  labels[:, side // 4, :] = rng.integers(0, k, (b, 1))
  run = lambda x, case: jax.block_until_ready(solver.solve(
      logits, image, labels, num_steps=steps, **x, **COMMON, **CASES[case]))
  for case in CASES:
    times = {m: [] for m in TIMED}
    for x in TIMED.values():  # compile
      run(x, case)
    for _ in range(repeats):
      for m, x in TIMED.items():
        start = time.perf_counter()
        run(x, case)
        times[m].append((time.perf_counter() - start) / steps)
    stats = {}
    for name, fn in (("median", statistics.median), ("min", min)):
      ms = {m: 1e3 * fn(t) for m, t in times.items()}
      best_gd = min(ms["gd_native"], ms["gd_xla"])
      stats[name] = {
          "ms_per_step": {m: round(v, 4) for m, v in ms.items()},
          "vs_gd_native": {m: round(v / ms["gd_native"], 3)
                           for m, v in ms.items()},
          "vs_gd_xla": {m: round(v / ms["gd_xla"], 3) for m, v in ms.items()},
          "vs_best_gd": {m: round(v / best_gd, 3) for m, v in ms.items()}}
    print(json.dumps({"kind": "timing", "shape": [b, side, side, k],
                      "case": case, "steps": steps, "repeats": repeats,
                      "jax": jax.__version__, "cpu_count": os.cpu_count(),
                      "loadavg": os.getloadavg(), **stats}), flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data", type=Path,
                      default=REPO.parent / "shared" / "data")
  parser.add_argument("--grabcut", type=int, default=50)
  parser.add_argument("--camvid", type=int, default=20)
  parser.add_argument("--camvid-split", default="test")
  parser.add_argument("--long-side", type=int, default=128)
  parser.add_argument("--steps", default="25,50,100,200,400")
  parser.add_argument("--ref-steps", type=int, default=20000)
  parser.add_argument("--ref-method", default="adam_coarse_decay",
                      choices=sorted(REFERENCES))
  parser.add_argument("--ref-cases", default="cce_cd",
                      help="cases that run the reference (Q+Q has its exact "
                      "optimum)")
  parser.add_argument("--logit-std", type=float, default=1.0)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--time", type=int, default=1,
                      help="time every option on the first TIME images of "
                      "each dataset (per-step seconds, B=1)")
  parser.add_argument("--out", type=Path, default=None)
  parser.add_argument("--plot", type=Path, default=None,
                      help="draw benchmarks/solver_options.png from this file")
  parser.add_argument("--summary", type=Path, default=None,
                      help="print the RESULTS.md table of this file")
  parser.add_argument("--timing", default=None, metavar="B,S,K[;B,S,K]",
                      help="only time every loop at these shapes")
  parser.add_argument("--timing-rows", type=Path, default=None,
                      help="--plot, --summary: the --timing output (seconds "
                      "axis, cost table)")
  parser.add_argument("--repeats", type=int, default=7,
                      help="interleaved rounds of --timing")
  args = parser.parse_args(argv)
  if args.timing is not None:
    for spec in args.timing.split(";"):
      time_shape(spec, args.repeats)
    return
  if args.plot is not None:
    plot(args.plot, REPO / "benchmarks" / "solver_options.png",
         args.timing_rows)
    return
  if args.summary is not None:
    summarize(args.summary, args.timing_rows)
    return
  steps = [int(s) for s in args.steps.split(",")]
  config = {k: getattr(args, k) for k in (
      "long_side", "steps", "ref_steps", "ref_method", "ref_cases",
      "logit_std", "seed", "camvid_split")}
  done = set()
  if args.out is not None and args.out.exists():
    for line in args.out.read_text().splitlines():
      row = json.loads(line)
      if row.get("kind") == "row" and row["settings"] == config:
        done.add((row["dataset"], row["image"], row["case"]))
  out = open(args.out, "a") if args.out is not None else None
  print(json.dumps({"kind": "env", "jax": jax.__version__,
                    "backend": jax.default_backend(),
                    "cpu_count": os.cpu_count(), "settings": config,
                    "resumed": len(done)}), flush=True)
  sources = (("grabcut", grabcut(args.data / "grabcut", args.grabcut,
                                 args.long_side)),
             ("camvid", camvid(args.data / "camvid", args.camvid,
                               args.long_side, args.camvid_split)))
  # Alternate between the datasets, so that a run stopped early has both.
  pairs = itertools.zip_longest(*(enumerate(s) for _, s in sources))
  for pair in pairs:
    for (dataset, _), item in zip(sources, pair):
      if item is None:
        continue
      index, (name, image, labels, k) = item
      for case in CASES:
        if (dataset, name, case) in done:
          continue
        start = time.perf_counter()
        row = measure(name, image, labels, k, case, index, args, steps)
        row.update(dataset=dataset, settings=config,
                   elapsed_s=round(time.perf_counter() - start, 1))
        emit(row, out)
  if out is not None:
    out.close()


if __name__ == "__main__":
  main()
