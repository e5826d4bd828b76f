r"""Scribbles to a mask: the pseudo-label solver on any photo, no network.

Run::

  python -m potts_jax.segment --image PHOTO --scribbles SCRIBBLES.png \
      --out MASK.png
  python -m potts_jax.segment --benchmark ../shared/data/grabcut --set set1 \
      --max_size 320 --table grabcut_set1.md

The scribble file is a single-channel PNG ('L' or 'P') of the photo's size:
``0..K-1`` a scribbled class, ``255`` unlabeled (the ScribbleSup convention;
any other value is an error). ``K`` is the largest class id + 1 (or
``--num_classes``), and every class must have at least one scribbled pixel.

The unary (the "network" σ of ARCHITECTURE §3) is, by ``--unary``:

- ``histogram`` (default): per class, a colour histogram of the scribbled
  pixels (``--bins`` bins per RGB channel, smoothed by a Gaussian of
  ``--hist_blur`` bins, plus one count spread uniformly), i.e. the logits
  ``ln p(colour_i | k)`` and σ the posterior under equal class priors;
- ``gaussian``: the model of :func:`potts_jax.demo.colour_model_logits` (one
  isotropic Gaussian per class around its mean scribbled colour, ``--bandwidth``);
- ``uniform``: zero logits (only the scribbles and the Potts term speak).

The solver (:func:`potts_jax.solver.solve`) then minimises
``E(y) = η Σ H(σ_i, y_i) + λ Σ w_ij P(y_i, y_j)`` with the scribbles fixed;
the mask is ``argmax y``. The defaults (:data:`DEFAULTS`: H_CCE + P_CD,
8-NN, η 1, λ 100, σ_rgb 45, histogram 16³ bins blurred by 0.5 bin, 200 Adam
steps of 0.1): λ and σ_rgb are the best mean error of a 6 × 5 (+6) grid
(:func:`potts_jax.segment_benchmark.tune`) on the 13 GrabCut photos of
:data:`potts_jax.segment_benchmark.TUNING_NAMES` only (set 1, 240 px; the
other 37 are held out; benchmarks/RESULTS.md); η, the blur and the solver
come from an earlier, unrecorded sweep. The network defaults of the paper
(η 0.3, λ 6, σ_rgb 9) are far too weak a Potts
term for a colour-histogram unary. Writes ``--out`` (PNG, class ids), ``*_soft.png``
next to it (:func:`potts_jax.viz.colorize` of ``y``) and prints one JSON line
with the energy.

``--benchmark DIR`` runs :func:`potts_jax.segment_benchmark.benchmark` over
a folder in the layout of ``shared/data/grabcut`` (``--set`` set1 or set2;
``--names tuning|heldout|FILE`` and ``--exclude FILE`` choose the photos) and
compares, per image, this solver, scikit-image's ``random_walker`` (β = 130,
same scribbles) and the graph cut (:func:`potts_jax.graphcut.solve`, same
scribbles, affinities and unary): error rate (% of pixels with mask ≠ 255
mislabelled, at the mask's full resolution; predictions made at
``--max_size`` are upsampled nearest), IoU of the foreground (class 1) and
wall time. One JSON line per image and method (also to ``--jsonl``), one per
method over all and over the held-out photos, and markdown tables to
``--table``.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags
import numpy as np
from PIL import Image
from scipy import ndimage

from potts_jax import demo
from potts_jax import labels as label_codes
from potts_jax import solver
from potts_jax import viz
from potts_jax import xla_flags

UNARIES = ("histogram", "gaussian", "uniform")
#: Largest number of classes a scribble file may name (ids 0..MAX_CLASSES-1).
MAX_CLASSES = 64

DEFAULTS = dict(unary="histogram", bins=16, hist_blur=0.5, bandwidth=30.0,
                relaxation="cd", cross_entropy="cce", neighborhood="nn8",
                eta=1.0, lam=100.0, sigma_rgb=45.0, sigma_xy=100.0,
                num_steps=200, method="adam", step_size=0.075, adam_lr=0.1)


def read_image(path: str) -> np.ndarray:
  """The photo at ``path`` as ``[H, W, 3]`` float32 RGB in 0..255."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"image {path} not found")
  return np.asarray(Image.open(path).convert("RGB"), np.float32)


