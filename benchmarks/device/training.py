"""Part c of the device suite: a short, better-powered CamVid training run.

``configs/camvid_small.py`` at a size the 2-CPU reproduction could not
afford: 240x180 frames (``camvid_synthetic_x1`` in ``.device/tfds``, from
``prepare.py``), crops of 145 (73 at 120x90), batch 16, one seed, ImageNet
MobileNetV2 (``.device/weights``), eta, lambda, sigma_rgb as chosen at
120x90. Runs, in priority order, in this process (``train_and_evaluate``):
``stage1`` (pCE), then from it at the stage-1 rate 0.007 (at 0.0007 stage 2
hardly moves the network: results/camvid_small/RESULTS.md) ``soft_sl_cd``
(H_CCE + P_CD), ``pce_continued``, ``hard_sl_cd``, ``gd_cd``.

Steps: 400 per run. 400 x 16 crops are the CPU run's 800 x 8 ``_long`` stage
2, the schedule where soft SL pulled ahead of pCE continued (at 200 x 8 all
stayed within noise), with 4x the pixels per crop. Equal counts make
``pce_continued`` the very program of ``stage1`` (same lr and schedule), so
the persistent compilation cache serves it: on a GPU a run's start
(compilation, tens of seconds) costs more than its steps (milliseconds).

Budget: a run is skipped, with a row, when its estimate (the runs measured
before, split by the progress lines' clock into start, seconds per step and
evaluation, scaled by :data:`COST` and :data:`CACHED`) x :data:`MARGIN` +
:data:`SLACK_S` exceeds the seconds left. Stage 2 needs stage 1; any other
failure is a row and the next run still runs. Rows: one per run,
``summary`` (test mIoU per run, differences to ``pce_continued``), ``done``.

``--dry-run``: 6/3/3 CamVid frames of ``../shared/data/camvid`` prepared at
60x45 in a temporary folder, their source deleted (a prepared dataset is
read without it), each run at crop 33, batch 2, 2 steps, 5 solver steps, a
narrow network from scratch (demo data when CamVid is absent); the first
three runs only (hard SL and GD take the same path with another method).
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time

import common  # pylint: disable=import-error  (this folder, first on sys.path)

RUNS = (  # (name, configs/camvid_small.py variant), in priority order.
    ("stage1", "stage=1"),
    ("soft_sl_cd", "stage=2,method=soft_sl,cross_entropy=cce,relaxation=cd"),
    ("pce_continued", "stage=2,method=pce"),
    ("hard_sl_cd", "stage=2,method=hard_sl,cross_entropy=cce,relaxation=cd"),
    ("gd_cd", "stage=2,method=gd,relaxation=cd"),
)
LR2 = 0.007
#: A method's (start, per-step) cost relative to pCE: the solver's loop adds
#: little to compilation; its 200 steps made a soft-SL step 4-6x a pCE step
#: on the H200 (benchmarks/RESULTS.md), GD about 1.05x.
COST = {"pce": (1.0, 1.0), "gd": (1.3, 1.1), "soft_sl": (1.5, 6.0),
        "hard_sl": (1.5, 6.0)}
#: Stage 1's cost before anything is measured (the H200's took 88 s).
PRIOR_S = {False: 90.0, True: 10.0}
CACHED = 0.5  # the start of a run whose train step was compiled before
MARGIN, SLACK_S = 1.25, 5.0
DATASET = "camvid_synthetic_x1"
CAMVID = pathlib.Path(common.REPO).parent / "shared" / "data" / "camvid"
PREPARE = "python benchmarks/device/prepare.py"


class StepClock(logging.Handler):
  """When each training progress line (``step k/N ...``) was logged."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.times = {}

  def emit(self, record):
    match = re.match(r"step\s+(\d+)/", record.getMessage())
    if match:
      self.times[int(match.group(1))] = record.created

  def split(self, start: float, end: float) -> dict[str, float]:
    """Start, seconds per step and tail of the run timed (``time.time()``)."""
    if len(self.times) < 2:
      return {}
    (k0, t0), (k1, t1) = min(self.times.items()), max(self.times.items())
    step_s = (t1 - t0) / (k1 - k0)
    return dict(start_s=max(0.0, t0 - start - k0 * step_s), step_s=step_s,
                tail_s=end - t1)


def estimate(program: tuple, measured: list[dict], prior: float) -> float:
  """Seconds the run of ``program`` (method, steps, lr) should take."""
  method, steps, _ = program
  refs = [m for m in measured if COST[m["method"]] == COST[method]] or measured
  if not refs:
    return prior * COST[method][0]
  start, step = COST[method]
  return max(m["start_s"] * (CACHED if m["program"] == program else
                             start / COST[m["method"]][0])
             + m["step_s"] * steps * step / COST[m["method"]][1] + m["tail_s"]
             for m in refs)


