r"""GrabCut-layout benchmark of the scribbles-to-mask solver.

Run (the comparison; the tuning grid; the RESULTS.md tables from the
comparison's JSON lines, :mod:`potts_jax.tools.segment_report`)::

  python -m potts_jax.tools.segment_benchmark run --root ../shared/data/grabcut \
      --set set1 --max_size 240 --jsonl benchmarks/results/segment_set1.jsonl
  python -m potts_jax.tools.segment_benchmark tune --root ../shared/data/grabcut \
      --lams 50,100,150,250,400,600 --sigma_rgbs 10,15,20,30,45 \
      --out benchmarks/results/segment_tuning.jsonl
  python -m potts_jax.tools.segment_benchmark report \
      --inputs benchmarks/results/segment_set1.jsonl,benchmarks/results/segment_set2.jsonl \
      --results benchmarks/RESULTS.md

Per image and method: the error rate (% of the pixels with mask ≠ 255
mislabelled, at the mask's full resolution; predictions made at
``max_size`` are upsampled nearest), the IoU of the foreground (class 1) and
the wall time of the method alone. Methods: ``ours``
(:func:`potts_jax.tools.segment.segment`), scikit-image's ``random_walker`` (β 130,
the same scribbles, no unary) and ``graphcut`` (:func:`potts_jax.baselines.graphcut.solve`
of η H_CE + λ P_BL on the same unary, affinities and scribbles).

The tuning split. The defaults of :data:`potts_jax.tools.segment.DEFAULTS` were
first chosen on 13 GrabCut set-1 photos that no file recorded, so a fixed
split replaced them: :data:`TUNING_NAMES`, every 4th photo of the 50 in
sorted order (13), on which :func:`tune` chose λ and σ_rgb (set 1, 240 px);
the other 37 (:func:`heldout_names`) are held out, and every summary reports
"all" and "held-out" apart.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time

import numpy as np
from PIL import Image

from potts_jax import labels as label_codes
from potts_jax.tools import segment
from potts_jax.tools import segment_report
METHODS = segment_report.METHODS
#: Every 4th GrabCut-50 photo in sorted order (indices 0, 4, ..., 48): the
#: only photos the defaults were tuned on (by :func:`tune`).
TUNING_NAMES = ("106024", "181079", "21077", "304074", "388016", "banana1",
                "bool", "doll", "grave", "person1", "person5", "scissors",
                "teddy")


def heldout_names(names):
  """``names`` without :data:`TUNING_NAMES`, in order."""
  return [n for n in names if n not in TUNING_NAMES]


def read_names(spec: str) -> list[str]:
  """Image names from ``spec``: ``tuning`` (:data:`TUNING_NAMES`) or a file
  with one name a line (blank lines and ``#`` comments skipped).

  Raises:
    FileNotFoundError, ValueError: naming ``spec`` when it is neither, or
      when the file lists no name.
  """
  if spec == "tuning":
    return list(TUNING_NAMES)
  if not os.path.isfile(spec):
    raise FileNotFoundError(f"names file {spec} not found (or give 'tuning')")
  lines = pathlib.Path(spec).read_text().splitlines()
  names = [n for n in (ln.split("#")[0].strip() for ln in lines) if n]
  if not names:
    raise ValueError(f"names file {spec} lists no image name")
  return names


def select_names(available, names=None, exclude=None):
  """The names of ``available`` (in its order) in ``names``, not in ``exclude``.

  Raises:
    ValueError: naming the entries of ``names``/``exclude`` not available.
  """
  for given, what in ((names, "names"), (exclude, "exclude")):
    unknown = sorted(set(given or ()) - set(available))
    if unknown:
      raise ValueError(f"{what}: {unknown[:8]} are not images of the folder "
                       f"({len(available)} images)")
  keep = set(available if names is None else names) - set(exclude or ())
  return [n for n in available if n in keep]


def error_and_iou(pred: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
  """% mislabelled pixels with ``mask != 255`` and the foreground IoU.

  Args:
    pred: ``[H, W]`` int predicted classes.
    mask: ``[H, W]`` int ground truth, 255 the unknown band.
  """
  valid = mask != label_codes.UNLABELED
  err = 100.0 * float((pred[valid] != mask[valid]).mean())
  p, t = (pred == 1) & valid, (mask == 1) & valid
  union = (p | t).sum()
  return err, float((p & t).sum() / union) if union else 1.0


def _pad(image, scribbles, multiple=64):
  """Pads to a multiple of ``multiple`` (labels 254: in no term) so that
  images of similar sizes share one compilation."""
  h, w = scribbles.shape
  ph, pw = -h % multiple, -w % multiple
  image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
  scribbles = np.pad(scribbles, ((0, ph), (0, pw)),
                     constant_values=label_codes.PADDING)
  return image, scribbles


def _random_walker(image, scribbles):
  from skimage.segmentation import random_walker  # pylint: disable=g-import-not-at-top
  markers = np.where(scribbles == label_codes.UNLABELED, 0, scribbles + 1)
  return random_walker(image / 255.0, markers, beta=130, mode="cg_j",
                       channel_axis=-1).astype(np.int32) - 1


def predict(method, image, scribbles, options):
  """``[H, W]`` int32 classes of ``method`` for one K = 2 example."""
  h, w = scribbles.shape
  if method == "random_walker":
    return _random_walker(image, scribbles)
  pimage, pscrib = _pad(image, scribbles)
  if method == "ours":
    return segment.segment(pimage, pscrib, 2, **options)[1][:h, :w]
  if method != "graphcut":
    raise ValueError(f"method must be one of {METHODS}; got {method!r}")
  from potts_jax.baselines import graphcut  # pylint: disable=g-import-not-at-top
  options = dict(segment.DEFAULTS, **options)
  logits = segment.unary_logits(pimage, pscrib, 2, **options)
  assignment, _ = graphcut.solve(
      logits[None], pimage[None], pscrib[None], eta=options["eta"],
      lam=options["lam"], sigma_rgb=options["sigma_rgb"],
      neighborhood=options["neighborhood"])
  return assignment[0, :h, :w]


def machine_info() -> dict:
  """Versions and cores of this run (the meta line of the JSON lines)."""
  import jax  # pylint: disable=g-import-not-at-top
  import skimage  # pylint: disable=g-import-not-at-top
  return dict(jax=jax.__version__, backend=jax.default_backend(),
              numpy=np.__version__, skimage=skimage.__version__,
              python=platform.python_version(), cpu_count=os.cpu_count(),
              cpu=platform.processor() or platform.machine(),
              loadavg=[round(x, 2) for x in os.getloadavg()],
              date=time.strftime("%Y-%m-%d %H:%M"))


def benchmark(root, scribble_set="set1", *, max_size=None, limit=None,
              names=None, exclude=None, methods=METHODS, mask_dir=None,
              table=None, jsonl=None, **options):
  """Runs the GrabCut-layout benchmark; returns the per-image rows.

  Args:
    root: dataset folder (``images/``, ``masks/``, ``scribbles/<set>/``).
    scribble_set: ``set1`` or ``set2``.
    max_size: downscale so that the long side is at most this (labels
      nearest); errors are measured at full resolution.
    limit: first ``limit`` images (after ``names``/``exclude``) only.
    names: image names to run (None: all of the folder).
    exclude: image names to leave out.
    methods: subset of :data:`METHODS`.
    mask_dir: if set, writes ``mask_dir/<method>/<name>.png`` (full size).
    table: if set, writes the markdown tables there.
    jsonl: if set, writes a meta line and one line per image and method.
    **options: segment options (:data:`potts_jax.tools.segment.DEFAULTS`).

  Returns:
    list of dicts (name, set, method, size, solved_at, heldout, error, iou,
    seconds).
  """
  from potts_jax.data import folder  # pylint: disable=g-import-not-at-top
  unknown = set(methods) - set(METHODS)
  if unknown:
    raise ValueError(f"methods: unknown {sorted(unknown)}; known {METHODS}")
  selected = select_names(folder.names(root), names, exclude)[:limit]
  options = dict(segment.DEFAULTS, **options)
  out = open(jsonl, "w") if jsonl else None  # pylint: disable=consider-using-with
  if out:
    out.write(json.dumps(dict(meta=dict(
        machine_info(), set=scribble_set, max_size=max_size, methods=methods,
        options=options, tuning_names=TUNING_NAMES))) + "\n")
  rows = []
  for name in selected:
    full = folder.load_example(root, name, scribble_set=scribble_set)
    h, w = full.mask.shape
    ex = full if max_size is None or max(h, w) <= max_size else (
        folder.load_example(root, name, scribble_set=scribble_set,
                            long_side=max_size))
    for method in methods:
      start = time.perf_counter()
      pred = predict(method, ex.image, ex.scribbles, options)
      seconds = time.perf_counter() - start
      pred = np.asarray(Image.fromarray(pred.astype(np.uint8)).resize(
          (w, h), Image.NEAREST), np.int32)
      err, iou = error_and_iou(pred, full.mask)
      row = dict(name=name, set=scribble_set, method=method, size=f"{w}x{h}",
                 solved_at=f"{ex.mask.shape[1]}x{ex.mask.shape[0]}",
                 heldout=name not in TUNING_NAMES, error=round(err, 4),
                 iou=round(iou, 4), seconds=round(seconds, 3))
      print(json.dumps(row), flush=True)
      if out:
        out.write(json.dumps(row) + "\n")
        out.flush()
      rows.append(row)
      if mask_dir:
        os.makedirs(os.path.join(mask_dir, method), exist_ok=True)
        Image.fromarray(pred.astype(np.uint8), "L").save(
            os.path.join(mask_dir, method, f"{name}.png"))
  if out:
    out.close()
  for s in segment_report.summarize(rows, methods):
    print(json.dumps(dict(s, set=scribble_set)), flush=True)
  if table:
    pathlib.Path(table).write_text(
        segment_report.summary_table(rows, methods) + "\n" +
        segment_report.markdown_table(rows, methods))
  return rows


def tune(root, scribble_set="set1", *, lams, sigma_rgbs, names=TUNING_NAMES,
         max_size=240, jsonl=None, **options):
  """The λ × σ_rgb grid of ``ours`` on ``names``; returns one dict per cell
  (lam, sigma_rgb, images, mean_error, mean_iou), best (lowest mean error)
  first. Other options are :data:`potts_jax.tools.segment.DEFAULTS`."""
  results = []
  for lam in lams:
    for sigma_rgb in sigma_rgbs:
      rows = benchmark(root, scribble_set, max_size=max_size, names=names,
                       methods=("ours",), lam=lam, sigma_rgb=sigma_rgb,
                       **options)
      results.append(dict(lam=lam, sigma_rgb=sigma_rgb, images=len(rows),
                          mean_error=round(float(np.mean(
                              [r["error"] for r in rows])), 3),
                          mean_iou=round(float(np.mean(
                              [r["iou"] for r in rows])), 4)))
      print(json.dumps(dict(results[-1], tuning=True)), flush=True)
      if jsonl:
        with open(jsonl, "a") as f:
          f.write(json.dumps(dict(results[-1], set=scribble_set,
                                  max_size=max_size, names=list(names))) + "\n")
  return sorted(results, key=lambda r: r["mean_error"])


def _run(fv):
  """``run``: :func:`benchmark` with the flags' photos, methods and options."""
  from potts_jax.data import folder  # pylint: disable=g-import-not-at-top
  try:
    available = folder.names(fv.root)
    names = (heldout_names(available) if fv.names == "heldout" else
             read_names(fv.names) if fv.names else None)
    exclude = read_names(fv.exclude) if fv.exclude else None
    names = select_names(available, names, exclude)
    unknown = set(fv.methods) - set(METHODS)
    if unknown:
      raise ValueError(f"--methods: unknown {sorted(unknown)}; known "
                       f"{METHODS}")
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"error: {e}") from e
  benchmark(fv.root, fv.set, max_size=fv.max_size or None, limit=fv.limit,
            names=names, methods=tuple(fv.methods), mask_dir=fv.mask_dir,
            table=fv.table, jsonl=fv.jsonl, **segment.option_values())