def read_scribbles(path: str, shape: tuple[int, int],
                   num_classes: int | None = None) -> tuple[np.ndarray, int]:
  """Reads and checks a scribble PNG.

  Args:
    path: single-channel PNG, ``0..K-1`` classes, 255 unlabeled.
    shape: the photo's ``(H, W)``.
    num_classes: ``K``; None infers it as the largest class id + 1.

  Returns:
    ``(scribbles [H, W] int32, K)``.

  Raises:
    ValueError: naming ``path`` when the mode, size or values are wrong,
      when nothing is scribbled, or when a class has no scribbled pixel.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"scribble file {path} not found")
  img = Image.open(path)
  if img.mode not in ("L", "P"):
    raise ValueError(f"{path}: expected a single-channel PNG ('L' or 'P') of "
                     f"class ids (0..K-1, 255 unlabeled), got mode {img.mode!r}")
  scribbles = np.asarray(img, np.int32)
  if scribbles.shape != tuple(shape):
    raise ValueError(f"{path}: scribble size {scribbles.shape[1]}x"
                     f"{scribbles.shape[0]} (WxH) differs from the image's "
                     f"{shape[1]}x{shape[0]}")
  limit = MAX_CLASSES if num_classes is None else num_classes
  bad = (scribbles >= limit) & (scribbles != label_codes.UNLABELED)
  if bad.any():
    values = np.unique(scribbles[bad])[:8].tolist()
    raise ValueError(f"{path}: values {values} outside the encoding: expected "
                     f"class ids 0..{limit - 1} and 255 for unlabeled")
  labeled = scribbles != label_codes.UNLABELED
  if not labeled.any():
    raise ValueError(f"{path}: no scribble at all (every pixel is 255, "
                     "unlabeled); expected at least one class id 0..K-1")
  k = int(scribbles[labeled].max()) + 1 if num_classes is None else num_classes
  missing = sorted(set(range(k)) - set(np.unique(scribbles[labeled]).tolist()))
  if missing:
    raise ValueError(f"{path}: classes {missing} of 0..{k - 1} have no "
                     "scribbled pixel; every class needs at least one")
  return scribbles, k


def histogram_logits(image, scribbles, num_classes, bins=16, blur=1.0):
  """``ln p(colour | k)`` from smoothed colour histograms of the scribbles.

  Args:
    image: ``[H, W, 3]`` in 0..255.
    scribbles: ``[H, W]`` int, 255 unlabeled (254 padding ignored).
    num_classes: K.
    bins: bins per channel.
    blur: Gaussian smoothing of each histogram, in bins (0: none).

  Returns:
    ``[H, W, K]`` float32 log-likelihoods.
  """
  index = np.clip((np.asarray(image) * (bins / 256.0)).astype(np.int64), 0,
                  bins - 1)
  flat = (index[..., 0] * bins + index[..., 1]) * bins + index[..., 2]
  out = []
  for k in range(num_classes):
    hist = np.bincount(flat[scribbles == k], minlength=bins**3).astype(
        np.float64).reshape(bins, bins, bins)
    if blur > 0:
      hist = ndimage.gaussian_filter(hist, blur, mode="constant")
    hist += 1.0 / bins**3  # one count spread over all bins: no ln 0.
    out.append(np.log(hist / hist.sum()).reshape(-1)[flat])
  return np.stack(out, -1).astype(np.float32)


def gaussian_logits(image, scribbles, num_classes, bandwidth=30.0):
  """``-‖I_i - μ_k‖² / (2 bandwidth²)``, ``μ_k`` the mean scribbled colour
  (:func:`potts_jax.demo.colour_model_logits`)."""
  return demo.colour_model_logits(np.asarray(image, np.float64), scribbles,
                                  num_classes, bandwidth)


def unary_logits(image, scribbles, num_classes, *, unary="histogram", bins=16,
                 hist_blur=1.0, bandwidth=30.0, **unused):
  """The unary logits ``[H, W, K]`` named by ``unary`` (see the module doc)."""
  if unary == "histogram":
    return histogram_logits(image, scribbles, num_classes, bins, hist_blur)
  if unary == "gaussian":
    return gaussian_logits(image, scribbles, num_classes, bandwidth)
  if unary == "uniform":
    return np.zeros(scribbles.shape + (num_classes,), np.float32)
  raise ValueError(f"unary must be one of {UNARIES}; got {unary!r}")


def _solver_options(options):
  """Keyword arguments of :func:`solver.solve` from the segment options."""
  opts = {k: options[k] for k in ("relaxation", "cross_entropy",
                                  "neighborhood", "eta", "lam", "sigma_rgb",
                                  "sigma_xy", "num_steps")}
  if options["method"] == "adam":
    import optax  # pylint: disable=g-import-not-at-top
    opts.update(method="optax", optimizer=_adam(options["adam_lr"]))
  else:
    opts.update(method=options["method"], step_size=options["step_size"])
  return opts


_ADAM = {}


def _adam(lr):
  """One optax.adam object per rate (a new object would retrace)."""
  import optax  # pylint: disable=g-import-not-at-top
  return _ADAM.setdefault(lr, optax.adam(lr))


def segment(image, scribbles, num_classes, **options):
  """Soft labels, mask and energy for one photo.

  Args:
    image: ``[H, W, 3]`` float 0..255.
    scribbles: ``[H, W]`` int, ``0..K-1``, 255 unlabeled, 254 padding.
    num_classes: K.
    **options: any of :data:`DEFAULTS`.

  Returns:
    ``(y [H, W, K], mask [H, W] int32, energy float, logits [H, W, K])``.
  """
  options = dict(DEFAULTS, **options)
  logits = unary_logits(image, scribbles, num_classes, **options)
  opts = _solver_options(options)
  args = (logits[None], np.asarray(image, np.float32)[None],
          np.asarray(scribbles, np.int32)[None])
  y = solver.solve(*args, **opts)
  e = float(solver.energy(y, *args, **opts)[0])
  y = np.asarray(y[0])
  return y, y.argmax(-1).astype(np.int32), e, logits


def write_outputs(out: str, y: np.ndarray, mask: np.ndarray) -> str:
  """Writes the mask PNG at ``out`` and ``*_soft.png``; returns the latter."""
  folder = os.path.dirname(os.path.abspath(out))
  os.makedirs(folder, exist_ok=True)
  Image.fromarray(mask.astype(np.uint8), "L").save(out)
  soft = os.path.splitext(out)[0] + "_soft.png"
  Image.fromarray(viz.colorize(y)).save(soft)
  return soft


# --- command line ------------------------------------------------------------


def _define_flags():
  """Defines the command's flags (called when run, never on import)."""
  f = flags
  f.DEFINE_string("image", None, "Photo (any format PIL reads).")
  f.DEFINE_string("scribbles", None,
                  "'L' PNG of the photo's size: 0..K-1 classes, 255 unlabeled.")
  f.DEFINE_string("out", "mask.png", "Mask PNG (class ids); the soft labels "
                  "go next to it as *_soft.png.")
  f.DEFINE_integer("num_classes", None, "K (default: largest scribble id + 1).")
  f.DEFINE_enum("unary", DEFAULTS["unary"], UNARIES, "Unary (module doc).")
  f.DEFINE_integer("bins", DEFAULTS["bins"], "Histogram bins per channel.")
  f.DEFINE_float("hist_blur", DEFAULTS["hist_blur"], "Histogram blur (bins).")
  f.DEFINE_float("bandwidth", DEFAULTS["bandwidth"], "Gaussian unary width.")
  f.DEFINE_string("relaxation", DEFAULTS["relaxation"], "Potts relaxation.")
  f.DEFINE_string("cross_entropy", DEFAULTS["cross_entropy"], "H(σ, y).")
  f.DEFINE_enum("neighborhood", DEFAULTS["neighborhood"],
                ["nn4", "nn8", "dense"], "Neighbourhood (dense: relaxation "
                "bl or q, a far smaller --lam; not for the graph cut).")
  f.DEFINE_float("eta", DEFAULTS["eta"], "Weight η of the unary term.")
  f.DEFINE_float("lam", DEFAULTS["lam"], "Weight λ of the Potts term.")
  f.DEFINE_float("sigma_rgb", DEFAULTS["sigma_rgb"], "Affinity σ_rgb.")
  f.DEFINE_float("sigma_xy", DEFAULTS["sigma_xy"],
                 "Spatial σ_xy (pixels) of --neighborhood=dense.")
  f.DEFINE_integer("num_steps", DEFAULTS["num_steps"], "Solver steps.")
  f.DEFINE_enum("method", DEFAULTS["method"],
                ["adam", "gd", "mirror", "mirror_momentum"],
                "Update: adam (optax.adam(--adam_lr) on the logits), gd "
                "(--step_size), mirror, mirror_momentum.")
  f.DEFINE_float("step_size", DEFAULTS["step_size"], "GD step.")
  f.DEFINE_float("adam_lr", DEFAULTS["adam_lr"], "Adam learning rate.")
  f.DEFINE_string("benchmark", None, "GrabCut-layout folder: benchmark mode.")
  f.DEFINE_enum("set", "set1", ["set1", "set2"], "Scribble set (benchmark).")
  f.DEFINE_integer("max_size", None, "Benchmark: downscale the long side.")
  f.DEFINE_integer("limit", None, "Benchmark: first N images.")
  f.DEFINE_string("names", None, "Benchmark: only these photos: 'tuning', "
                  "'heldout' or a file with one name a line.")
  f.DEFINE_string("exclude", None, "Benchmark: leave out the photos named in "
                  "this file (one a line), or 'tuning'.")
  f.DEFINE_list("methods", ["ours", "random_walker", "graphcut"],
                "Benchmark: methods compared.")
  f.DEFINE_string("table", None, "Benchmark: markdown table file.")
  f.DEFINE_string("jsonl", None, "Benchmark: per-image JSON lines file.")
  f.DEFINE_string("mask_dir", None, "Benchmark: write masks here.")


