"""Part b of the device suite: what the paper's sizes cost on the accelerator.

Rows, in this order (each skipped with a row saying so when the budget is
spent):

* ``copy_bandwidth``: ``x + 1`` over a float32 array of ``--copy_mib`` MiB,
  bytes read and written per second (median of 10): the memory ceiling the
  solver is held against.
* ``solver``: :func:`potts_jax.solver.solve` (``kernel="xla"``, H_CCE + P_CD,
  η 0.3, λ 6, σ_rgb 9, 200 steps of 0.075) at ``[12, 513, 513, 21]`` on the
  4- and 8-neighbourhood, timed by ``benchmarks/solver.py``'s ``measure``
  (median seconds, compile seconds, XLA's memory estimate), with the
  device's peak memory, and the **HBM floor**: each plain-descent step must
  at least read ``y``, ``σ`` (both ``[B, H, W, K]``) and the pair weights
  ``[B, H, W, D]`` (D = 2 for nn4, 4 for nn8) and write ``y``, all float32:
  ``4 B H W (3K + D)`` bytes, at the measured copy bandwidth. ``floor_ratio``
  is the measured time over that floor.
* ``dense``: the dense Potts energy + gradient at 513², K = 21 (lattice
  build, calibration, one filtering of K+1 channels; ``benchmarks/dense.py``'s
  ``bench_ours`` on the GrabCut photo 124084 when ``.device/data/124084.jpg``
  or ``../shared/data`` holds it), against the CPU figures recorded in
  ``benchmarks/results/dense_cpu.jsonl`` (``pydensecrf2``'s C++ lattice and
  ours, 2 cores).
* ``train_step``: one training step of DeepLabV3+ (MobileNetV2 and
  ResNet-101) at batch 12, 513², K = 21: ``pce`` and ``soft_sl`` of both
  backbones first, then ``gd`` and ``hard_sl`` (``benchmarks/train_step.py``'s ``Runner``: ``configs/voc.py``'s
  recipe, SGD, 200 solver steps), median ms over ``--steps`` timed steps,
  XLA's memory estimate of the step, and the ratio to ``pce`` (the paper:
  soft SL about 3x).

A dry run takes tiny sizes (solver ``[2, 33, 33, 5]``, 5 steps; MobileNetV2
x0.35, batch 2, crop 33, ``pce`` and ``soft_sl``).

Run: ``python benchmarks/device/costs.py --out DIR [--dry-run]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import common  # pylint: disable=import-error  (this folder, first on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("pce", "soft_sl", "gd", "hard_sl")
PHOTO_COPY = os.path.join(common.DEVICE_DIR, "data", "124084.jpg")
CPU_DENSE = os.path.join(common.REPO, "benchmarks", "results",
                         "dense_cpu.jsonl")


def _script(name: str):
  """``benchmarks/<name>.py`` as a module (the benchmarks are scripts)."""
  path = os.path.join(common.REPO, "benchmarks", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def copy_bandwidth(mib: int) -> float:
  """Bytes read + written per second by ``x + 1`` on ``mib`` MiB."""
  x = jnp.zeros((mib * 2**20 // 4,), jnp.float32)
  f = jax.jit(lambda x: x + 1.0)
  jax.block_until_ready(f(x))
  times = []
  for _ in range(10):
    t0 = time.perf_counter()
    jax.block_until_ready(f(x))
    times.append(time.perf_counter() - t0)
  return 2 * x.nbytes / statistics.median(times)


def solver_rows(rec, bench, shape, steps, repeats, bandwidth):
  bench.STEPS = steps
  b, h, w, k = shape
  for neighborhood, offsets in (("nn4", 2), ("nn8", 4)):
    row = bench.measure(shape, neighborhood, repeats, False, ["xla"])
    floor_s = steps * 4 * b * h * w * (3 * k + offsets) / bandwidth
    rec.emit("solver", **row, floor_bytes_per_step=4 * b * h * w * (
        3 * k + offsets), floor_s=round(floor_s, 4),
             floor_ratio=round(row["seconds"] / floor_s, 2),
             ms_per_step=round(1000 * row["seconds"] / steps, 3),
             peak_bytes=common.peak_memory_bytes())


def dense_row(rec, size, k, repeats):
  dense = _script("dense")
  dense.K = k
  if os.path.isfile(PHOTO_COPY):
    dense.PHOTO = PHOTO_COPY
  image_kind = "photo" if os.path.isfile(dense.PHOTO) else "synthetic"
  image, y = dense.make_inputs(size, image_kind)
  row = dense.bench_ours(image, y, repeats, "counted")
  cpu = {}
  if os.path.isfile(CPU_DENSE):
    with open(CPU_DENSE) as f:
      for line in f:
        r = json.loads(line)
        if (r["shape"] == [1, size, size, k] and r["image"] == image_kind
            and r["impl"] in ("potts_jax", "pydensecrf2")
            and r.get("capacity_mode", "counted") == "counted"):
          cpu[r["impl"]] = r["ms"]
  speedup = {f"speedup_vs_cpu_{impl}": round(ms / row["ms"], 1)
             for impl, ms in cpu.items()}
  rec.emit("dense", shape=[1, size, size, k], image=image_kind, **row,
           cpu_ms=cpu, **speedup, peak_bytes=common.peak_memory_bytes())


def train_order(backbones, methods):
  """pCE and soft SL of every backbone first (the ratio), then the rest."""
  first = [m for m in ("pce", "soft_sl") if m in methods]
  return ([(b, m) for b in backbones for m in first]
          + [(b, m) for b in backbones for m in methods if m not in first])


def train_rows(rec, budget, order, batch_size, crop, k, solver_steps, steps,
               width):
  bench = _script("train_step")
  batch = bench.make_batch(batch_size, crop, k)
  pce_ms, cost = {}, 0.0
  for backbone, method in order:
    if budget.left() < 1.5 * cost:
      rec.emit("train_step", backbone=backbone, method=method,
               skipped=f"budget: {budget.left():.0f} s left, the last "
               f"method took {cost:.0f} s")
      continue
    t0 = time.perf_counter()
    args = argparse.Namespace(
        backbone=backbone, width=width, batch=batch_size, crop=crop,
        num_classes=k, solver_steps=solver_steps, parallel="shard_map",
        warmup=2, config=None, config_module=None)
    runner = bench.Runner(args, method, batch)
    for _ in range(steps):
      runner.times.append(runner.step())
    row = runner.row(args)
    del runner
    if method == "pce":
      pce_ms[backbone] = row["ms_per_step"]
    base = pce_ms.get(backbone)
    row["ratio_to_pce"] = round(row["ms_per_step"] / base, 2) if base else None
    cost = time.perf_counter() - t0
    rec.emit("train_step", **row, seconds=round(cost, 1),
             peak_bytes=common.peak_memory_bytes())


def main(argv=None) -> int:
  def extra(parser):
    parser.add_argument("--steps", type=int, default=5,
                        help="timed training steps per method")
    parser.add_argument("--rows", default="copy_bandwidth,solver,dense,"
                        "train_step", help="which rows, comma-separated")
    parser.add_argument("--train", default="",
                        help="train_step's backbone:method pairs, in order "
                        "(default: every backbone and method)")
  args = common.parse_args(__doc__.split("\n")[0], argv, extra)
  common.setup_jax(args.dry_run, args.no_autotune)
  rec = common.Recorder(args.out, "b", args.dry_run)
  budget = common.Budget(args.budget)
  rec.emit("machine", **common.machine())
  if args.dry_run:  # Every row at a size the CPU runs in seconds.
    sizes = dict(copy_mib=8, solver=(2, 33, 33, 5), steps=5, dense=33, k=5,
                 backbones=("mobilenet_v2",), methods=("pce", "soft_sl"),
                 batch=2, crop=33, width=0.35)
  else:
    sizes = dict(copy_mib=2048, solver=(12, 513, 513, 21), steps=200,
                 dense=513, k=21, backbones=("mobilenet_v2", "resnet101"),
                 methods=METHODS, batch=12, crop=513, width=1.0)
  order = ([tuple(p.split(":")) for p in args.train.split(",") if p]
           or train_order(sizes["backbones"], sizes["methods"]))
  measured = {}

  def bandwidth_row():
    measured["bandwidth"] = copy_bandwidth(sizes["copy_mib"])
    rec.emit("copy_bandwidth", mib=sizes["copy_mib"],
             bytes_per_s=measured["bandwidth"])

  parts = [
      ("copy_bandwidth", bandwidth_row),
      ("solver", lambda: solver_rows(
          rec, _script("solver"), sizes["solver"], sizes["steps"], 3,
          measured.get("bandwidth", float("nan")))),
      ("dense", lambda: dense_row(rec, sizes["dense"], sizes["k"], 5)),
      ("train_step", lambda: train_rows(
          rec, budget, order, sizes["batch"], sizes["crop"], sizes["k"],
          sizes["steps"], args.steps, sizes["width"])),
  ]
  failed = []
  for name, part in parts:
    if name not in args.rows.split(","):
      continue
    if budget.left() <= 0:
      rec.emit(name, skipped="budget spent")
      failed.append(name)
      continue
    try:
      part()
    except Exception as e:  # pylint: disable=broad-except
      rec.emit(name, error=f"{type(e).__name__}: {e}"[:2000])
      failed.append(name)
  rec.emit("done", seconds=round(budget.elapsed(), 1), failed=failed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
