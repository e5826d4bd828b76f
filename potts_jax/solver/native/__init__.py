"""The solver's grid loops (plain descent, Adam) on the CPU as one native XLA FFI call.

XLA:CPU runs the solver's step as a dozen separate loops: the channel sums,
some twenty small per-pixel fusions, and an update pass that recomputes the
per-pixel coefficients for every class (XLA:CPU drops the optimisation
barrier that would materialise them). ``native/grid_solver.cc`` computes the
same iterates in one sweep over the rows of each image per step, so that the
iterate and ``σ`` are read from memory once per step, with images spread over
the CPU's threads. The same sweep runs Adam on the logits (``method="adam"``,
:func:`potts_jax.solver.updates.adam_loop`) with its two moment buffers
updated in place. What that buys, measured, and when ``kernel="auto"`` takes
it: ``native/README.md`` (``benchmarks/solver.py`` and
``benchmarks/solver_options.py --timing`` measure it).

The kernel is compiled on first use with the system's C++ compiler (``$CXX``,
else ``c++``/``g++``) against the XLA FFI headers that ship with jaxlib, for
this machine's CPU (``-march=native``), into
``~/.cache/potts_jax/native`` (``$POTTS_JAX_NATIVE_DIR`` overrides), keyed by
the source, the flags, the compiler, jaxlib and the CPU, and loaded with
``ctypes``. Where no compiler works, or with ``POTTS_JAX_NATIVE=0``,
:func:`available` is False and the solver keeps its XLA loop (one warning says
why). It is used only where JAX's default backend is the CPU (and lowered
only for CPU devices, through :func:`potts_jax.platforms.on_cpu`); on GPU and
TPU machines the solver runs its XLA loop and nothing is compiled.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from potts_jax import losses
from potts_jax import potts
SOURCE = pathlib.Path(__file__).parent / "grid_solver.cc"
TARGET = "potts_jax_grid_solve"
#: Most classes the kernel takes (kMaxVectors * 8 in grid_solver.cc); the
#: solver runs the XLA loop beyond it.
MAX_CLASSES = 512
#: Fewest classes for which ``kernel="auto"`` takes the native loop. The
#: kernel vectorises over the classes of one pixel (8 lanes) and does its
#: per-pixel work in scalar code, so with one vector per pixel (K <= 8) the
#: XLA loop, which vectorises over pixels, is the faster one
#: (``native/README.md``).
MIN_CLASSES = 9
FLAGS = (
    "-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread",
    "-fno-math-errno", "-ffp-contract=fast",
)
#: The kernel's integer codes: position = the value of the enumerator in
#: grid_solver.cc (``enum Relaxation``, ``enum CrossEntropy``, ``enum
#: Method``); tests/test_cpu_solver.py compares the orders.
RELAXATIONS = ("bl", "q", "nq", "cce", "cd", "lq")
CROSS_ENTROPIES = ("ce", "rce", "cce", "q")
#: The updates the kernel runs.
METHODS = ("gd", "adam")
assert set(RELAXATIONS) == set(potts.NAMES)
assert set(CROSS_ENTROPIES) == set(losses.NAMES)


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return name
  return None


def _cpu_signature() -> str:
  """What ``-march=native`` depends on (so a shared cache never SIGILLs)."""
  try:
    with open("/proc/cpuinfo") as f:
      lines = [l for l in f if l.startswith(("model name", "flags"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.processor() + platform.machine()


def _cache_dir() -> pathlib.Path:
  default = pathlib.Path.home() / ".cache" / "potts_jax" / "native"
  return pathlib.Path(os.environ.get("POTTS_JAX_NATIVE_DIR", default))


def build() -> pathlib.Path:
  """Compiles the kernel (once per key) and returns the shared library's path.

  Raises:
    RuntimeError: naming the compiler command and its error output.
  """
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError(
        "no C++ compiler found (tried $CXX, c++, g++, clang++)")
  version = subprocess.run([cxx, "--version"], capture_output=True,
                           text=True).stdout
  include = jax.ffi.include_dir()
  key = hashlib.sha256("\0".join([
      SOURCE.read_text(), " ".join(FLAGS), version,
      importlib.metadata.version("jaxlib"), include, _cpu_signature(),
      platform.machine(),
  ]).encode()).hexdigest()[:16]
  out = _cache_dir() / key / "libpotts_grid_solver.so"
  if out.is_file():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Compile to a temporary name and rename, so that concurrent processes
  # (pytest workers) never load a half-written library.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  cmd = [cxx, *FLAGS, f"-I{include}", str(SOURCE), "-o", tmp]
  result = subprocess.run(cmd, capture_output=True, text=True)
  if result.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(
        f"compiling {SOURCE} failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
  os.replace(tmp, out)
  return out


@functools.cache
def available() -> bool:
  """Whether the native loop is built, loaded and registered with XLA."""
  if os.environ.get("POTTS_JAX_NATIVE", "1") == "0":
    return False
  try:
    library = ctypes.cdll.LoadLibrary(str(build()))
    jax.ffi.register_ffi_target(
        TARGET, jax.ffi.pycapsule(library.PottsGridSolve), platform="cpu")
  except (OSError, RuntimeError, subprocess.SubprocessError) as e:
    warnings.warn(
        f"potts_jax: the native CPU solver loop is unavailable, using the "
        f"XLA loop (slower on CPU): {e}", RuntimeWarning, stacklevel=2)
    return False
  return True


def applies(num_classes: int, kernel: str = "auto") -> bool:
  """Whether ``solver`` should run its grid loop natively.

  True when JAX's default backend is the CPU (on GPU/TPU machines nothing is
  compiled), :func:`available`, and ``num_classes`` is at most
  :data:`MAX_CLASSES` and, for ``kernel="auto"``, at least
  :data:`MIN_CLASSES` (``kernel="native"`` takes any count; ``"xla"``
  never the native loop).
  """
  if kernel == "xla":
    return False
  least = MIN_CLASSES if kernel == "auto" else 1
  return (least <= num_classes <= MAX_CLASSES
          and jax.default_backend() == "cpu" and available())


def _threads() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _varying_axes(x) -> set:
  """The shard_map mesh axes ``x`` varies over (empty outside shard_map)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.10
  if manual is not None:
    return set(manual.varying)
  return set(getattr(aval, "vma", ()))


