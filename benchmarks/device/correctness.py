"""Part a of the device suite: the accelerator computes what the CPU computes.

Checks, each one JSON row with its measured difference and ``ok``:

* ``solver``: :func:`potts_jax.solver.solve` with ``kernel="xla"`` on the
  accelerator against the same call on the host CPU, every relaxation on the
  4- and 8-neighbourhood (H_CCE, 20 steps, ``[2, 9, 11, 5]`` with scribbles and
  padding), max |Δy| against the tolerance of ``tests/test_cpu_solver.py``
  (2e-5: two float32 loops summing in different orders);
* ``dense``: the dense Potts energy and gradient
  (:func:`potts_jax.dense.bilateral.dense_energy` on a lattice from
  :func:`~potts_jax.dense.bilateral.prepare`), ``q`` and ``bl``, relative
  differences (1e-4: the lattice's float32 splat sums, atomics on a GPU);
* ``train_step``: one step of each method (``pce``, ``gd``, ``soft_sl``,
  ``hard_sl``) of ``configs/demo.py:runlocal``'s stage 2 on the accelerator:
  every scalar and every parameter finite;
* ``parallel``: three ``soft_sl`` steps in the ``shard_map`` and ``pmap`` forms of
  :class:`potts_jax.parallel.DataParallel`, max |Δparams| (1e-5: the two forms
  compile separately, and a GPU's convolution algorithms are chosen per
  compilation).

In a dry run the "accelerator" is the CPU too, so the comparisons are
trivially equal; the code paths are what the dry run tests, with two solver
cases and the ``soft_sl`` step only.

Run: ``python benchmarks/device/correctness.py --out DIR [--dry-run]``.
"""

from __future__ import annotations

import functools
import sys
import time

import common  # pylint: disable=import-error  (this folder, first on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

from configs import demo
from potts_jax.dense import bilateral
from potts_jax.solver import native
from potts_jax import parallel
from potts_jax import solver
from potts_jax import train
from potts_jax.data import pipeline
from potts_jax.data import sources
from potts_jax.data import synthetic
SOLVER_TOL = 2e-5
DENSE_TOL = 1e-4
PARALLEL_TOL = 1e-5


def _on(device, fn, *arrays):
  """``fn(*arrays)`` computed on ``device``, as numpy."""
  with jax.default_device(device):
    out = fn(*(jax.device_put(a, device) for a in arrays))
    return jax.tree.map(np.asarray, jax.block_until_ready(out))


def check_solver(rec, accel, cpu, cases):
  """``cases``: ``(relaxation, neighborhood)`` pairs."""
  inputs = synthetic.grid_problem(k=5, h=9, w=11)
  for relaxation, neighborhood in cases:
    fn = functools.partial(solver.solve, relaxation=relaxation,
                           neighborhood=neighborhood, num_steps=20,
                           kernel="xla")
    got, want = _on(accel, fn, *inputs), _on(cpu, fn, *inputs)
    diff = float(np.max(np.abs(got - want)))
    finite = bool(np.isfinite(got).all())
    rec.emit("solver", relaxation=relaxation, neighborhood=neighborhood,
             steps=20, shape=list(inputs[0].shape), max_abs_dy=diff,
             tol=SOLVER_TOL, finite=finite,
             ok=finite and diff <= SOLVER_TOL)


def check_dense(rec, accel, cpu):
  logits, image, _ = synthetic.grid_problem(h=24, w=28, k=5, seed=1)
  logits, image = logits[:1], image[:1]
  labels = np.full(image.shape[:3], 255, np.int32)
  y = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
  for relaxation in bilateral.SUPPORTED:
    def fn(y, image, labels, relaxation=relaxation):
      graph = bilateral.prepare(image, labels, sigma_xy=10.0, sigma_rgb=9.0)
      return jax.value_and_grad(
          lambda y: jnp.sum(bilateral.dense_energy(y, graph, relaxation)))(y)
    (e1, g1), (e0, g0) = _on(accel, fn, y, image, labels), _on(
        cpu, fn, y, image, labels)
    de = abs(float(e1) - float(e0)) / abs(float(e0))
    dg = float(np.max(np.abs(g1 - g0)) / np.max(np.abs(g0)))
    rec.emit("dense", relaxation=relaxation, shape=list(y.shape),
             energy=float(e1), rel_energy_diff=de, rel_grad_diff=dg,
             tol=DENSE_TOL, ok=bool(de <= DENSE_TOL and dg <= DENSE_TOL))


