"""XLA settings for fast solver loops on CPU, applied by the entry points.

Since jax 0.12, XLA:CPU compiles a ``while`` loop whose own cost analysis
looks small (ours does: the loop instruction itself moves few bytes) into a
single sequential kernel ("small while-loop hoisting"). For the solver's loop
that kernel is single-threaded and skips XLA's library fusions: 3-4x slower
per step on 2 cores than the ordinary thunk runtime (benchmarks/RESULTS.md).
The pass reads ``xla_cpu_small_while_loop_byte_threshold`` from the backend
options; 0 disables it. It can only be set through ``XLA_FLAGS`` before JAX
creates its CPU client, so the library never sets it on import: the
command-line entry points call :func:`prefer_threaded_cpu_loops` first, and
notebook users may do the same before their first JAX computation (or export
the flag). Other backends ignore the option; older jax versions, which do not
hoist, ignore it too.
"""

from __future__ import annotations

import os

CPU_LOOP_FLAG = (
    "--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold=0"
)


def prefer_threaded_cpu_loops() -> bool:
  """Adds :data:`CPU_LOOP_FLAG` to ``XLA_FLAGS`` unless backend options are set.

  Must run before JAX's first computation in the process (importing jax is
  fine). Leaves ``XLA_FLAGS`` alone when it already carries
  ``--xla_backend_extra_options`` (the user's choice wins).

  Returns:
    Whether the flag was added.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_backend_extra_options" in flags:
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {CPU_LOOP_FLAG}".strip()
  return True
