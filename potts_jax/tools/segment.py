r"""Scribbles to a mask: the pseudo-label solver on any photo, no network.

Run::

  python -m potts_jax.tools.segment --image PHOTO --scribbles SCRIBBLES.png \
      --out MASK.png

The scribble file is a single-channel PNG ('L' or 'P') of the photo's size:
``0..K-1`` a scribbled class, ``255`` unlabeled (the ScribbleSup convention;
any other value is an error). ``K`` is the largest class id + 1 (or
``--num_classes``), and every class must have at least one scribbled pixel.

The unary (the "network" σ of the energy) is, by ``--unary``:

- ``histogram`` (default): per class, a colour histogram of the scribbled
  pixels (``--bins`` bins per RGB channel, smoothed by a Gaussian of
  ``--hist_blur`` bins, plus one count spread uniformly), i.e. the logits
  ``ln p(colour_i | k)`` and σ the posterior under equal class priors;
- ``gaussian``: the model of :func:`potts_jax.tools.demo.colour_model_logits` (one
  isotropic Gaussian per class around its mean scribbled colour, ``--bandwidth``);
- ``uniform``: zero logits (only the scribbles and the Potts term speak).

The solver (:func:`potts_jax.solver.solve`) then minimises
``E(y) = η Σ H(σ_i, y_i) + λ Σ w_ij P(y_i, y_j)`` with the scribbles fixed;
the mask is ``argmax y``. The defaults (:data:`DEFAULTS`: H_CCE + P_CD,
8-NN, η 1, λ 100, σ_rgb 45, histogram 16³ bins blurred by 0.5 bin, 200 Adam
steps of 0.1): λ and σ_rgb are the best mean error of a 6 × 5 (+6) grid
(:func:`potts_jax.tools.segment_benchmark.tune`) on the 13 GrabCut photos of
:data:`potts_jax.tools.segment_benchmark.TUNING_NAMES` only (set 1, 240 px; the
other 37 are held out; benchmarks/RESULTS.md); η, the blur and the solver
come from an earlier, unrecorded sweep. The network defaults of the paper
(η 0.3, λ 6, σ_rgb 9) are far too weak a Potts
term for a colour-histogram unary. Writes ``--out`` (PNG, class ids), ``*_soft.png``
next to it (:func:`potts_jax.plots.viz.colorize` of ``y``) and prints one JSON line
with the energy.

``python -m potts_jax.tools.segment_benchmark run`` compares this solver
with scikit-image's ``random_walker`` and the graph cut on a folder in the
layout of ``shared/data/grabcut`` (:mod:`potts_jax.tools.segment_benchmark`).
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

from potts_jax.tools import demo
from potts_jax import labels as label_codes
from potts_jax import solver
from potts_jax.plots import viz
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
    ValueError: naming ``path`` when it is not a readable image (random
      bytes, truncated, a decompression bomb), when the mode, size or values
      are wrong, when nothing is scribbled, or when a class has no scribbled
      pixel. Mode and size are checked before the pixels are decoded.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"scribble file {path} not found")
  try:
    img = Image.open(path)
    if img.mode not in ("L", "P"):
      raise ValueError(f"{path}: expected a single-channel PNG ('L' or 'P') "
                       "of class ids (0..K-1, 255 unlabeled), got mode "
                       f"{img.mode!r}")
    if img.size != (shape[1], shape[0]):
      raise ValueError(f"{path}: scribble size {img.size[0]}x{img.size[1]} "
                       f"(WxH) differs from the image's {shape[1]}x{shape[0]}")
    scribbles = np.asarray(img, np.int32)
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f"{path}: cannot decode image ({type(e).__name__}: "
                     f"{e})") from e
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
  (:func:`potts_jax.tools.demo.colour_model_logits`)."""
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


def solver_objects(options: dict) -> tuple[solver.EnergyParams,
                                            solver.SolverOptions]:
  """The solver's energy and options from the segment options."""
  energy = solver.EnergyParams(**{k: options[k] for k in (
      "relaxation", "cross_entropy", "neighborhood", "eta", "lam",
      "sigma_rgb", "sigma_xy")})
  return energy, solver.SolverOptions(
      method=options["method"], num_steps=options["num_steps"],
      step_size=options["step_size"], adam_step_size=options["adam_lr"])


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
  energy, opts = solver_objects(options)
  args = (logits[None], np.asarray(image, np.float32)[None],
          np.asarray(scribbles, np.int32)[None])
  y = solver.solve(*args, energy, opts)
  e = float(solver.energy(y, *args, energy)[0])
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


def define_option_flags():
  """Defines a flag for every key of :data:`DEFAULTS` (when run, never on
  import); :func:`option_values` reads them back."""
  f = flags
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


def option_values() -> dict:
  """The values of the flags of :func:`define_option_flags`."""
  return {k: flags.FLAGS[k].value for k in DEFAULTS}


def _define_flags():
  """Defines the command's flags (called when run, never on import)."""
  flags.DEFINE_string("image", None, "Photo (any format PIL reads).")
  flags.DEFINE_string("scribbles", None, "'L' PNG of the photo's size: "
                      "0..K-1 classes, 255 unlabeled.")
  flags.DEFINE_string("out", "mask.png", "Mask PNG (class ids); the soft "
                      "labels go next to it as *_soft.png.")
  flags.DEFINE_integer("num_classes", None,
                       "K (default: largest scribble id + 1).")
  define_option_flags()


def main(argv):
  """Runs the command with the flags defined by :func:`_define_flags`."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  fv = flags.FLAGS
  options = option_values()
  if not fv.image or not fv.scribbles:
    raise app.UsageError("give --image and --scribbles")
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