def main(argv):
  """``run``, ``tune`` or ``report`` (module doc), with :func:`_flags`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS
  if argv[1:] == ["run"]:
    _run(fv)
  elif argv[1:] == ["tune"]:
    best = tune(fv.root, fv.set, lams=[float(x) for x in fv.lams],
                sigma_rgbs=[float(x) for x in fv.sigma_rgbs],
                max_size=fv.max_size, jsonl=fv.out)
    print(json.dumps(dict(best=best[0])))
  elif argv[1:] == ["report"]:
    segment_report.update_results(fv.results, fv.inputs)
  else:
    raise SystemExit(f"give one command, run, tune or report; got "
                     f"{argv[1:]}")


def _flags():
  """Defines this module's command-line flags (when run, not on import)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("root", "../shared/data/grabcut", "GrabCut-layout folder.")
  flags.DEFINE_enum("set", "set1", ["set1", "set2"], "Scribble set.")
  flags.DEFINE_integer("limit", None, "run: first N images.")
  flags.DEFINE_string("names", None, "run: only these photos: 'tuning', "
                      "'heldout' or a file with one name a line.")
  flags.DEFINE_string("exclude", None, "run: leave out the photos named in "
                      "this file (one a line), or 'tuning'.")
  flags.DEFINE_list("methods", list(METHODS), "run: methods compared.")
  flags.DEFINE_string("table", None, "run: markdown table file.")
  flags.DEFINE_string("jsonl", None, "run: per-image JSON lines file.")
  flags.DEFINE_string("mask_dir", None, "run: write masks here.")
  flags.DEFINE_list("lams", ["50", "100", "150", "250", "400", "600"],
                    "tune: λ grid.")
  flags.DEFINE_list("sigma_rgbs", ["10", "15", "20", "30", "45"],
                    "tune: σ_rgb grid.")
  flags.DEFINE_integer("max_size", 240, "Long side the photos are solved "
                       "at (0: full size).")
  flags.DEFINE_string("out", None, "tune: append the grid's JSON lines here.")
  flags.DEFINE_list("inputs", [], "report: benchmark JSON lines files.")
  flags.DEFINE_string("results", "benchmarks/RESULTS.md", "report: markdown "
                      f"file with a {segment_report.BEGIN} ... "
                      f"{segment_report.END} block.")
  segment.define_option_flags()


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from potts_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.prefer_threaded_cpu_loops()
  _flags()
  app.run(main)
