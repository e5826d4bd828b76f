"""How far the float32 solvers are from a float64 run of the same iterates.

``benchmarks/solver.py`` compares our solver with the textbook ``jax.grad``
loop, both in float32. Where they differ (nn8 energies by ~1e-5 relative),
this script says which one is off: it runs both in float32 (in a child
process, x64 off) and the textbook loop in float64 (x64 on, weights and
energy in float64 from ``solver.float64_energy``), then prints, per solver, the relative energy
difference and the mean / max |Δy| to the float64 iterates::

  python benchmarks/solver_precision.py                       # 2x128x128x21 nn8
  python benchmarks/solver_precision.py --shape 2x64x64x21 --neighborhood nn4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def float32_run(shape, neighborhood, out):
  import solver as bench  # pylint: disable=g-import-not-at-top
  inputs = bench.make_inputs(*shape)
  y = bench.ours_solve(*inputs, neighborhood=neighborhood)
  y0 = bench.plain_solve(*inputs, neighborhood=neighborhood)
  np.savez(out, ours=np.asarray(y), textbook=np.asarray(y0))


def float64_run(shape, neighborhood):
  """The textbook loop in float64; returns (inputs, y64)."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import solver as bench  # pylint: disable=g-import-not-at-top

  logits, image, labels = (np.asarray(v) for v in bench.make_inputs(*shape))
  l0 = jnp.asarray(logits, jnp.float64)
  k = logits.shape[-1]
  labeled = (labels < 254)[..., None]
  onehot = jax.nn.one_hot(np.where(labels < 254, labels, 0), k,
                          dtype=jnp.float64)
  energy = lambda y: jnp.sum(bench.float64_energy(
      y, logits, image, labels, neighborhood, xp=jnp))

  to_y = lambda l: jnp.where(labeled, onehot, jax.nn.softmax(l, -1))
  step = lambda _, l: l - bench.STEP * jax.grad(lambda v: energy(to_y(v)))(l)
  y64 = to_y(jax.jit(lambda l: jax.lax.fori_loop(0, bench.STEPS, step, l))(l0))
  return (logits, image, labels), np.asarray(y64), bench


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", default="2x128x128x21")
  parser.add_argument("--neighborhood", default="nn8")
  parser.add_argument("--child-out", help=argparse.SUPPRESS)
  args = parser.parse_args()
  shape = tuple(int(v) for v in args.shape.split("x"))
  if args.child_out:
    float32_run(shape, args.neighborhood, args.child_out)
    return
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "f32.npz")
    subprocess.run([sys.executable, __file__, "--shape", args.shape,
                    "--neighborhood", args.neighborhood, "--child-out", out],
                   check=True)
    runs = dict(np.load(out))
  inputs, y64, bench = float64_run(shape, args.neighborhood)
  e64 = bench.float64_energy(y64, *inputs, args.neighborhood)
  for name, y in runs.items():
    e = bench.float64_energy(y, *inputs, args.neighborhood)
    print(json.dumps(dict(
        solver=name, shape=list(shape), neighborhood=args.neighborhood,
        steps=bench.STEPS,
        rel_energy_diff_to_f64=np.abs(e - e64).max() / np.abs(e64).max(),
        rel_energy_diff_per_image=(np.abs(e - e64) / np.abs(e64)).tolist(),
        mean_abs_dy_to_f64=float(np.abs(y - y64).mean()),
        max_abs_dy_to_f64=float(np.abs(y - y64).max()),
    )))


if __name__ == "__main__":
  main()
