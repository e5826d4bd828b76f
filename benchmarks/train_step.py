"""Step time of the training methods at the same size: pce, gd, soft_sl, hard_sl.

The real training step: :func:`potts_jax.steps.train_step` on the model,
optimiser and state of :func:`potts_jax.train.build_model`,
:func:`~potts_jax.train.make_optimizer` and :func:`~potts_jax.train.create_state`
for ``configs/voc.py``'s recipe (SGD, SyncBN, H_CCE + P_CD on the
4-neighbourhood, eta 0.3, lambda 6, sigma_rgb 9, step size 0.075), run through
:class:`potts_jax.parallel.DataParallel` (``--parallel``) over every available
device, the global batch split between them. Compile time is excluded: each
method runs ``--warmup`` steps first, then ``--steps`` timed steps, each ended
by ``jax.block_until_ready``, the methods taking turns step by step (so
that the load of a shared machine hits them alike); the median is reported.

Run (2 CPU cores, the defaults take about 2-3 minutes)::

  python benchmarks/train_step.py
  python benchmarks/train_step.py --backbone resnet101 --batch 12 --crop 513 \\
      --solver_steps 200          # the paper's VOC size, on a GPU

Another config's recipe, and variants of one method (the equal-wall-time
comparison: the solver's time per training step)::

  python benchmarks/train_step.py --config configs/camvid_small.py \\
      --num_classes 11 --batch 8 --crop 73 \\
      --variants "pce=stage=2,method=pce;gd200=stage=2,method=soft_sl;adam80=stage=2,method=soft_sl,solver=adam,solver_steps=80"

``--variants`` is ``label=get_config argument`` pairs separated by ``;``;
the ratio is then to the first variant.

Prints one JSON object per method: method, shape ``[batch, crop, crop, K]``,
backbone, devices, compile seconds, ms/step (median, min, max), XLA's
estimate of the step's memory (``xla_bytes``: arguments, outputs and
temporaries of the compiled step) and the ratio
to ``pce`` (the paper: soft self-labeling with 200 solver steps trains about
3x slower than SGD with the dense Potts loss, appendix B). The first line is a
header with the machine and the arguments.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
from potts_jax import xla_flags  # noqa: E402

xla_flags.prefer_threaded_cpu_loops()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import voc  # noqa: E402
from potts_jax import parallel  # noqa: E402
from potts_jax import train  # noqa: E402

METHODS = ("pce", "gd", "soft_sl", "hard_sl")


def make_batch(batch: int, crop: int, num_classes: int, seed: int = 0
               ) -> dict[str, np.ndarray]:
  """A piecewise-constant noisy image and ~3% scribbled pixels per example.

  Step time does not depend on the content (fixed solver steps), but the
  image has edges and every example has scribbles of several classes, as real
  batches do.
  """
  rng = np.random.default_rng(seed)
  cells = max(crop // 32, 1)
  blocks = rng.uniform(0, 255, size=(batch, cells, cells, 3))
  reps = -(-crop // cells)
  image = np.repeat(np.repeat(blocks, reps, 1), reps, 2)[:, :crop, :crop]
  image = np.clip(image + rng.normal(scale=4.0, size=image.shape), 0, 255)
  scribbles = np.full((batch, crop, crop), 255, np.int32)
  for i in range(batch):
    for _ in range(max(num_classes // 3, 4)):
      row = rng.integers(0, crop)
      c0 = rng.integers(0, crop // 2)
      scribbles[i, row:row + 2, c0:c0 + crop // 3] = rng.integers(
          0, num_classes)
  return {"image": image.astype(np.float32), "scribbles": scribbles,
          "mask": np.where(scribbles == 255, 0, scribbles).astype(np.int32)}


def load_config_module(path: str):
  """The config module at ``path`` (a ``configs/*.py`` file)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config {path!r}: no such config file")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"--config {path!r} has no get_config(arg)")
  return module


def parse_variants(text: str) -> list[tuple[str, str]]:
  """``"a=stage=2;b=stage=2,method=soft_sl"`` -> ``[(a, ...), (b, ...)]``."""
  variants = []
  for item in filter(None, (v.strip() for v in text.split(";"))):
    label, sep, arg = item.partition("=")
    if not sep or not label:
      raise ValueError(f"--variants item {item!r}: expected label=arg")
    variants.append((label, arg))
  labels = [label for label, _ in variants]
  if len(set(labels)) != len(labels):
    raise ValueError(f"--variants labels repeat: {labels}")
  return variants


def config_for(args: argparse.Namespace, method: str, arg: str | None = None):
  """``configs/voc.py``'s recipe at the benchmark's size; with ``--config``,
  that file's ``get_config(arg)`` (its model, method and solver) at the
  benchmark's batch and crop."""
  if arg is not None:
    c = args.config_module.get_config(arg)
    c.input.batch_size = args.batch
    c.input.crop_size = args.crop
    c.parallel = args.parallel
    return c
  c = voc.get_config(f"stage=2,method={method},pretrained=false")
  c.model.backbone = args.backbone
  c.model.width = args.width
  c.input.batch_size = args.batch
  c.input.crop_size = args.crop
  c.solver.num_steps = args.solver_steps
  c.parallel = args.parallel
  return c


class Runner:
  """One method's compiled step, state and placed batch."""

  def __init__(self, args: argparse.Namespace, method: str,
               batch: dict[str, np.ndarray], arg: str | None = None):
    config = config_for(args, method, arg)
    self.method = method
    self.solver_steps = (config.solver.num_steps
                         if config.loss.method in ("soft_sl", "hard_sl") else 0)
    self.extra = ({} if arg is None else dict(
        config=args.config, arg=arg, train_method=config.loss.method,
        solver_method=config.solver.method))
    model = train.build_model(config, args.num_classes)
    tx = train.make_optimizer(config)
    model_def, state = train.create_state(model, tx, config.seed)
    del model
    self.par = parallel.DataParallel(config.parallel)
    self.fn = self.par.step(
        functools.partial(train.train_step, graphdef=model_def, tx=tx,
                          config=config),
        replicated=(True, False), donate_argnums=(0,))
    self.state = self.par.replicate(state)
    self.batch = self.par.put_batch(batch)
    self.scalars = None
    self.times = []
    t0 = time.perf_counter()
    # Compiled ahead of time for XLA's memory estimate of the step (argument
    # + output + temporary bytes): the peak the step itself needs.
    self.fn = self.fn.lower(self.state, self.batch).compile()
    mem = self.fn.memory_analysis()
    self.xla_bytes = None if mem is None else int(
        mem.temp_size_in_bytes + mem.argument_size_in_bytes
        + mem.output_size_in_bytes)
    self.first_s = time.perf_counter() - t0 + self.step()
    for _ in range(args.warmup - 1):
      self.step()

  def step(self) -> float:
    t0 = time.perf_counter()
    self.state, self.scalars = jax.block_until_ready(
        self.fn(self.state, self.batch))
    return time.perf_counter() - t0

  def row(self, args: argparse.Namespace) -> dict[str, object]:
    loss = float(np.asarray(self.par.unreplicate(self.scalars)["loss"]))
    median = statistics.median(self.times)
    return dict(
        method=self.method,
        shape=[args.batch, args.crop, args.crop, args.num_classes],
        **self.extra, backbone=args.backbone, width=args.width,
        solver_steps=self.solver_steps,
        devices=self.par.num_devices, parallel=args.parallel,
        first_step_s=round(self.first_s, 2),
        compile_s=round(max(self.first_s - median, 0.0), 2),
        ms_per_step=round(1000 * median, 1),
        min_ms=round(1000 * min(self.times), 1),
        max_ms=round(1000 * max(self.times), 1),
        timed_steps=len(self.times), xla_bytes=self.xla_bytes,
        finite_loss=bool(np.isfinite(loss)))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--backbone", default="mobilenet_v2",
                      choices=("mobilenet_v2", "resnet50", "resnet101"))
  parser.add_argument("--width", type=float, default=1.0,
                      help="MobileNetV2 width multiplier")
  parser.add_argument("--batch", type=int, default=4,
                      help="global batch (a multiple of the devices)")
  parser.add_argument("--crop", type=int, default=129)
  parser.add_argument("--num_classes", type=int, default=21)
  parser.add_argument("--solver_steps", type=int, default=200)
  parser.add_argument("--methods", default=",".join(METHODS),
                      help="comma-separated, pce first for the ratios")
  parser.add_argument("--warmup", type=int, default=1,
                      help="untimed steps (the first compiles)")
  parser.add_argument("--steps", type=int, default=5,
                      help="timed steps; the median is reported")
  parser.add_argument("--parallel", default="shard_map",
                      choices=parallel.KINDS)
  parser.add_argument("--out", default="", help="also append rows here")
  parser.add_argument("--config", default="",
                      help="a config file whose recipe replaces voc's")
  parser.add_argument("--variants", default="",
                      help="with --config: label=get_config-arg;... "
                           "(replaces --methods; --backbone, --width and "
                           "--solver_steps then come from the config)")
  args = parser.parse_args(argv)
  if bool(args.config) != bool(args.variants):
    parser.error("--config and --variants go together")
  try:
    variants = parse_variants(args.variants) if args.variants else [
        (m, None) for m in args.methods.split(",") if m]
    args.config_module = (load_config_module(args.config) if args.config
                          else None)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))
  for m, arg in variants:
    if arg is None and m not in METHODS:
      parser.error(f"unknown method {m!r}; expected some of {METHODS}")
  if args.config:
    args.backbone = args.width = args.solver_steps = None
  args.warmup = max(args.warmup, 1)

  header = dict(
      benchmark="train_step", machine=platform.machine(),
      processor=platform.processor() or platform.machine(),
      cpu_count=os.cpu_count(), platform=jax.default_backend(),
      device_kind=jax.devices()[0].device_kind,
      devices=jax.device_count(), jax=jax.__version__,
      xla_flags=os.environ.get("XLA_FLAGS", ""),
      **{k: v for k, v in vars(args).items() if k != "config_module"})
  rows = [header]
  print(json.dumps(header), flush=True)
  batch = make_batch(args.batch, args.crop, args.num_classes)
  runners = [Runner(args, method, batch, arg) for method, arg in variants]
  # Round-robin: step i of every method before step i + 1 of any, so that a
  # change in the machine's load hits every method alike.
  for _ in range(args.steps):
    for runner in runners:
      runner.times.append(runner.step())
  # The ratio is to the first variant with --config, else to pce.
  first = runners[0] if args.config else next(
      (r for r in runners if r.method == "pce"), None)
  base_key = f"ratio_to_{first.method if args.config else 'pce'}"
  base = None
  for runner in runners:
    row = runner.row(args)
    if runner is first:
      base = row["ms_per_step"]
    row[base_key] = (round(row["ms_per_step"] / base, 2) if base else None)
    rows.append(row)
    print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
