"""Preparing, reading and feeding the pipeline never import TensorFlow.

A fresh interpreter (``sys.executable``) runs the whole path with a
meta-path finder that refuses to import ``tensorflow`` (so that a lazy import
would fail, and is recorded even where the ImportError is caught), then checks
that neither an attempt nor a ``tensorflow`` module was seen.
``tensorflow_datasets`` itself is allowed, and so are availability probes
(``importlib.util.find_spec("tensorflow")``, which etils runs): they import
nothing and are answered "not found".
"""

import json
import shutil
import subprocess
import sys
import textwrap

from potts_jax.data import folder
from tests import test_block_builders

_SCRIPT = textwrap.dedent(r"""
    import importlib.abc, importlib.util, json, os, sys

    attempts, probes = [], []

    def _importing():
      # True inside an import statement / importlib.import_module (they go
      # through importlib's _find_and_load); False for a bare availability
      # probe, importlib.util.find_spec (etils asks it whether TF exists).
      frame = sys._getframe(2)
      while frame is not None:
        if frame.f_code.co_name == "_find_and_load_unlocked":
          return True
        frame = frame.f_back
      return False

    class NoTensorFlow(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
          if not _importing():
            probes.append(name)
            return None  # Not installed anyway; the probe finds nothing.
          attempts.append(name)
          raise ImportError(f"{name} is blocked by test_no_tensorflow")
        return None

    sys.meta_path.insert(0, NoTensorFlow())
    root, data_dir, mode, city_root = sys.argv[1:5]

    if mode == "probe":  # The finder works: a TF import is caught.
      importlib.util.find_spec("tensorflow")  # A probe: allowed.
      try:
        import tensorflow  # noqa: F401
      except ImportError:
        pass
    else:
      from potts_jax.data.builders import block_builders, demo_builder
      from potts_jax.data.builders import folder_builder
      from potts_jax.data import eval_pipeline, pipeline
      folder_builder.prepare(root, data_dir, name="tiny",
                             scribble_set="synthetic")
      block_builders.prepare(city_root, data_dir, dataset="cityscapes_block",
                             config="block50")
      demo_builder.prepare(data_dir, train_size=4, val_size=2, height=48,
                           width=48)
      sources = {"folder": folder_builder.load(data_dir, "tiny")["train"],
                 "demo": demo_builder.load(
                     data_dir, demo_builder.config_name(
                         train_size=4, val_size=2, height=48, width=48)
                 )["train"],
                 "cityscapes": block_builders.load(
                     data_dir, "block50", dataset="cityscapes_block")["train"]}
      for key, source in sources.items():
        iterator = iter(pipeline.train_dataset(
            source, crop_size=32, batch_size=2, seed=0, process_index=0,
            process_count=1))
        for _ in range(2):
          assert next(iterator)["image"].shape == (2, 32, 32, 3)
        batches = list(eval_pipeline.eval_batches(
            source, batch_size=2, process_index=0, process_count=1))
        assert len(batches) == -(-len(source) // 2), (key, len(batches))
    loaded = sorted(m for m in sys.modules
                    if m == "tensorflow" or m.startswith("tensorflow."))
    print(json.dumps({"attempts": attempts, "probes": probes, "loaded": loaded,
                      "tfds": "tensorflow_datasets" in sys.modules}))
""")


def _run(tmp_path, root, mode, city_root=""):
  result = subprocess.run(
      [sys.executable, "-c", _SCRIPT, str(root), str(tmp_path / "tfds"), mode,
       str(city_root)],
      capture_output=True, text=True, timeout=600,
      env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _tiny_grabcut(shared_data, tmp_path):
  """A 3-image copy of GrabCut (images and masks only)."""
  src, root = shared_data / "grabcut", tmp_path / "grabcut"
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  for name in folder.names(src)[:3]:
    image = folder.image_path(src, name)
    shutil.copy(image, root / "images" / image.name)
    shutil.copy(src / "masks" / f"{name}.png", root / "masks" / f"{name}.png")
  return root


def test_prepare_read_and_pipeline_import_no_tensorflow(shared_data,
                                                        tmp_path):
  root = _tiny_grabcut(shared_data, tmp_path)
  city_root = tmp_path / "cityscapes"
  test_block_builders.build_tree(shared_data, city_root,
                                 test_block_builders.CITYSCAPES)
  report = _run(tmp_path, root, "run", city_root)
  assert report["tfds"]  # tensorflow_datasets itself was used...
  assert report["attempts"] == []  # ...without even trying TensorFlow,
  assert report["loaded"] == []  # and no TensorFlow module is loaded.


def test_the_check_can_fail(tmp_path):
  report = _run(tmp_path, tmp_path, "probe")
  assert report["attempts"] == ["tensorflow"]
  assert report["probes"] == ["tensorflow"]
