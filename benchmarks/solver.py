"""Speed of ``potts_jax.solver.solve`` against a plain ``jax.grad`` solver.

Run (2 CPU threads, as RESULTS.md records)::

  python benchmarks/solver.py               # (2,128,128,21) (4,256,256,21) (12,256,256,21)
  python benchmarks/solver.py --large       # also (12,513,513,21)
  python benchmarks/solver.py --shapes 4x256x256x21 --neighborhoods nn4

Prints one JSON object per (shape, neighbourhood): compile seconds, seconds per
solve (median of ``--repeats``), Mpixel·steps/s, peak memory (XLA's compiled
temp + argument + output bytes, and the process's max RSS) for ours (first of
``--kernels``: ``auto``, the native CPU loop of ``potts_jax.solver.native``; then
``xla``, our XLA loop, its keys prefixed ``xla_``) and for the baseline, the
speed ratios, and how far apart their results are (relative
energy difference, energies evaluated in float64; mean |Δy|). The baseline
is the textbook loop of ``potts_jax.solver.reference``: NHWC, ``jax.grad`` of
the energy through softmax and the scribble reset, in a ``fori_loop``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from potts_jax import xla_flags  # noqa: E402

if "--hoisted-loops" not in sys.argv:
  xla_flags.prefer_threaded_cpu_loops()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from potts_jax.solver import loop as solver_loop, native, reference  # noqa: E402
from potts_jax import neighborhoods, potts, solver  # noqa: E402

STEPS = 200  # set by --steps
ETA, LAM, SIGMA_RGB, STEP = 0.3, 6.0, 9.0, 0.075


def make_inputs(b, h, w, k, seed=0):
  """Smooth random logits, a piecewise-constant noisy image, ~3% scribbles."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(b, max(h // 16, 1), max(w // 16, 1), k)) * 3.0
  logits = jax.image.resize(jnp.asarray(coarse, jnp.float32), (b, h, w, k),
                            "linear")
  blocks = rng.uniform(0, 255, size=(b, max(h // 32, 1), max(w // 32, 1), 3))
  image = jax.image.resize(jnp.asarray(blocks, jnp.float32), (b, h, w, 3),
                           "nearest")
  image = jnp.clip(image + rng.normal(scale=4.0, size=(b, h, w, 3)), 0, 255)
  labels = np.full((b, h, w), 255, np.int32)
  for i in range(b):
    for _ in range(max(k, 4)):
      r, c = rng.integers(0, h), rng.integers(0, max(w - w // 4, 1))
      labels[i, r:r + 3, c:c + w // 4] = rng.integers(0, k)
  return logits, image.astype(jnp.float32), jnp.asarray(labels)


def float64_energy(y, logits, image, labels, neighborhood, xp=np):
  """E(y) of H_CCE + P_CD in float64, per image ``[B]``, written out here.

  ``xp`` is ``numpy`` (evaluation) or ``jax.numpy`` under x64 (the float64
  autodiff loop of ``solver_precision.py``).
  """
  y, logits, image = (xp.asarray(v, xp.float64) for v in (y, logits, image))
  labels = np.asarray(labels)
  log = lambda x: xp.log(xp.maximum(x, potts.EPS))
  sigma = xp.exp(logits - logits.max(-1, keepdims=True))
  sigma = sigma / sigma.sum(-1, keepdims=True)
  total = ETA * xp.sum((labels == 255) * -log(xp.sum(sigma * y, -1)), (1, 2))
  valid = labels != 254
  _, h, w = labels.shape
  for dy, dx in neighborhoods.OFFSETS[neighborhood]:
    c0, c1 = max(0, -dx), w - max(0, dx)
    a = (slice(None), slice(0, h - dy), slice(c0, c1))
    b = (slice(None), slice(dy, h), slice(c0 + dx, c1 + dx))
    weight = xp.exp(-xp.sum((image[a] - image[b]) ** 2, -1)
                    / (2 * SIGMA_RGB**2)) * valid[a] * valid[b]
    weight = weight / (np.sqrt(2.0) if dy and dx else 1.0)
    p, q = y[a], y[b]
    cd = (-log(xp.sum(p * q, -1)) + 0.5 * log(xp.sum(p * p, -1))
          + 0.5 * log(xp.sum(q * q, -1)))
    total = total + LAM * xp.sum(weight * cd, (1, 2))
  return total


def plain_energy_params(relaxation="cd", neighborhood="nn4"):
  """The benchmark's energy: H_CCE, η, λ, σ_rgb above."""
  return solver.EnergyParams(relaxation=relaxation, cross_entropy="cce",
                             neighborhood=neighborhood, eta=ETA, lam=LAM,
                             sigma_rgb=SIGMA_RGB)


def plain_solve(logits, image, labels, relaxation="cd", neighborhood="nn4"):
  """Baseline: ``reference.solve``, ``l -= step * jax.grad(E)(l)``."""
  return reference.solve(logits, image, labels,
                         plain_energy_params(relaxation, neighborhood),
                         num_steps=STEPS, step_size=STEP)


def ours_solve(logits, image, labels, relaxation="cd", neighborhood="nn4",
               kernel="auto"):
  return solver.solve(logits, image, labels, relaxation=relaxation,
                      neighborhood=neighborhood, eta=ETA, lam=LAM,
                      sigma_rgb=SIGMA_RGB, num_steps=STEPS, step_size=STEP,
                      kernel=kernel)


def compiled_bytes(jitted, *args, **kwargs):
  """Compile once; return (compiled, seconds, XLA's bytes estimate)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args, **kwargs).compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  total = None
  if mem is not None:
    total = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                + mem.output_size_in_bytes)
  return compiled, seconds, total


def timed(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return out, statistics.median(times)


def measure(shape, neighborhood, repeats, baseline, kernels):
  b, h, w, k = shape
  logits, image, labels = make_inputs(b, h, w, k)
  opts = dict(relaxation="cd", neighborhood=neighborhood)
  args = (logits, image, labels, plain_energy_params("cd", neighborhood))
  mpix = b * h * w * STEPS / 1e6
  row = dict(shape=list(shape), neighborhood=neighborhood, steps=STEPS,
             relaxation="cd", cross_entropy="cce",
             native_available=native.available())
  results = {}
  for kernel in kernels:
    options = solver.SolverOptions(num_steps=STEPS, step_size=STEP,
                                   kernel=kernel)
    _, compile_s, xla_bytes = compiled_bytes(
        solver_loop.solve_batch, *args, options, record=False)
    ours_solve(logits, image, labels, kernel=kernel, **opts)  # warm dispatch
    results[kernel], seconds = timed(
        lambda: ours_solve(logits, image, labels, kernel=kernel, **opts),
        repeats)
    prefix = "" if kernel == kernels[0] else f"{kernel}_"
    row.update({
        f"{prefix}kernel": kernel, f"{prefix}compile_s": round(compile_s, 2),
        f"{prefix}seconds": round(seconds, 3),
        f"{prefix}mpixel_steps_per_s": round(mpix / seconds, 1),
        f"{prefix}xla_bytes": xla_bytes,
    })
  y = results[kernels[0]]
  ours_s = row["seconds"]
  if baseline:
    _, base_compile, base_bytes = compiled_bytes(
        reference.solve, logits, image, labels,
        plain_energy_params(**opts), num_steps=STEPS, step_size=STEP)
    plain_solve(logits, image, labels, **opts)
    y0, base_s = timed(lambda: plain_solve(logits, image, labels, **opts),
                       repeats)
    # Energies in float64 numpy, so that the comparison measures the two
    # float32 iterates rather than float32 rounding in the energy's sums.
    e, e0 = (float64_energy(v, logits, image, labels, neighborhood)
             for v in (y, y0))
    row.update(
        baseline_compile_s=round(base_compile, 2),
        baseline_seconds=round(base_s, 3), baseline_xla_bytes=base_bytes,
        speedup=round(base_s / ours_s, 2),
        rel_energy_diff=float(np.max(np.abs(e - e0) / np.abs(e0))),
        mean_abs_dy=float(jnp.mean(jnp.abs(y - y0))),
    )
    for kernel in kernels[1:]:
      e1 = float64_energy(results[kernel], logits, image, labels, neighborhood)
      row.update({
          f"{kernel}_speedup": round(base_s / row[f"{kernel}_seconds"], 2),
          f"{kernel}_rel_energy_diff": float(
              np.max(np.abs(e1 - e0) / np.abs(e0))),
          f"{kernel}_mean_abs_dy": float(
              jnp.mean(jnp.abs(results[kernel] - y0))),
      })
  row.update(max_rss_gb=round(
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
  return row


def _done(path, jax_version):
  """Measurements already in ``path`` (JSON lines) for this jax version."""
  done = set()
  if path and os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        if "shape" in row and row.get("jax") == jax_version:
          done.add((tuple(row["shape"]), row["neighborhood"], row["steps"]))
  return done


def main():
  global STEPS
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default="2x128x128x21,4x256x256x21,"
                      "12x256x256x21", help="comma-separated BxHxWxK")
  parser.add_argument("--large", action="store_true",
                      help="also (12,513,513,21)")
  parser.add_argument("--neighborhoods", default="nn4,nn8")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--out", default="",
                      help="also append rows to this JSON-lines file and skip "
                      "measurements it already holds (resumable)")
  parser.add_argument("--no-baseline", action="store_true")
  parser.add_argument("--kernels", default="auto,xla",
                      help="solver kernels to time, the first one as 'ours' "
                      "(auto: the native CPU loop where available; xla: "
                      "the XLA loop)")
  parser.add_argument("--hoisted-loops", action="store_true",
                      help="keep XLA's default small-while-loop hoisting "
                      "(see potts_jax/xla_flags.py)")
  args = parser.parse_args()
  STEPS = args.steps
  shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
  if args.large:
    shapes.append((12, 513, 513, 21))
  header = dict(
      machine=platform.processor() or platform.machine(),
      cpus=os.cpu_count(), jax=jax.__version__, backend=jax.default_backend(),
      devices=str(jax.devices()[0]),
      xla_flags=os.environ.get("XLA_FLAGS", ""))
  print(json.dumps(header), flush=True)
  done = _done(args.out, jax.__version__)
  for shape in shapes:
    for nb in args.neighborhoods.split(","):
      if (shape, nb, STEPS) in done:
        continue
      row = measure(shape, nb, args.repeats, not args.no_baseline,
                    args.kernels.split(","))
      row.update(jax=jax.__version__, xla_flags=header["xla_flags"])
      print(json.dumps(row), flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
