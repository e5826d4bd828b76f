"""Speed of the dense Potts energy + gradient (permutohedral lattice, JAX).

Run (RESULTS.md records the machine)::

  python benchmarks/dense.py                      # 128², 256², 513², K = 21
  python benchmarks/dense.py --sizes 128 --repeats 5
  python benchmarks/dense.py --capacity bound     # the static bound 6N
  python benchmarks/dense.py --image synthetic    # blocky noisy image

Prints one JSON object per (size, implementation) on stdout: ``shape``,
``ms`` (median of ``--repeats``: lattice + calibration + energy + gradient,
one jitted call), ``backend``, and for ours the split into ``build_ms``
(:func:`potts_jax.dense.bilateral.prepare`: lattice construction and calibration,
once per image and solve) and ``step_ms`` (energy + gradient given the
lattice: one filtering of K+1 channels, what each solver step pays), plus
``lattice_points``, ``capacity`` and ``count_ms`` (the host-side count that
chooses it). ``--capacity counted`` (default) uses
:func:`potts_jax.dense.bilateral.choose_capacity` (1.25x the points, bucketed);
``bound`` the never-overflowing 6N.

The image (``--image photo``, default) is GrabCut photo 124084 from
``../shared/data/grabcut`` resized to S x S (the synthetic image is used when
the data is absent); the soft labels are smooth and random.

``--accuracy`` instead compares the energies with float64 brute force
(O(N²) numpy) on the first ``--photos`` GrabCut photos: a 40 px and a 48 px
crop of each at long side 96 (soft labels of 3 classes) and the whole photo
at long side 40 (2 classes), ``q`` and ``bl``, for ours
(:func:`potts_jax.dense.bilateral.dense_energy`) and for the plain lattice filter
(``F v - v``, no correction); one row per case, then a summary per set.

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

from potts_jax.dense import bilateral  # noqa: E402

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


def _exact(image, y, sigma_xy):
  """float64 ``Σ_{i<j} w_ij P`` and gradient for ``q`` and ``bl``."""
  h, w, _ = image.shape
  yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  f = np.concatenate([np.stack([xx, yy], -1).reshape(-1, 2) / sigma_xy,
                      image.reshape(-1, 3).astype(np.float64) / SIGMA_RGB], 1)
  weights = np.exp(-0.5 * ((f[:, None] - f[None]) ** 2).sum(-1))
  np.fill_diagonal(weights, 0.0)
  return _energies(y.reshape(h * w, -1).astype(np.float64),
                   weights @ y.reshape(h * w, -1), weights.sum(1))


def _energies(y, fy, fm):
  """``{relaxation: (energy, gradient)}`` from ``Σ_{j≠i} w_ij y_j`` and the
  degrees (all pixels valid); each unordered pair counted once, half the
  sums over ordered pairs (potts_jax/dense/bilateral.py)."""
  s = (y * fy).sum(-1)
  a = (y * y).sum(-1)
  return {"q": (0.5 * float((a * fm - s).sum()), fm[:, None] * y - fy),
          "bl": (0.5 * float((fm - s).sum()), -fy)}


def _plain(image, y, sigma_xy):
  """The plain lattice filter: ``F v - v`` on the unscaled features."""
  feats = bilateral.features(image[None], sigma_xy, SIGMA_RGB)
  v = np.concatenate([y.reshape(-1, y.shape[-1]),
                      np.ones((y.size // y.shape[-1], 1))], -1)[None]
  out = np.asarray(bilateral.bilateral_filter(
      jnp.asarray(v, jnp.float32), bilateral.build_lattice(feats)),
                   np.float64)[0] - v[0]
  return _energies(v[0, :, :-1], out[:, :-1], out[:, -1])


def _ours(image, y, sigma_xy):
  graph = bilateral.prepare(image[None], np.full((1,) + image.shape[:2], 255),
                            sigma_xy=sigma_xy, sigma_rgb=SIGMA_RGB)
  out = {}
  for relaxation in ("q", "bl"):
    e, g = jax.value_and_grad(
        lambda y, r=relaxation: bilateral.dense_energy(y, graph, r)[0])(
            jnp.asarray(y[None]))
    out[relaxation] = (float(e), np.asarray(g[0], np.float64).reshape(
        -1, y.shape[-1]))
  return out


def accuracy(num_photos, sigma_xy):
  """One JSON row per case, then one summary row per set."""
  from potts_jax.data import folder  # pylint: disable=import-outside-toplevel
  from potts_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(PHOTO))
  cases = {"crops": [], "whole": []}
  for b, name in enumerate(folder.names(root)[:num_photos]):
    image = folder.load_example(root, name, long_side=96).image
    for side, offset in ((40, 20), (48, 30)):
      crop = image[offset:offset + side, offset:offset + side]
      logits = synthetic.smooth_logits(*crop.shape[:2], 3, seed=b, std=2.0)
      cases["crops"].append((f"{name}/crop{side}", crop,
                             np.asarray(jax.nn.softmax(logits))))
    whole = folder.load_example(root, name, long_side=40).image
    logits = synthetic.smooth_logits(*whole.shape[:2], 2, seed=b, std=2.0)
    cases["whole"].append((f"{name}/whole40", whole,
                           np.asarray(jax.nn.softmax(logits[::-1] * 0.5))))
  for kind, items in cases.items():
    rows = []
    for case, image, y in items:
      image = image.astype(np.float32)
      exact, ours, plain = (fn(image, y, sigma_xy)
                            for fn in (_exact, _ours, _plain))
      row = dict(mode="accuracy", set=kind, case=case, sigma_xy=sigma_xy,
                 sigma_rgb=SIGMA_RGB)
      for r in ("q", "bl"):
        e, g = exact[r]
        row[f"{r}_err"] = ours[r][0] / e - 1.0
        row[f"{r}_err_plain"] = plain[r][0] / e - 1.0
        for label, (_, g2) in (("", ours[r]), ("_plain", plain[r])):
          row[f"{r}_cos{label}"] = float(
              (g * g2).sum() / np.linalg.norm(g) / np.linalg.norm(g2))
      rows.append(row)
      print(json.dumps(row), flush=True)
    summary = dict(mode="accuracy_summary", set=kind, cases=len(rows),
                   sigma_xy=sigma_xy, sigma_rgb=SIGMA_RGB)
    for key in rows[0]:
      if key.startswith(("q_", "bl_")):
        values = np.array([row[key] for row in rows])
        if "_cos" in key:
          summary[key + "_min"] = float(values.min())
        else:
          summary[key + "_range"] = [float(values.min()), float(values.max())]
          summary[key + "_mean_abs"] = float(np.abs(values).mean())
    print(json.dumps(summary), flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 513])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--capacity", choices=("counted", "bound"),
                      default="counted")
  parser.add_argument("--image", choices=("photo", "synthetic"),
                      default="photo")
  parser.add_argument("--no-reference", action="store_true")
  parser.add_argument("--accuracy", action="store_true",
                      help="energies against float64 brute force instead")
  parser.add_argument("--photos", type=int, default=50)
  parser.add_argument("--sigma-xy", type=float, default=SIGMA_XY)
  args = parser.parse_args()
  if args.accuracy:
    accuracy(args.photos, args.sigma_xy)
    return
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
