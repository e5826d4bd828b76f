"""The device suite: parts a, b and c, each in its own process and time limit.

``run.sh`` installs the carried wheels and calls this. It writes, under
``--out`` (``$OUT`` on the device machine):

* ``device.jsonl``: one JSON object per measurement (``part``, ``name``,
  values), the ``setup`` rows first (versions, GPU, imports), then the parts'
  rows, then one ``suite`` row per part (exit status, seconds);
* ``part_<x>.log``: each part's own output.

=====  ==================  ===================================  =========
part   script              what                                 budget s
=====  ==================  ===================================  =========
a      ``correctness.py``  the accelerator equals the CPU        90
b      ``costs.py``        paper-scale costs                      230
c      ``training.py``     a short CamVid training at 240x180     160
=====  ==================  ===================================  =========

A part is stopped 20 s after its budget (it plans to end inside it); a
failing or stopped part does not stop the next. Parts a and c compile
without XLA:GPU's autotuning (:data:`DEFAULT_ARGS`). ``--dry-run`` runs every part
on the CPU at tiny sizes (the test of the suite); ``--parts`` picks some.
Exit status: 0 when every part exited 0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = {"a": ("correctness.py", 90), "b": ("costs.py", 230),
         "c": ("training.py", 160)}
#: Arguments a part always gets on the device: parts a and c measure
#: results, not speed, and XLA:GPU's autotuning took 30-45 s per training
#: step's compilation on the H200.
DEFAULT_ARGS = {"a": ["--no-autotune"], "b": [], "c": ["--no-autotune"]}
GRACE_S = 20
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "protobuf",
            "orbax-checkpoint", "chex", "numpy", "scipy", "tensorflow-datasets",
            "array-record", "grain", "ml-collections", "tensorboardX",
            "PyMaxflow")
IMPORTS = ("tensorflow_datasets", "array_record", "grain", "ml_collections",
           "tensorboardX", "maxflow")


def emit(path: str, **row) -> None:
  line = json.dumps(dict(part="suite", **row))
  print(line, flush=True)
  with open(path, "a") as f:
    f.write(line + "\n")


def setup_rows(path: str) -> None:
  """Versions, the GPU as nvidia-smi names it, and the carried imports."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  emit(path, name="setup", python=sys.version.split()[0], versions=versions)
  if shutil.which("nvidia-smi"):
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
         "--format=csv,noheader"], capture_output=True, text=True, check=False)
    emit(path, name="gpu", nvidia_smi=smi.stdout.strip() or smi.stderr.strip())
  failed = {}
  for module in IMPORTS:
    try:
      __import__(module)
    except Exception as e:  # pylint: disable=broad-except
      failed[module] = f"{type(e).__name__}: {e}"
  emit(path, name="imports", ok=not failed, failed=failed)


def run_part(part: str, out: str, dry_run: bool, budget: float,
             extra: list[str]) -> int:
  """Runs one part's script; returns its exit status (124 when stopped)."""
  script, _ = PARTS[part]
  cmd = [sys.executable, os.path.join(HERE, script), "--out", out,
         "--budget", str(budget)] + (["--dry-run"] if dry_run else []) + extra
  log = os.path.join(out, f"part_{part}.log")
  with open(log, "w") as f:
    proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      return proc.wait(timeout=budget + GRACE_S)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      return 124


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=os.environ.get("OUT", "device_out"))
  parser.add_argument("--dry-run", action="store_true")
  parser.add_argument("--parts", default="abc",
                      help="which parts, e.g. 'ab' (default every one)")
  parser.add_argument("--scale", type=float, default=1.0,
                      help="multiplies every part's budget")
  parser.add_argument("--budget", action="append", default=[],
                      metavar="X=SECONDS", help="part X's budget")
  parser.add_argument("--part-args", action="append", default=[],
                      metavar="X=ARGS", help="more arguments of part X, e.g. "
                      "'a=--checks train_step --no-autotune'")
  args = parser.parse_args(argv)
  budgets = {p: b * args.scale for p, (_, b) in PARTS.items()}
  extra = {p: list(a) for p, a in DEFAULT_ARGS.items()}
  for item in args.budget + args.part_args:
    part, sep, value = item.partition("=")
    if not sep or part not in PARTS:
      parser.error(f"expected X=VALUE with X in {''.join(PARTS)}, got "
                   f"{item!r}")
    if item in args.part_args:
      extra[part] += shlex.split(value)
      continue
    try:
      budgets[part] = float(value)
    except ValueError:
      parser.error(f"--budget {item!r}: {value!r} is not a number")
  unknown = set(args.parts) - set(PARTS)
  if unknown:
    parser.error(f"--parts {args.parts!r}: unknown {sorted(unknown)}; "
                 f"expected letters of {''.join(PARTS)}")
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "device.jsonl")
  setup_rows(path)
  status = 0
  for part in sorted(set(args.parts)):
    budget = budgets[part]
    t0 = time.monotonic()
    rc = run_part(part, args.out, args.dry_run, budget, extra[part])
    emit(path, name="part", which=part, rc=rc, budget_s=budget,
         seconds=round(time.monotonic() - t0, 1),
         log=f"part_{part}.log")
    status = status or rc
  return status


if __name__ == "__main__":
  sys.exit(main())