def tiny_camvid(tmp: str) -> dict:
  """A few CamVid frames prepared at 1/4 size; the ``config.input`` keys to
  read them."""
  from potts_jax.data.builders import builder_base, folder_builder  # pylint: disable=g-import-not-at-top
  from potts_jax.data import folder  # pylint: disable=g-import-not-at-top
  src = os.path.join(tmp, "camvid_tiny")
  for split, count in (("train", 6), ("val", 3), ("test", 3)):
    names = builder_base.read_list(CAMVID / f"{split}.txt")[:count]
    for kind in ("images", "masks"):
      os.makedirs(os.path.join(src, kind, split))
    for name in names:
      image = folder.image_path(CAMVID, f"{split}/{name}")
      shutil.copy(image, os.path.join(src, "images", split, image.name))
      shutil.copy(CAMVID / "masks" / split / f"{name}.png",
                  os.path.join(src, "masks", split))
    with open(os.path.join(src, f"{split}.txt"), "w") as f:
      f.write("\n".join(names) + "\n")
  shutil.copy(CAMVID / "classes.txt", src)
  data_dir = os.path.join(tmp, "tfds")
  folder_builder.prepare(src, data_dir, name="camvid_tiny_x4",
                         scribble_set="synthetic", seed=0, downscale=4)
  shutil.rmtree(src)  # The runs read the prepared copy alone.
  return dict(folder_root=src, dataset_config="camvid_tiny_x4",
              folder_downscale=4, data_dir=data_dir)


