"""Examples/s of the training input pipeline (``pipeline.train_dataset``).

Run (2 CPU threads, as RESULTS.md records)::

  python benchmarks/input_pipeline.py                       # workers 0 and 2
  python benchmarks/input_pipeline.py --workers 0,2,4 --batches 100 --crop 180
  python benchmarks/input_pipeline.py --source demo          # procedural demo

Reads ``shared/data/camvid`` (240x180) prepared by
``folder_builder.prepare(..., scribble_set="synthetic")`` into ``--data_dir``
(default ``~/.cache/potts_jax/tfds``; prepared once, skipped when present),
train split (367 images), the paper's augmentation (flip, scale 0.5-2.0,
``--blur_prob`` 0.5 Gaussian blur, crop ``--crop``). ``--source demo`` times
:class:`potts_jax.data.builders.demo_builder.DemoSource` instead (generated on the fly,
nothing prepared). For each ``--workers`` count: ``--warmup`` batches, then
``--batches`` timed; prints one JSON object per measurement on stdout
(examples/s, batches/s, ms per batch), after a header with the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from potts_jax.data.builders import folder_builder  # noqa: E402
from potts_jax.data import pipeline  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "camvid"
CONFIG_NAME = "camvid_synthetic"


def camvid_source(data_dir: pathlib.Path, root: pathlib.Path):
  """The prepared CamVid train split; prepares it first when absent."""
  t0 = time.perf_counter()
  prepared = False
  try:
    sources = folder_builder.load(data_dir, CONFIG_NAME)
  except FileNotFoundError:
    folder_builder.prepare(root, data_dir, name=CONFIG_NAME,
                           scribble_set=folder_builder.SYNTHETIC)
    sources = folder_builder.load(data_dir, CONFIG_NAME)
    prepared = True
  return sources["train"], prepared, time.perf_counter() - t0


def measure(source, *, workers, crop, batch_size, blur_prob, warmup, batches,
            seed, num_threads):
  t0 = time.perf_counter()
  iterator = iter(pipeline.train_dataset(
      source, crop_size=crop, batch_size=batch_size, seed=seed,
      blur_prob=blur_prob, process_index=0, process_count=1,
      worker_count=workers, num_threads=num_threads))
  for _ in range(warmup):
    batch = next(iterator)
  startup = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - t0
  assert batch["image"].shape == (batch_size, crop, crop, 3)
  assert batch["image"].dtype == np.float32
  return dict(
      workers=workers, num_threads=num_threads, crop=crop,
      batch_size=batch_size, blur_prob=blur_prob, warmup_batches=warmup,
      batches=batches, startup_s=round(startup, 2),
      seconds=round(seconds, 3),
      examples_per_s=round(batches * batch_size / seconds, 1),
      batches_per_s=round(batches / seconds, 2),
      ms_per_batch=round(1000 * seconds / batches, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source", choices=("camvid", "demo"), default="camvid")
  parser.add_argument("--data_dir", default=os.path.join(
      os.path.expanduser("~"), ".cache", "potts_jax", "tfds"))
  parser.add_argument("--root", default=str(CAMVID),
                      help="the CamVid folder (shared/data/camvid)")
  parser.add_argument("--workers", default="0,2",
                      help="comma-separated grain worker counts")
  parser.add_argument("--crop", type=int, default=160)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--blur_prob", type=float, default=0.5)
  parser.add_argument("--num_threads", type=int, default=2,
                      help="reading threads per process")
  parser.add_argument("--warmup", type=int, default=5)
  parser.add_argument("--batches", type=int, default=50)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="",
                      help="also append the rows to this JSON-lines file")
  args = parser.parse_args()

  import grain  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  header = dict(
      machine=platform.processor() or platform.machine(),
      cpus=os.cpu_count(), affinity=len(os.sched_getaffinity(0)),
      python=platform.python_version(), numpy=np.__version__,
      grain=getattr(grain, "__version__", "?"), tfds=tfds.__version__,
      source=args.source)
  if args.source == "camvid":
    source, prepared, prepare_s = camvid_source(pathlib.Path(args.data_dir),
                                                pathlib.Path(args.root))
    header.update(data_dir=args.data_dir, config=CONFIG_NAME,
                  prepared_now=prepared, prepare_or_load_s=round(prepare_s, 1))
  else:
    from potts_jax.data.builders import demo_builder  # pylint: disable=g-import-not-at-top
    source = demo_builder.DemoSource("train")
  example = source[0]
  header.update(examples=len(source),
                image_shape=list(np.asarray(example["image"]).shape))
  rows = [header]
  print(json.dumps(header), flush=True)
  for workers in (int(w) for w in args.workers.split(",")):
    row = measure(source, workers=workers, crop=args.crop,
                  batch_size=args.batch_size, blur_prob=args.blur_prob,
                  warmup=args.warmup, batches=args.batches, seed=args.seed,
                  num_threads=args.num_threads)
    row.update(source=args.source, examples=len(source))
    rows.append(row)
    print(json.dumps(row), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      for row in rows:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
