"""Test set-up: fake CPU devices and the persistent compilation cache.

Runs before any test module imports JAX, so the flags below take effect.
"""

import os
import pathlib

# Four fake CPU devices so that sharded code paths run on one CPU.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A size limit turns on the persistent cache's file lock (with `filelock`):
# without it JAX writes and reads entries unlocked, and test processes (and
# the subprocesses they start) share one cache. 16 GB: in effect no eviction.
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 * 2**30))
try:
  import filelock  # noqa: F401  (JAX takes the lock with it)
except ImportError as e:  # JAX would warn once and then use no cache at all
  raise ImportError(
      "the tests need the `filelock` package (pip install -e '.[dev]'): "
      "without it JAX's persistent compilation cache fails every read and "
      "write, and the suite compiles everything from scratch"
  ) from e
# The XLA:CPU loop setting of the command-line entry points (potts_jax/xla_flags.py),
# so that tests and the subprocesses they start compile the same programs.
from potts_jax import xla_flags  # noqa: E402  (imports no JAX)

xla_flags.prefer_threaded_cpu_loops()

REPO = pathlib.Path(__file__).resolve().parents[1]
# The data shared beside the repository (never copied into it).
SHARED_DATA = REPO.parent / "shared" / "data"

import jax  # noqa: E402  (after the flags)

jax.config.update("jax_enable_x64", False)
if not jax.config.jax_compilation_cache_dir:
  jax.config.update(
      "jax_compilation_cache_dir",
      os.path.join(os.path.expanduser("~"), ".cache", "potts_jax", "jax-cache"),
  )
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """``../shared/data`` beside the repository; fails loudly when absent."""
  if not (SHARED_DATA / "grabcut" / "index.tsv").is_file():
    pytest.fail(
        f"real test data not found at {SHARED_DATA} (expected the project's "
        "shared/ folder beside the repository, see shared/data/README.md)"
    )
  return SHARED_DATA
