"""Code paths per platform: one mechanism, ``jax.lax.platform_dependent``.

Some computations have a faster form on the CPU than the one XLA:CPU makes
of the portable code: the solver's grid loop runs as one native XLA FFI call
(:mod:`potts_jax.solver.loop`, :mod:`potts_jax.solver.native`), and a
depthwise convolution as a sum of shifted products, since XLA:CPU's grouped
convolution and above all its gradient are slow
(:class:`potts_jax.models.layers.DepthwiseConv`), and the lattice's splat
as chunked scatters (:mod:`potts_jax.dense.lattice`). They pick their CPU form
through :func:`on_cpu`, i.e. ``lax.platform_dependent`` with a ``cpu`` and a
``default`` branch, not through a Python ``if jax.default_backend() ==
"cpu"`` at trace time:

* The choice follows the platform the computation is lowered for, not the
  process's default backend: a function jitted for CPU devices on a GPU
  machine, or exported for another platform (``jax.export``), gets the code
  of the platform it will run on. A trace-time ``if`` would put the CPU
  form (an FFI call registered for the CPU only) into a GPU program, or the
  slow form into a CPU one.
* It costs nothing at run time. Both branches are traced into the jaxpr,
  but when lowering for one platform only that platform's branch is
  lowered (the branch index is a constant, the conditional has one branch,
  which XLA inlines), so the compiled program is the one a trace-time
  ``if`` would give; outside ``jit`` the branch is simply called. Under
  ``grad`` the residuals that only the other branch's backward pass would
  read are zeros that XLA removes as dead code (tests/test_platforms.py).

What remains a trace-time decision is whether a CPU form is worth tracing at
all: :func:`potts_jax.solver.native.applies` compiles the C++ kernel only
where JAX's default backend is the CPU, so that nothing is built on GPU or
TPU machines. That gates a cost; it never chooses the code that runs.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import jax

T = TypeVar("T")


def on_cpu(cpu: Callable[..., T], default: Callable[..., T], *args: Any) -> T:
  """``cpu(*args)`` where the computation runs on the CPU, else ``default``.

  Args:
    cpu: the CPU form; traced always, lowered only for the CPU.
    default: the form of every other platform (GPU, TPU); traced always,
      lowered only for them.
    *args: arrays or pytrees of arrays passed to the branch; both branches
      must return the same shapes and dtypes.

  Returns:
    The chosen branch's result.
  """
  return jax.lax.platform_dependent(*args, cpu=cpu, default=default)
