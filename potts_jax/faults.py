"""Faults: NaN/inf found in a state, and crashes injected for the crash tests.

:func:`nonfinite_leaves` names the arrays of a state that hold NaN or inf
(the checkpointer refuses to write such a state; a training loop may stop on
it).

The rest injects faults. The code calls :func:`maybe_fail` at a few points
where a crash is most likely to leave something half done. When the
environment variable ``POTTS_JAX_FAULT`` names the point, the ``n``-th call
at that point in this process sends ``SIGKILL`` to the process itself: no
handler runs, nothing is flushed or closed, as when a machine is lost without
notice or the out-of-memory killer strikes. A point given an ``error`` raises
it instead. When the variable is unset (every real run), :func:`maybe_fail`
costs one environment lookup.

``POTTS_JAX_FAULT`` is a comma-separated list of ``point`` or ``point:n``
(``n >= 1``, by default 1: the first time this process reaches the point);
e.g. ``POTTS_JAX_FAULT=checkpoint_commit:2`` kills the process while it
commits its second checkpoint. Counts are per process: a run restarted with
the same value fails at the same point of the restarted process.

The points (:data:`POINTS`):

``checkpoint_write``
  :meth:`potts_jax.checkpointing.Checkpointer.save` in the middle of a save:
  Orbax's temporary directory ``<step>.orbax-checkpoint-tmp`` holds the
  files of both items, each still in its own temporary directory
  (``state.orbax-checkpoint-tmp``, ``data.orbax-checkpoint-tmp``), neither
  committed.
``checkpoint_commit``
  the same save after every item is committed, just before the step's
  commit (Orbax writes ``commit_success.txt`` into the temporary directory
  and renames it to ``<step>``).
``checkpoint_write_error``
  the place of ``checkpoint_commit``, raising ``OSError(ENOSPC)`` (a full
  disk) instead of killing.
``evaluation``
  the start of :func:`potts_jax.evaluation.evaluate` (the periodic and the
  final evaluation).
``stage_boundary``
  :func:`potts_jax.train.train_and_evaluate` after a stage finished (its
  ``metrics.json`` written), before the next stage starts; after the last
  stage, before the run's ``metrics.json``.
``train_step``
  the training loop right after a step was dispatched (its state donated,
  the step in flight), before the step's checkpoint: ``train_step`` is the
  first step this process runs, which after a restart is the first step after
  the restore.

The three checkpoint points are wired only while ``POTTS_JAX_FAULT`` is set:
the checkpointer then replaces Orbax's commit by the same rename with these
points before it (local file systems only).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

import jax
import numpy as np

ENV = "POTTS_JAX_FAULT"
POINTS = ("checkpoint_write", "checkpoint_commit", "checkpoint_write_error",
          "evaluation", "stage_boundary", "train_step")

_counts: dict[str, int] = {}
_lock = threading.Lock()


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def nonfinite_leaves(tree: Any) -> list[str]:
  """The floating-point leaves of ``tree`` (host arrays) holding NaN or inf.

  Returns:
    One entry per such leaf, its path and counts, e.g.
    ``"params/backbone/stem/kernel (3 NaN, 0 inf of 864)"``; ``[]`` when every
    value is finite. Checking costs one ``np.isfinite`` pass over the values.
  """
  bad = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    if not jax.numpy.issubdtype(a.dtype, jax.numpy.inexact):
      continue
    if not np.isfinite(a).all():
      names = [_key_name(k) for k in path]
      if len(names) > 1 and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names = names[:-1]  # nnx.Variable's ".value".
      bad.append(f"{'/'.join(names)} ({int(np.isnan(a).sum())} NaN, "
                 f"{int(np.isinf(a).sum())} inf of {a.size})")
  return bad


def active() -> bool:
  """Whether ``POTTS_JAX_FAULT`` is set (to anything but the empty string)."""
  return bool(os.environ.get(ENV, "").strip())


def parse(value: str) -> dict[str, int]:
  """``{point: n}`` of a ``POTTS_JAX_FAULT`` value (module docstring).

  Raises:
    ValueError: naming the variable, the bad entry and what was expected.
  """
  out = {}
  for entry in value.split(","):
    entry = entry.strip()
    if not entry:
      continue
    point, _, count = entry.partition(":")
    if point not in POINTS:
      raise ValueError(f"{ENV}={value!r}: unknown point {point!r}; expected "
                       f"one of {POINTS}, optionally with ':n'")
    try:
      n = int(count) if count else 1
    except ValueError:
      n = 0
    if n < 1:
      raise ValueError(f"{ENV}={value!r}: {entry!r} must be 'point' or "
                       "'point:n' with n a positive integer")
    out[point] = n
  return out


def reset() -> None:
  """Forgets how often each point was reached (tests running in-process)."""
  with _lock:
    _counts.clear()


def maybe_fail(point: str, error: BaseException | None = None) -> None:
  """Kills this process (or raises ``error``) when ``POTTS_JAX_FAULT`` names
  ``point`` and this is the ``n``-th call at it.

  Args:
    point: one of :data:`POINTS`.
    error: raised instead of the kill, when given.

  Raises:
    ValueError: for a point not in :data:`POINTS` (a typo at a call site) or
      a malformed ``POTTS_JAX_FAULT``.
  """
  if point not in POINTS:
    raise ValueError(f"unknown fault point {point!r}; add it to "
                     f"potts_jax.faults.POINTS ({POINTS})")
  value = os.environ.get(ENV, "")
  if not value.strip():
    return
  wanted = parse(value).get(point)
  if wanted is None:
    return
  with _lock:
    _counts[point] = _counts.get(point, 0) + 1
    hit = _counts[point] == wanted
  if not hit:
    return
  if error is not None:
    raise error
  # The line tells a test where the process died; what the process printed
  # before is flushed first.
  sys.stdout.flush()
  sys.stderr.write(f"{ENV}: killing process {os.getpid()} at {point} "
                   f"(call {wanted})\n")
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)
