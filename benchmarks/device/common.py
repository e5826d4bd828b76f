"""What every part of the device suite shares: its arguments, its clock and
its JSON lines.

Each part (``correctness.py``, ``costs.py``, ``training.py``) is a script run
by ``suite.py`` in its own process under its own time limit. It takes
``--out DIR`` (where ``device.jsonl`` and its log go), ``--budget SECONDS``
(the part plans its work to end inside it; the suite kills it a little after)
and ``--dry-run`` (tiny sizes on the CPU, so that the suite is exercised where
no GPU is), and writes one JSON object per measurement through
:class:`Recorder`: printed on stdout and appended to ``DIR/device.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

#: The git-ignored folder that travels to the device (benchmarks/device/prepare.py).
DEVICE_DIR = os.path.join(REPO, ".device")


def parse_args(description: str, argv: list[str] | None = None,
               extra: Any = None) -> argparse.Namespace:
  """``--out``, ``--budget``, ``--dry-run`` and the part's own ``extra(parser)``."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--out", default=os.environ.get("OUT", "device_out"),
                      help="directory for device.jsonl (default $OUT)")
  parser.add_argument("--budget", type=float, default=120.0,
                      help="seconds this part may take")
  parser.add_argument("--dry-run", action="store_true",
                      help="tiny sizes on the CPU (tests the suite itself)")
  parser.add_argument("--no-autotune", action="store_true",
                      help="XLA:GPU picks kernels without timing candidates "
                      "(--xla_gpu_autotune_level=0): compiles far faster, "
                      "for parts that measure results, not speed")
  if extra is not None:
    extra(parser)
  args = parser.parse_args(argv)
  if args.budget <= 0:
    parser.error(f"--budget must be positive, got {args.budget}")
  os.makedirs(args.out, exist_ok=True)
  return args


#: A dry run's XLA:CPU settings: unoptimised code compiles about a third
#: faster and runs the dry run's few tiny steps just as well.
DRY_RUN_FLAGS = ("--xla_backend_optimization_level=0 "
                 "--xla_llvm_disable_expensive_passes=true")


def setup_jax(dry_run: bool, no_autotune: bool = False) -> None:
  """Platform, XLA flags and compilation cache; call before JAX computes.

  A dry run is pinned to the CPU (``jax_platforms``, also where a GPU is
  present) with :data:`DRY_RUN_FLAGS`; a real run takes JAX's default
  backend (the GPU), with ``--xla_gpu_autotune_level=0`` when
  ``no_autotune``. Both take the CPU loop flag of the entry points
  (:mod:`potts_jax.xla_flags`) and a persistent compilation cache
  (``JAX_COMPILATION_CACHE_DIR``, default ``/tmp/potts_jax_device_cache``)
  that the parts, separate processes, share.
  """
  flags = [os.environ.get("XLA_FLAGS", "")]
  if dry_run and "optimization_level" not in flags[0]:
    flags.append(DRY_RUN_FLAGS)
  if no_autotune:
    flags.append("--xla_gpu_autotune_level=0")
  os.environ["XLA_FLAGS"] = " ".join(f for f in flags if f)
  from potts_jax import xla_flags  # pylint: disable=import-outside-toplevel
  xla_flags.prefer_threaded_cpu_loops()
  import jax  # pylint: disable=import-outside-toplevel
  if dry_run:
    jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", "/tmp/potts_jax_device_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def machine() -> dict[str, Any]:
  """The backend, device and versions a row was measured with."""
  import jax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  return dict(backend=jax.default_backend(), device_kind=device.device_kind,
              devices=jax.device_count(), jax=jax.__version__,
              python=platform.python_version(), cpus=os.cpu_count())


class Recorder:
  """Writes a part's measurements as JSON lines (stdout and ``device.jsonl``)."""

  def __init__(self, out: str, part: str, dry_run: bool):
    self.path = os.path.join(out, "device.jsonl")
    self.part = part
    self.dry_run = dry_run

  def emit(self, name: str, **values: Any) -> dict[str, Any]:
    """One measurement ``name`` of this part; returns the row written."""
    row = dict(part=self.part, name=name, dry_run=self.dry_run, **values)
    line = json.dumps(row, default=_jsonable)
    print(line, flush=True)
    with open(self.path, "a") as f:
      f.write(line + "\n")
    return row


def _jsonable(value: Any) -> Any:
  """numpy scalars and arrays as Python numbers and lists."""
  if hasattr(value, "tolist"):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Budget:
  """Seconds left of a part's ``--budget``, counted from construction."""

  def __init__(self, seconds: float):
    self.seconds = seconds
    self.start = time.monotonic()

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def left(self) -> float:
    return self.seconds - self.elapsed()


def peak_memory_bytes() -> int | None:
  """The device's peak bytes in use so far (``memory_stats``), None on CPU."""
  import jax  # pylint: disable=import-outside-toplevel
  stats = jax.devices()[0].memory_stats()
  if not stats:
    return None
  return int(stats.get("peak_bytes_in_use", 0)) or None