def descend(v0, sigma, log_sigma, weights, unary_weight, free, step_size, *,
            num_steps: int, relaxation: str, cross_entropy: str,
            method: str = "gd", decay=1.0, b1=0.9, b2=0.999, adam_eps=1e-8):
  """``num_steps`` steps of ``potts_jax.solver``'s grid loop on the CPU.

  Call only when :func:`available` is True, and only in code lowered for the
  CPU (the solver's loop wraps it in :func:`potts_jax.platforms.on_cpu`).

  Args:
    v0: ``[B, H, W, K]`` initial iterate (the reset ``σ``).
    sigma, log_sigma: ``[B, H, W, K]`` the prediction and its guarded log.
    weights: ``[B, H, W, D]`` ``λ·w_ij`` per offset (D = 2 for nn4, 4 for nn8).
    unary_weight: ``[B, H, W]`` η on valid unlabeled pixels, else 0.
    free: ``[B, H, W]`` 1 where ``y`` may move, 0 on scribbles.
    step_size: scalar step on the logits (``method="adam"``: its first step).
    num_steps, relaxation, cross_entropy: as in ``solver.solve``.
    method: ``"gd"`` (plain descent) or ``"adam"`` (the update of
      :func:`potts_jax.solver.updates.adam_loop`).
    decay, b1, b2, adam_eps: scalars of ``"adam"`` (unused by ``"gd"``): the
      step decays geometrically to ``step_size * decay`` at the last step.

  Returns:
    ``[B, H, W, K]`` the unnormalised iterate ``v`` after ``num_steps`` steps
    (``y = v / Σ_k v``).
  """
  if method not in METHODS:
    raise ValueError(f"unknown native method {method!r}; expected one of "
                     f"{METHODS}")
  params = jnp.stack([jnp.asarray(x, jnp.float32).reshape(())
                      for x in (step_size, decay, b1, b2, adam_eps)])
  args = [jnp.asarray(x, jnp.float32) for x in (
      v0, sigma, log_sigma, weights, unary_weight, free)] + [params]
  call = jax.ffi.ffi_call(
      TARGET, jax.ShapeDtypeStruct(v0.shape, jnp.float32),
      vmap_method="sequential")
  v = call(
      *args,
      num_steps=np.int64(num_steps),
      relaxation=np.int64(RELAXATIONS.index(relaxation)),
      cross_entropy=np.int64(CROSS_ENTROPIES.index(cross_entropy)),
      method=np.int64(METHODS.index(method)),
      eps=np.float32(potts.EPS), num_threads=np.int64(_threads()))
  # Inside shard_map the result varies over the mesh axes its inputs vary
  # over, as the XLA loop's does (the FFI call's own type says it does not).
  varying = set().union(*(_varying_axes(x) for x in args))
  if varying:
    v = jax.lax.pcast(v, tuple(sorted(varying)), to="varying")
  return v