def _run_benchmark(fv, options):
  """``--benchmark``: :func:`potts_jax.segment_benchmark.benchmark`."""
  from potts_jax import segment_benchmark as bench  # pylint: disable=g-import-not-at-top
  from potts_jax.data import folder  # pylint: disable=g-import-not-at-top
  try:
    available = folder.names(fv.benchmark)
    names = (bench.heldout_names(available) if fv.names == "heldout" else
             bench.read_names(fv.names) if fv.names else None)
    exclude = bench.read_names(fv.exclude) if fv.exclude else None
    names = bench.select_names(available, names, exclude)
    unknown = set(fv.methods) - set(bench.METHODS)
    if unknown:
      raise ValueError(f"--methods: unknown {sorted(unknown)}; known "
                       f"{bench.METHODS}")
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  bench.benchmark(fv.benchmark, fv.set, max_size=fv.max_size, limit=fv.limit,
                  names=names, methods=tuple(fv.methods),
                  mask_dir=fv.mask_dir, table=fv.table, jsonl=fv.jsonl,
                  **options)


def main(argv):
  """Runs the command with the flags defined by :func:`_define_flags`."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  fv = flags.FLAGS
  options = {k: fv[k].value for k in DEFAULTS}
  if fv.benchmark:
    _run_benchmark(fv, options)
    return
  if not fv.image or not fv.scribbles:
    raise app.UsageError("give --image and --scribbles (or --benchmark DIR)")
  try:
    image = read_image(fv.image)
    scribbles, k = read_scribbles(fv.scribbles, image.shape[:2],
                                  fv.num_classes)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  y, mask, e, _ = segment(image, scribbles, k, **options)
  soft = write_outputs(fv.out, y, mask)
  print(json.dumps(dict(image=fv.image, num_classes=k, energy=e,
                        classes_in_mask=np.unique(mask).tolist(),
                        mask=fv.out, soft=soft, **options)))


if __name__ == "__main__":
  xla_flags.prefer_threaded_cpu_loops()
  _define_flags()
  app.run(main)
