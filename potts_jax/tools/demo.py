r"""The README's main job: the pseudo-label solver on an embedded scene.

Run::

  python -m potts_jax.tools.demo --out demo_out

The scene is generated here (no data files, no download): a 96x128 photo-like
image with three objects on a shaded, textured background, noise whose colour
ranges overlap, and one scribble per object plus background strokes. The
unary is a Gaussian colour model fitted to the scribbled pixels (a stand-in
for the network until training exists). The solver (paper defaults: H_CCE +
P_CD, 4-NN, η 0.3, λ 6, σ_rgb 9, 200 steps of 0.075) turns the noisy colour
model into pseudo-labels. Writes ``OUT/demo.png`` (image + scribbles, unary,
soft pseudo-labels, argmax, energy per step) and ``OUT/demo.json`` (energies
and the pixel accuracy of unary and pseudo-labels against the scene's truth);
expected (seed 0): the energy falls monotonically, 1688 → 1264, and the pixel
accuracy rises from 0.919 (colour model) to 0.937 (argmax of the pseudo-labels);
200 plain steps do not reach the optimum yet (see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
import jax
import numpy as np

from potts_jax import solver
from potts_jax.plots import viz
from potts_jax import xla_flags
def define_flags() -> None:
  """The command's flags, defined when it runs (not on import, so that other
  absl programs may import this module)."""
  flags.DEFINE_string("out", "demo_out", "Output folder.")
  flags.DEFINE_integer("steps", 200, "Solver steps.")
  flags.DEFINE_string("relaxation", "cd", "Potts relaxation.")
  flags.DEFINE_string("cross_entropy", "cce", "Cross-entropy.")
  flags.DEFINE_integer("seed", 0, "Seed of the scene's noise.")


NUM_CLASSES = 4
_COLOURS = np.array(
    [[120, 130, 140], [170, 80, 70], [80, 150, 90], [90, 100, 170]], np.float64
)


def make_scene(height: int = 96, width: int = 128, seed: int = 0):
  """A synthetic segmentation scene.

  Returns:
    ``(image [H, W, 3] float32 0..255, truth [H, W] int32, scribbles [H, W]
    int32 with 255 unlabeled)``.
  """
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
  truth = np.zeros((height, width), np.int32)
  disk = (rows - 0.45 * height) ** 2 + (cols - 0.25 * width) ** 2
  truth[disk < (0.22 * height) ** 2] = 1
  truth[(rows > 0.2 * height) & (rows < 0.75 * height)
        & (cols > 0.52 * width) & (cols < 0.7 * width)] = 2
  tri = (rows > 0.55 * height) & (cols > 0.72 * width) & (
      cols - 0.72 * width < (rows - 0.55 * height) * 1.2)
  truth[tri] = 3
  image = _COLOURS[truth]
  shade = 40.0 * (cols / width - 0.5) + 20.0 * np.sin(rows / 9.0)
  image = image + shade[..., None] + rng.normal(0, 12.0, image.shape)
  image = np.clip(image, 0, 255).astype(np.float32)

  scribbles = np.full((height, width), 255, np.int32)
  def stroke(r0, c0, r1, c1, label):
    for t in np.linspace(0, 1, 4 * max(height, width)):
      r, c = int(round(r0 + t * (r1 - r0))), int(round(c0 + t * (c1 - c0)))
      scribbles[max(r - 1, 0):r + 2, max(c - 1, 0):c + 2] = label
  h, w = height, width
  stroke(0.40 * h, 0.15 * w, 0.50 * h, 0.33 * w, 1)
  stroke(0.30 * h, 0.61 * w, 0.65 * h, 0.61 * w, 2)
  stroke(0.85 * h, 0.80 * w, 0.90 * h, 0.92 * w, 3)
  stroke(0.08 * h, 0.05 * w, 0.08 * h, 0.90 * w, 0)
  stroke(0.90 * h, 0.05 * w, 0.80 * h, 0.45 * w, 0)
  return image, truth, scribbles


def colour_model_logits(image, scribbles, num_classes, bandwidth=30.0):
  """Logits of an isotropic Gaussian colour model fitted to the scribbles.

  ``logit_k(i) = -‖I_i - μ_k‖² / (2 bandwidth²)`` with ``μ_k`` the mean colour
  of the pixels scribbled ``k``.

  Returns:
    ``[H, W, K]`` float32.
  """
  means = np.stack([image[scribbles == k].mean(axis=0)
                    for k in range(num_classes)])
  dist = ((image[:, :, None, :] - means[None, None]) ** 2).sum(-1)
  return (-dist / (2.0 * bandwidth**2)).astype(np.float32)


def run(out_dir: str, steps: int = 200, relaxation: str = "cd",
        cross_entropy: str = "cce", seed: int = 0) -> dict:
  """Solves the demo scene, writes the figure and a JSON summary."""
  image, truth, scribbles = make_scene(seed=seed)
  logits = colour_model_logits(image, scribbles, NUM_CLASSES)
  y, energies = solver.solve_with_energies(
      logits[None], image[None], scribbles[None], relaxation=relaxation,
      cross_entropy=cross_entropy, num_steps=steps,
  )
  y, energies = np.asarray(y[0]), np.asarray(energies[:, 0])
  sigma = np.asarray(jax.nn.softmax(logits, axis=-1))
  summary = dict(
      relaxation=relaxation, cross_entropy=cross_entropy, steps=steps,
      energy_start=float(energies[0]), energy_end=float(energies[-1]),
      unary_accuracy=float((sigma.argmax(-1) == truth).mean()),
      pseudo_label_accuracy=float((y.argmax(-1) == truth).mean()),
  )
  os.makedirs(out_dir, exist_ok=True)
  fig = viz.solver_figure(
      image, scribbles, sigma, y, energies,
      title=f"H_{cross_entropy.upper()} + P_{relaxation.upper()}, 4-NN, "
      f"{steps} steps: accuracy {summary['unary_accuracy']:.3f} (unary) → "
      f"{summary['pseudo_label_accuracy']:.3f} (pseudo-labels)",
  )
  viz.save_figure(fig, os.path.join(out_dir, "demo.png"))
  with open(os.path.join(out_dir, "demo.json"), "w") as f:
    json.dump(dict(summary, energies=energies.tolist()), f, indent=1)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  summary = run(f.out, f.steps, f.relaxation, f.cross_entropy, f.seed)
  print(json.dumps(summary))
  print(f"wrote {os.path.join(f.out, 'demo.png')}")


if __name__ == "__main__":
  xla_flags.prefer_threaded_cpu_loops()
  define_flags()
  app.run(main)
