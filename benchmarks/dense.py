"""Speed of the dense Potts energy + gradient (permutohedral lattice, JAX).

Run (RESULTS.md records the machine)::

  python benchmarks/dense.py                      # 128², 256², 513², K = 21
  python benchmarks/dense.py --sizes 128 --repeats 5
  python benchmarks/dense.py --capacity-factor 2   # capacity 2x the points

Prints one JSON object per (size, implementation) on stdout: ``shape``,
``ms`` (median of ``--repeats``), ``backend``, and for ours the split into
``build_ms`` (lattice construction, once per image and solve) and
``step_ms`` (energy + gradient given the lattice: one filtering of K+1
channels, what each solver step pays), plus ``lattice_points`` and
``capacity`` (default the bound 6N; ``--capacity-factor F`` sets F times
the counted points, which is how a caller saves time and memory).

The CPU reference is ``pydensecrf2`` (Krähenbühl's C++ permutohedral
lattice; an optional bench dependency, an sdist: ``pip install
pydensecrf2``). Its Python API has no bare filter, so we time what is
closest: ``addPairwiseEnergy`` (builds the lattice) and one
``stepInference`` (one filtering of the K channels plus a softmax). Without
it the column is skipped with a note on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from potts_jax import xla_flags  # noqa: E402

xla_flags.prefer_threaded_cpu_loops()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from potts_jax import bilateral  # noqa: E402

SIGMA_XY, SIGMA_RGB, K = 100.0, 9.0, 21


def make_inputs(size, seed=0):
  """A piecewise-constant noisy image and soft labels ``[1, S, S, K]``."""
  rng = np.random.default_rng(seed)
  blocks = rng.uniform(0, 255, size=(1, max(size // 32, 1),
                                     max(size // 32, 1), 3))
  image = np.asarray(jax.image.resize(jnp.asarray(blocks, jnp.float32),
                                      (1, size, size, 3), "nearest"))
  image = np.clip(image + rng.normal(scale=4.0, size=image.shape), 0, 255)
  coarse = rng.normal(size=(1, max(size // 16, 1), max(size // 16, 1), K))
  logits = jax.image.resize(jnp.asarray(coarse * 3.0, jnp.float32),
                            (1, size, size, K), "linear")
  return image.astype(np.float32), np.asarray(jax.nn.softmax(logits))


def _median_ms(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times)


def bench_ours(image, y, repeats, capacity_factor):
  labels = np.full(image.shape[:3], 255, np.int32)
  capacity = None
  if capacity_factor:
    points = bilateral.count_lattice_points(image, labels, sigma_xy=SIGMA_XY,
                                            sigma_rgb=SIGMA_RGB)
    capacity = int(capacity_factor * int(points.max()))

  @jax.jit
  def build(image):
    return bilateral.prepare(image, labels, sigma_xy=SIGMA_XY,
                             sigma_rgb=SIGMA_RGB, capacity=capacity)

  @jax.jit
  def step(y, graph):
    return jax.value_and_grad(
        lambda y: jnp.sum(bilateral.dense_energy(y, graph, "q")))(y)

  @jax.jit
  def both(image, y):
    return step(y, build(image))

  graph = jax.block_until_ready(build(image))  # compile
  jax.block_until_ready(step(y, graph))
  jax.block_until_ready(both(image, y))
  return dict(
      ms=_median_ms(lambda: jax.block_until_ready(both(image, y)), repeats),
      build_ms=_median_ms(lambda: jax.block_until_ready(build(image)),
                          repeats),
      step_ms=_median_ms(lambda: jax.block_until_ready(step(y, graph)),
                         repeats),
      lattice_points=int(graph.lattice.num_points[0]),
      capacity=int(graph.lattice.plus.shape[-1] - 1),
  )


def bench_densecrf(image, y, repeats):
  import pydensecrf.densecrf as dcrf  # pylint: disable=import-outside-toplevel
  from pydensecrf import utils  # pylint: disable=import-outside-toplevel
  _, h, w, _ = image.shape
  img = np.ascontiguousarray(image[0].astype(np.uint8))
  unary = np.ascontiguousarray(
      -np.log(y[0].reshape(-1, K).T.astype(np.float32) + 1e-8))

  def run():
    crf = dcrf.DenseCRF2D(w, h, K)
    crf.setUnaryEnergy(unary)
    feats = utils.create_pairwise_bilateral(
        sdims=(SIGMA_XY, SIGMA_XY), schan=(SIGMA_RGB,) * 3, img=img, chdim=2)
    crf.addPairwiseEnergy(feats, compat=1, kernel=dcrf.DIAG_KERNEL,
                          normalization=dcrf.NO_NORMALIZATION)
    q, tmp1, tmp2 = crf.startInference()
    crf.stepInference(q, tmp1, tmp2)

  run()
  return dict(ms=_median_ms(run, repeats))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 513])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--capacity-factor", type=float, default=0.0)
  parser.add_argument("--no-reference", action="store_true")
  args = parser.parse_args()
  have_densecrf = not args.no_reference
  if have_densecrf:
    try:
      import pydensecrf.densecrf  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      have_densecrf = False
      print("note: pydensecrf2 is not installed; skipping the CPU reference "
            "column (pip install pydensecrf2)", file=sys.stderr)
  backend = jax.default_backend()
  for size in args.sizes:
    image, y = make_inputs(size)
    shape = [1, size, size, K]
    row = dict(shape=shape, impl="potts_jax", backend=backend,
               devices=str(jax.devices()[0].device_kind))
    row.update(bench_ours(image, y, args.repeats, args.capacity_factor))
    print(json.dumps(row), flush=True)
    if have_densecrf:
      row = dict(shape=shape, impl="pydensecrf2", backend="cpu",
                 what="lattice build + one stepInference (one filtering)")
      row.update(bench_densecrf(image, y, args.repeats))
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
