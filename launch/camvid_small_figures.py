r"""Pictures and measurements of the CamVid sweep that need its checkpoints.

* ``results/camvid_small/pseudo_labels.png``: the soft pseudo-labels of 4
  test frames under P_CD and P_BL (H_CCE, 4-NN, the selected eta, lambda,
  sigma_rgb) from the seed-0 stage-1 network's logits, coloured by
  :mod:`potts_jax.plots.viz`, with their entropy.
* ``results/camvid_small/prediction_change.json``: for every finished seed-0
  stage-2 run, the fraction of test pixels (void excluded) whose predicted
  class differs from the stage-1 network's: how far stage 2 moved it.

Usage (after ``launch/camvid_small.py run``)::

  python launch/camvid_small_figures.py [--root runs/camvid_small]
  python launch/camvid_small_report.py
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "camvid_small"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "launch"))

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top,wrong-import-position

import camvid_small as sweep  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import camvid_small as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from potts_jax import checkpointing, solver, steps, train  # pylint: disable=g-import-not-at-top,wrong-import-position
from potts_jax.plots import viz  # pylint: disable=g-import-not-at-top,wrong-import-position
from potts_jax.data import augmentation, sources  # pylint: disable=g-import-not-at-top,wrong-import-position


def _open(root: pathlib.Path):
  config = config_lib.get_config("stage=2")
  config.input.data_dir = str(root / "tfds")
  data = sources.open_sources(config)
  return config, data


def _model(config, data, workdir: pathlib.Path):
  model = train.build_model(config, data.num_classes)
  checkpointing.restore_model(workdir, model)
  model.eval()
  return model


def _predict(model, images: np.ndarray) -> np.ndarray:
  """``[N, H, W]`` argmax classes of ``[N, H, W, 3]`` images, 16 at a time."""
  out = []
  for i in range(0, len(images), 16):
    x = jnp.asarray(images[i:i + 16], jnp.float32)
    out.append(np.asarray(jnp.argmax(model(steps.normalize(x)), -1)))
  return np.concatenate(out)


def prediction_change(root: pathlib.Path, path: pathlib.Path) -> dict:
  config, data = _open(root)
  examples = [augmentation.read_example(data.eval[i])
              for i in range(len(data.eval))]
  images = np.stack([e["image"] for e in examples])
  valid = np.stack([e["mask"] for e in examples]) < data.num_classes
  seed0 = root / "seed0"
  before = _predict(_model(config, data, seed0 / "stage1"), images)
  changed = {}
  for name in sweep.RUNS:
    if name in ("stage1", "full") or not sweep.result_path(name, 0).is_file():
      continue
    after = _predict(_model(config, data, seed0 / name), images)
    changed[name] = round(float(np.mean((after != before)[valid])), 5)
    print(name, changed[name], flush=True)
  record = {"changed_fraction": changed, "split": config.eval.split,
            "seed": 0}
  path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
  return record


def pseudo_label_figure(root: pathlib.Path, path: pathlib.Path) -> None:
  """4 test frames: soft labels under P_CD and P_BL from stage-1 logits."""
  config, data = _open(root)
  chosen = json.loads((RESULTS / "selection.json").read_text())["chosen"]
  model = _model(config, data, root / "seed0" / "stage1")
  picks = np.linspace(0, len(data.eval) - 1, 4).astype(int)
  examples = [augmentation.read_example(data.eval[int(i)]) for i in picks]
  image = jnp.asarray(np.stack([e["image"] for e in examples]), jnp.float32)
  scribbles = jnp.asarray(np.stack([e["scribbles"] for e in examples]),
                          jnp.int32)
  logits = model(steps.normalize(image))
  ys = {r.upper(): solver.solve(logits, image, scribbles, relaxation=r,
                                cross_entropy="cce", **chosen)
        for r in ("cd", "bl")}
  colours = viz.palette(data.num_classes)
  columns = ["image + scribbles", "ground truth"] + [
      f"{kind} P_{k}" for k in ys for kind in ("y", "entropy")]
  fig = Figure(figsize=(1.9 * len(columns), 1.6 * len(examples)))
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(examples), len(columns), squeeze=False)
  for i, (row, example) in enumerate(zip(axes, examples)):
    panels = [viz.overlay_labels(example["image"], example["scribbles"],
                                 colours),
              viz.overlay_labels(example["image"], example["mask"], colours)]
    for k, y in ys.items():
      soft = np.asarray(y[i])
      panels += [viz.colorize(soft, colours), viz.entropy(soft)]
    for ax, panel, name in zip(row, panels, columns):
      if panel.ndim == 2:
        ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
      else:
        ax.imshow(panel)
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(name, fontsize=8)
  fig.suptitle("CamVid test frames: soft pseudo-labels from the seed-0 "
               "stage-1 logits (H_CCE, 4-NN; entropy 0 black, 1 white)",
               fontsize=9)
  fig.tight_layout()
  viz.save_figure(fig, str(path))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="runs/camvid_small")
  args = parser.parse_args(argv)
  root = pathlib.Path(args.root).resolve()
  pseudo_label_figure(root, RESULTS / "pseudo_labels.png")
  prediction_change(root, RESULTS / "prediction_change.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
