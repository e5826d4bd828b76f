"""Speed of the dense Potts energy + gradient (permutohedral lattice, JAX).

Run (RESULTS.md records the machine)::

  python benchmarks/dense.py                      # 128², 256², 513², K = 21
  python benchmarks/dense.py --sizes 128 --repeats 5
  python benchmarks/dense.py --capacity bound     # the static bound 6N
  python benchmarks/dense.py --image synthetic    # blocky noisy image

Prints one JSON object per (size, implementation) on stdout: ``shape``,
``ms`` (median of ``--repeats``: lattice + calibration + energy + gradient,
one jitted call), ``backend``, and for ours the split into ``build_ms``
(:func:`potts_jax.bilateral.prepare`: lattice construction and calibration,
once per image and solve) and ``step_ms`` (energy + gradient given the
lattice: one filtering of K+1 channels, what each solver step pays), plus
``lattice_points``, ``capacity`` and ``count_ms`` (the host-side count that
chooses it). ``--capacity counted`` (default) uses
:func:`potts_jax.bilateral.choose_capacity` (1.25x the points, bucketed);
``bound`` the never-overflowing 6N.

The image (``--image photo``, default) is GrabCut photo 124084 from
``../shared/data/grabcut`` resized to S x S (the synthetic image is used when
the data is absent); the soft labels are smooth and random.

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


PHOTO = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                     "grabcut", "images", "124084.jpg")


def make_inputs(size, image_kind="photo", seed=0):
  """An image ``[1, S, S, 3]`` and soft labels ``[1, S, S, K]``."""
  rng = np.random.default_rng(seed)
  if image_kind == "photo" and os.path.exists(PHOTO):
    from PIL import Image  # pylint: disable=import-outside-toplevel
    photo = np.asarray(Image.open(PHOTO).convert("RGB"), np.float32)
    image = np.asarray(jax.image.resize(jnp.asarray(photo)[None],
                                        (1, size, size, 3), "linear"))
  else:
    if image_kind == "photo":
      print(f"note: {PHOTO} not found; using the synthetic image",
            file=sys.stderr)
    blocks = rng.uniform(0, 255, size=(1, max(size // 32, 1),
                                       max(size // 32, 1), 3))
    image = np.asarray(jax.image.resize(jnp.asarray(blocks, jnp.float32),
                                        (1, size, size, 3), "nearest"))
    image = image + rng.normal(scale=4.0, size=image.shape)
  coarse = rng.normal(size=(1, max(size // 16, 1), max(size // 16, 1), K))
  logits = jax.image.resize(jnp.asarray(coarse * 3.0, jnp.float32),
                            (1, size, size, K), "linear")
  return (np.clip(image, 0, 255).astype(np.float32),
          np.asarray(jax.nn.softmax(logits)))


def _median_ms(fn, repeats):
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - start))
  return statistics.median(times)


def bench_ours(image, y, repeats, capacity_mode):
  labels = np.full(image.shape[:3], 255, np.int32)
  options = dict(sigma_xy=SIGMA_XY, sigma_rgb=SIGMA_RGB)
  capacity, count_ms = None, None
  if capacity_mode == "counted":
    capacity = bilateral.choose_capacity(image, labels, **options)  # compile
    count_ms = _median_ms(
        lambda: bilateral.choose_capacity(image, labels, **options), repeats)

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
      count_ms=count_ms,
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
  parser.add_argument("--capacity", choices=("counted", "bound"),
                      default="counted")
  parser.add_argument("--image", choices=("photo", "synthetic"),
                      default="photo")
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
    image, y = make_inputs(size, args.image)
    shape = [1, size, size, K]
    row = dict(shape=shape, impl="potts_jax", backend=backend,
               devices=str(jax.devices()[0].device_kind), image=args.image,
               capacity_mode=args.capacity,
               jax=jax.__version__)
    row.update(bench_ours(image, y, args.repeats, args.capacity))
    print(json.dumps(row), flush=True)
    if have_densecrf:
      row = dict(shape=shape, impl="pydensecrf2", backend="cpu",
                 image=args.image,
                 what="lattice build + one stepInference (one filtering)")
      row.update(bench_densecrf(image, y, args.repeats))
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