def make_config(variant: str, args, data: dict, init_from: str):
  """``configs/camvid_small.py:variant`` at this part's sizes."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from configs import camvid_small  # pylint: disable=g-import-not-at-top
  steps = args.steps1 if variant == "stage=1" else args.steps2
  if variant != "stage=1":
    variant += f",lr2={LR2},steps2={steps}"
  c = camvid_small.get_config(variant)
  c.update_from_flattened_dict({
      "seed": 0, "total_steps": steps, "input.crop_size": args.crop,
      "input.batch_size": args.batch,
      "eval.batch_size": 3 if args.dry_run else 16,
      "model.pretrained_dir": args.weights, "init_from": init_from,
      "input.worker_count": 0, "checkpoint_every": steps,
      "log_every": min(50, max(1, steps // 4)), "keep_checkpoints": 1,
      "image_every": 0, "figure": False,
      **{f"input.{k}": v for k, v in data.items()}})
  if args.dry_run:
    c.update_from_flattened_dict({
        "solver.num_steps": 5, "model.width": 0.35, "model.channels": 16,
        "model.low_level_channels": 8})
  if c.input.dataset == "demo":
    c.input.demo = ml_collections.ConfigDict(dict(
        height=32, width=32, num_classes=3, train_size=8, val_size=4,
        max_fraction=0.03))
    c.eval.split = "val"
  return c


def main(argv=None) -> int:
  def extra(parser):
    add = parser.add_argument
    add("--data_dir", default=os.path.join(common.DEVICE_DIR, "tfds"),
        help=f"TFDS directory holding folder/{DATASET} ({PREPARE})")
    add("--weights", default=os.path.join(common.DEVICE_DIR, "weights",
                                          "mobilenet_v2"),
        help="converted ImageNet MobileNetV2 (else weights/mobilenet_v2, "
        "else from scratch)")
    add("--workdir", default="",
        help="run folders (default: a temporary one, deleted at the end)")
    add("--steps1", type=int, help="stage-1 steps (400; dry run 2)")
    add("--steps2", type=int, help="steps of each stage-2 run (400; dry 2)")
    add("--crop", type=int, help="crop side (145; dry run 33)")
    add("--batch", type=int, help="batch size (16; dry run 2)")
  args = common.parse_args(__doc__.split("\n")[0], argv, extra)
  dry = args.dry_run
  common.setup_jax(dry, args.no_autotune)
  rec = common.Recorder(args.out, "c", dry)
  budget = common.Budget(args.budget)
  for key, gpu, cpu in (("steps1", 400, 2), ("steps2", 400, 2),
                        ("crop", 145, 33), ("batch", 16, 2)):
    if getattr(args, key) is None:
      setattr(args, key, cpu if dry else gpu)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  from potts_jax import train  # pylint: disable=g-import-not-at-top
  from potts_jax.data.builders import builder_base  # pylint: disable=g-import-not-at-top
  from potts_jax.data import sources  # pylint: disable=g-import-not-at-top
  machine = common.machine()
  rec.emit("machine", **machine)
  with tempfile.TemporaryDirectory(prefix="device_c_") as tmp:
    if dry:
      args.weights = ""
      data = tiny_camvid(tmp) if CAMVID.is_dir() else dict(dataset="demo")
      if not CAMVID.is_dir():
        rec.emit("data", note=f"{CAMVID} absent: demo data, not CamVid")
    else:
      data = dict(dataset_config=DATASET, folder_downscale=1,
                  data_dir=args.data_dir)
      for weights in (args.weights, os.path.join(common.REPO, "weights",
                                                 "mobilenet_v2"), ""):
        if not weights or os.path.isfile(os.path.join(weights, "meta.json")):
          args.weights = weights
          break
    weights = args.weights or "none: from scratch"
    try:  # The prepared dataset alone: its source need not be there.
      if not dry:
        builder_base.load_prepared(args.data_dir, "folder", DATASET)
      opened = sources.open_sources(make_config("stage=1", args, data, ""))
      image_size = list(opened.train[0]["image"].shape[:2])
    except Exception as e:  # pylint: disable=broad-except
      message = f"{type(e).__name__}: {e}"[:2000]
      if isinstance(e, FileNotFoundError) and not dry:
        message = (f"CamVid ({DATASET}) is not prepared in {args.data_dir} "
                   f"({e}); prepare it with `{PREPARE}`")
      rec.emit("data", error=message)
      print(message, file=sys.stderr)
      return 2

    workdir = args.workdir or os.path.join(tmp, "runs")
    clock = StepClock()
    absl_logging.set_verbosity(absl_logging.INFO)
    logging.getLogger("absl").addHandler(clock)
    measured, miou, failed, stage1 = [], {}, [], ""
    for name, variant in RUNS[:3] if dry else RUNS:
      if variant != "stage=1" and not stage1:
        rec.emit(name, skipped="stage 1 did not finish",
                 seconds_left=round(budget.left(), 1))
        failed.append(name)
        continue
      try:
        config = make_config(variant, args, data, stage1)
        program = (config.loss.method, config.total_steps, config.optim.lr)
        guess = estimate(program, measured, PRIOR_S[dry])
        if guess * MARGIN + SLACK_S > budget.left():
          rec.emit(name, method=config.loss.method, skipped="budget",
                   estimate_s=round(guess, 1),
                   seconds_left=round(budget.left(), 1))
          failed.append(name)
          continue
        clock.times.clear()
        start = time.time()
        record = train.train_and_evaluate(config, os.path.join(workdir, name))
        wall = time.time() - start
        if record.get("preempted"):
          rec.emit(name, error=f"stopped by SIGTERM at step {record['step']}")
          failed.append(name)
          break
        split = clock.split(start, start + wall)
        if split:  # Empty for a run read back from a finished --workdir.
          measured.append(dict(split, method=config.loss.method,
                               program=program))
        miou[name] = record["miou"]
        rec.emit(
            name, method=config.loss.method, steps=config.total_steps,
            miou=record["miou"], pixel_accuracy=record["pixel_accuracy"],
            iou={k: None if v is None or math.isnan(v) else v
                 for k, v in record["iou"].items()},
            protocol=record["protocol"], wall_s=round(wall, 1),
            read_back=not split,
            **{k: round(v, 3) for k, v in split.items()},
            estimate_s=round(guess, 1), crop=config.input.crop_size,
            batch=config.input.batch_size, image_size=image_size,
            lr=config.optim.lr, solver_steps=config.solver.num_steps,
            weights=weights,
            init_from=config.init_from,
            peak_bytes_so_far=common.peak_memory_bytes(), machine=machine)
        if name == "stage1":
          stage1 = os.path.join(workdir, name)
      except Exception as e:  # pylint: disable=broad-except
        rec.emit(name, error=f"{type(e).__name__}: {e}"[:2000])
        failed.append(name)
    logging.getLogger("absl").removeHandler(clock)
  base = miou.get("pce_continued")
  rec.emit("summary", miou=miou, minus_pce_continued=None if base is None
           else {k: v - base for k, v in miou.items() if k != "pce_continued"},
           image_size=image_size, crop=args.crop, batch=args.batch,
           weights=weights)
  rec.emit("done", seconds=round(budget.elapsed(), 1), failed=failed)
  return 0


if __name__ == "__main__":
  sys.exit(main())