def _demo_config(method):
  c = demo.get_config(f"runlocal,method={method}")
  c = train.with_overrides(c, {**c.stages[1], "stages": ()})
  c.model.dropout_rate = 0.0
  return c


def _steps(config, kind, num_steps):
  """``num_steps`` train steps of ``config`` in the ``kind`` form, on the
  default device: ``(state, scalars)`` as numpy."""
  data = sources.open_sources(config)
  batch = next(iter(pipeline.train_dataset(
      data.train, crop_size=config.input.crop_size,
      batch_size=config.input.batch_size,
      seed=0, worker_count=0)))
  model = train.build_model(config, data.num_classes)
  tx = train.make_optimizer(config)
  graphdef, state = train.create_state(model, tx, 0)
  par = parallel.DataParallel(kind, parallel.make_mesh(jax.devices()[:1]))
  fn = par.step(functools.partial(train.train_step, graphdef=graphdef, tx=tx,
                                  config=config), replicated=(True, False))
  state = par.replicate(state)
  for _ in range(num_steps):
    state, scalars = fn(state, par.put_batch(batch))
  return jax.tree.map(np.asarray, par.unreplicate((state, scalars)))


def _all_finite(tree):
  return all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def check_train_steps(rec, methods):
  for method in methods:
    t0 = time.perf_counter()
    state, scalars = _steps(_demo_config(method), "shard_map", 1)
    finite = _all_finite(scalars) and _all_finite(state["params"])
    rec.emit("train_step", method=method, config="demo:runlocal",
             scalars={k: float(v) for k, v in scalars.items()},
             finite=finite, seconds=round(time.perf_counter() - t0, 2),
             ok=finite)


def check_parallel(rec):
  config = _demo_config("soft_sl")
  (a, _), (b, _) = (_steps(config, kind, 3) for kind in ("shard_map", "pmap"))
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(
      jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])))
  rec.emit("parallel", method="soft_sl", steps=3, max_abs_dparams=diff,
           tol=PARALLEL_TOL, ok=diff <= PARALLEL_TOL)


CHECKS = ("solver", "dense", "train_step", "parallel")
METHODS = ("pce", "gd", "soft_sl", "hard_sl")


def main(argv=None) -> int:
  def extra(parser):
    parser.add_argument("--checks", default=",".join(CHECKS),
                        help="which checks, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="train_step's methods, comma-separated")
  args = common.parse_args(__doc__.split("\n")[0], argv, extra)
  common.setup_jax(args.dry_run, args.no_autotune)
  rec = common.Recorder(args.out, "a", args.dry_run)
  budget = common.Budget(args.budget)
  rec.emit("machine", **common.machine())
  accel, cpu = jax.devices()[0], jax.devices("cpu")[0]
  if args.dry_run:  # The suite's code paths, in less CPU time.
    cases, methods = [("cd", "nn4"), ("q", "nn8")], ("soft_sl",)
  else:
    cases = [(r, n) for n in ("nn4", "nn8") for r in native.RELAXATIONS]
    methods = tuple(m for m in args.methods.split(",") if m)
  checks = [("solver", lambda: check_solver(rec, accel, cpu, cases)),
            ("dense", lambda: check_dense(rec, accel, cpu)),
            ("train_step", lambda: check_train_steps(rec, methods)),
            ("parallel", lambda: check_parallel(rec))]
  failed = []
  for name, check in checks:
    if name not in args.checks.split(","):
      continue
    if budget.left() <= 0:
      rec.emit(name, skipped="budget spent", ok=False)
      failed.append(name)
      continue
    try:
      check()
    except Exception as e:  # pylint: disable=broad-except
      rec.emit(name, error=f"{type(e).__name__}: {e}"[:2000], ok=False)
      failed.append(name)
  rec.emit("done", seconds=round(budget.elapsed(), 1), failed=failed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
