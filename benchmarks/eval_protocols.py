"""How far the ``padded`` eval protocol is from ``full``, on a trained network.

Run (after training the CamVid-small stage-1 network, about 2.5 min)::

  python -m potts_jax.main --config=configs/camvid_small.py:stage=1 \
      --workdir=runs/camvid_small_eval/stage1 --config.seed=0
  python benchmarks/eval_protocols.py --workdir=runs/camvid_small_eval/stage1

The network (``configs/camvid_small.py:stage=1``, 11 CamVid classes) predicts
each image under ``eval_protocol=full`` (every image at its own size,
unpadded: the network's output on the image alone) and under ``padded``
(bottom / right zero padding to a fixed square, or to the largest image of
each batch, batches of ``--batch``), through
:func:`potts_jax.evaluation.predictions`. For each data set and padding it prints
one JSON row: the share of image pixels whose predicted class (argmax)
differs between the two, the share of images with any change, and, where the
ground truth has the network's classes (CamVid), both mIoUs and their
difference. Data (``../shared/data``):

* ``camvid_test``: the 233 CamVid test frames at 120 x 90, the size the
  network was trained at (the config's eval source);
* ``camvid_test_varied``: the same frames (from the 240 x 180 files) resized
  to long sides 120, 160, 200, 240 in turn (labels nearest): varied sizes;
* ``grabcut``: the 50 GrabCut photos at full size (284 x 398 to 640 x 480); no
  CamVid classes, so only the changed share;
* ``voc_fixture``: the 2 VOC images of ``voc_scribblesup`` (500 x 281,
  500 x 366); VOC classes, so only the changed share.

Rows are also appended to ``--out`` (``benchmarks/results/
eval_protocols.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
from PIL import Image

from potts_jax import checkpointing
from potts_jax import evaluation
from potts_jax import metrics
from potts_jax import train
from potts_jax.data import folder
from potts_jax.data import sources as sources_lib
REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _example(name, image, mask, scribbles=None):
  mask = np.asarray(mask, np.uint8)
  return {"image": np.asarray(image, np.uint8), "mask": mask,
          "scribbles": (np.full_like(mask, 255) if scribbles is None
                        else np.asarray(scribbles, np.uint8)),
          "name": name}


def camvid_varied(sides=(120, 160, 200, 240)) -> list[dict]:
  """CamVid test frames resized to long sides cycling through ``sides``."""
  root = DATA / "camvid"
  out = []
  for i, name in enumerate((root / "test.txt").read_text().split()):
    image = Image.open(root / "images" / "test" / f"{name}.jpg").convert("RGB")
    mask = Image.open(root / "masks" / "test" / f"{name}.png")
    side = sides[i % len(sides)]
    size = (side, round(side * image.size[1] / image.size[0]))
    out.append(_example(name, image.resize(size, Image.BILINEAR),
                        mask.resize(size, Image.NEAREST)))
  return out


def folder_source(root: pathlib.Path, scribble_set) -> list[dict]:
  """Every image of a folder dataset at full size (labels as stored)."""
  out = []
  for name in folder.names(root):
    e = folder.load_example(root, name, scribble_set=scribble_set)
    out.append(_example(name, e.image, e.mask, e.scribbles))
  return out


def _predict(graphdef, state, source, config, batch):
  start = time.perf_counter()
  out = {str(n): (p.argmax(-1), m) for n, p, m in evaluation.predictions(
      graphdef, state, source, config, batch_size=batch)}
  return out, time.perf_counter() - start


def compare(graphdef, state, source, config, *, dataset, pad_to, batch,
            num_classes, class_names, has_classes) -> dict:
  """One row: ``full`` against ``padded`` to ``pad_to`` (``()``: batch max)."""
  full = train.with_overrides(config, {"eval.protocol": "full"})
  padded = train.with_overrides(config, {"eval.protocol": "padded",
                                         "eval.pad_to": tuple(pad_to)})
  a, t_full = _predict(graphdef, state, source, full, batch)
  b, t_padded = _predict(graphdef, state, source, padded, batch)
  changed = total = images_changed = 0
  cms = [np.zeros((num_classes, num_classes), np.int64) for _ in range(2)]
  for name, (pred_full, mask) in a.items():
    pred_padded = b[name][0]
    diff = int((pred_full != pred_padded).sum())
    changed += diff
    total += pred_full.size
    images_changed += diff > 0
    if has_classes:
      valid = mask < num_classes
      for cm, pred in zip(cms, (pred_full, pred_padded)):
        np.add.at(cm, (mask[valid], pred[valid]), 1)
  shapes = sorted({tuple(np.shape(e["mask"])[:2]) for e in source})
  row = {
      "dataset": dataset, "images": len(source),
      "distinct_shapes": len(shapes),
      "min_shape": list(min(shapes, key=lambda s: s[0] * s[1])),
      "max_shape": list(max(shapes, key=lambda s: s[0] * s[1])),
      "padded_to": list(pad_to) if pad_to else f"batch max (batch {batch})",
      "batch": batch, "changed_pixel_share": changed / total,
      "images_with_changes": int(images_changed),
      "seconds_full": round(t_full, 1), "seconds_padded": round(t_padded, 1),
  }
  if has_classes:
    m_full = metrics.summarize(cms[0], class_names)["miou"]
    m_padded = metrics.summarize(cms[1], class_names)["miou"]
    row.update(miou_full=m_full, miou_padded=m_padded,
               miou_padded_minus_full=m_padded - m_full)
  return row


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/camvid_small_eval/stage1")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--out",
                      default=str(REPO / "benchmarks" / "results" /
                                  "eval_protocols.jsonl"))
  parser.add_argument("--only", default="",
                      help="comma-separated datasets to run (default: all)")
  args = parser.parse_args(argv)

  sys.path.insert(0, str(REPO))
  from configs import camvid_small  # pylint: disable=import-outside-toplevel
  config = camvid_small.get_config("stage=1")
  data = sources_lib.open_sources(config)
  model = train.build_model(config, data.num_classes)
  step = checkpointing.restore_model(args.workdir, model)
  graphdef, state = train.create_state(model, train.make_optimizer(config),
                                       config.seed)
  common = dict(num_classes=data.num_classes, class_names=data.classes)
  camvid = [dict(data.eval[i]) for i in range(len(data.eval))]
  runs = [
      ("camvid_test", camvid, (), 16, True),
      ("camvid_test", camvid, (128, 128), args.batch, True),
      ("camvid_test", camvid, (256, 256), args.batch, True),
      ("camvid_test_varied", camvid_varied(), (240, 240), args.batch, True),
      ("camvid_test_varied", camvid_varied(), (), args.batch, True),
      ("grabcut", folder_source(DATA / "grabcut", "set1"), (640, 640),
       args.batch, False),
      ("voc_fixture", folder_source(DATA / "voc_scribblesup", None),
       (512, 512), 2, False),
  ]
  only = set(filter(None, args.only.split(",")))
  header = {"network": f"{args.workdir} (configs/camvid_small.py:stage=1, "
                       f"step {step})",
            "command": "python benchmarks/eval_protocols.py " +
                       " ".join(argv if argv is not None else sys.argv[1:])}
  print(json.dumps(header), flush=True)
  with open(args.out, "a") as f:
    for dataset, source, pad_to, batch, has_classes in runs:
      if only and dataset not in only:
        continue
      row = compare(graphdef, state, source, config, dataset=dataset,
                    pad_to=pad_to, batch=batch, has_classes=has_classes,
                    **common)
      row.update(header)
      print(json.dumps(row), flush=True)
      f.write(json.dumps(row) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
