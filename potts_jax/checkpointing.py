"""Orbax checkpoints (the only module that imports orbax).

* :class:`Checkpointer`: the train-state checkpoints of one run directory,
  ``DIR/<step>/{state,data}``: the plain-pytree train state (``params``,
  ``batch_stats``, ``opt_state``, ``step``, ``rng``; see
  :mod:`potts_jax.train`) and the grain data iterator's position, saved
  together, every ``save_every`` steps and on request (SIGTERM, the last
  step). Saves are synchronous and atomic: Orbax writes
  ``DIR/<step>.orbax-checkpoint-tmp``, then ``commit_success.txt`` into it,
  and renames it to ``DIR/<step>`` (on GCS the marker alone commits); only
  committed steps are listed, so a save cut off at any moment is ignored (and
  removed when the directory is next opened). A state holding NaN or inf is
  never written (:class:`NonFiniteStateError`), a failed write raises
  :class:`CheckpointWriteError`, old checkpoints are deleted only after a
  newer one is committed: the newest finite checkpoint is always kept.
  :meth:`Checkpointer.restore_latest` resumes from the newest readable one;
  one that cannot be read (truncated, corrupt) or holds NaN or inf is moved
  to ``DIR/<step>.unreadable`` with a warning and the previous one is used.
* :func:`restore_model`: the ``params`` and ``batch_stats`` of a run's newest
  checkpoint copied into a model (stage 2 starts from stage 1).
* :func:`save_arrays` / :func:`restore_arrays`: a nested dict of arrays
  (converted ImageNet weights, :mod:`potts_jax.models.pretrained`).

The state is saved as host numpy arrays (one copy of the replicated state,
written by process 0); the data iterator's state by every process (one file
per process). A checkpoint therefore does not depend on the device count or
on ``shard_map`` vs ``pmap``: it restores onto any of them.
"""

from __future__ import annotations

import errno
import os
import pathlib
import re
import shutil
import signal
import threading
from typing import Any

from absl import logging
from flax import nnx
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from potts_jax import faults
from potts_jax import parallel
STATE = "state"
DATA = "data"


class NonFiniteStateError(ValueError):
  """A state holding NaN or inf was to be saved; nothing was written."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (full disk, permissions, ...)."""


def _host_arrays(tree: Any) -> Any:
  """One host copy (numpy) of a replicated tree of (possibly global) arrays."""
  return jax.tree.map(np.asarray, parallel.local_copy(tree))


class _FaultyCommit(ocp.path.atomicity.AtomicRenameTemporaryPath):
  """Orbax's commit by rename with the fault points of the checkpoint
  (:mod:`potts_jax.faults`; used only while ``POTTS_JAX_FAULT`` is set)."""

  async def finalize(self, *args, **kwargs):
    name = self.get_final().name  # An item (state, then data), then the step.
    if name == STATE:
      faults.maybe_fail("checkpoint_write")
    elif name.isdigit():
      faults.maybe_fail("checkpoint_commit")
      faults.maybe_fail("checkpoint_write_error", OSError(
          errno.ENOSPC, "No space left on device (injected)", str(self.get())))
    return await super().finalize(*args, **kwargs)


class Checkpointer:
  """Periodic, preemption-safe checkpoints of a train state and data iterator.

  Use as a context manager (it closes Orbax's manager and restores the
  previous SIGTERM handler on exit)::

    with Checkpointer(workdir / "checkpoints", keep=3, save_every=500) as ckpt:
      state = ckpt.restore_latest(state, data_iterator) or state
      ckpt.install_sigterm_handler()
      for step in ...:
        ...
        if ckpt.preemption_requested():
          ckpt.save(step, state, data_iterator, force=True)
          break
        ckpt.save(step, state, data_iterator)

  Args:
    directory: the checkpoint directory (created).
    keep: how many of the newest checkpoints to keep; older ones are deleted
      once a newer one is committed (never the newest).
    save_every: :meth:`save` writes when ``step % save_every == 0`` (or when
      forced); 0 saves only when forced.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int = 3,
               save_every: int = 500):
    if keep < 1:
      raise ValueError(f"keep_checkpoints must be >= 1, got {keep}")
    if save_every < 0:
      raise ValueError(f"checkpoint_every must be >= 0, got {save_every}")
    self.directory = os.path.abspath(os.fspath(directory))
    self.save_every, self.keep = int(save_every), int(keep)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=None, create=True, enable_async_checkpointing=False,
            temporary_path_class=_FaultyCommit if faults.active() else None),
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA: grain.checkpoint.CheckpointHandler()})
    if jax.process_index() == 0:  # Saves cut off before their commit.
      for stale in pathlib.Path(self.directory).glob("*.orbax-checkpoint-tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    self._sigterm = threading.Event()
    self._previous_handler = None

  # Steps and saving.

  def all_steps(self) -> list[int]:
    """The steps of the completed checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def due(self, step: int) -> bool:
    """Whether ``step`` is a periodic save (a multiple of ``save_every``)."""
    return self.save_every > 0 and step % self.save_every == 0

  def save(self, step: int, state: Any, iterator: Any, *,
           force: bool = False) -> bool:
    """Saves ``state`` and ``iterator``'s position as checkpoint ``step``.

    Every process must call it (Orbax synchronises them). It writes when
    ``force`` or when ``step`` is a multiple of ``save_every``, and never
    twice for one step. Once the checkpoint is committed, all but the
    ``keep`` newest are deleted; a save that raises deletes nothing.

    Args:
      step: the number of optimiser steps taken (the state's ``step``).
      state: the train state (replicated global arrays, or host arrays).
      iterator: the grain ``DatasetIterator`` that produced the batches.
      force: save regardless of ``save_every``.

    Returns:
      Whether a checkpoint was written.

    Raises:
      NonFiniteStateError: NaN or inf in the state, naming the step and the
        arrays (nothing is written).
      CheckpointWriteError: the write failed, naming the directory.
    """
    if not (force or self.due(step)) or step in self._manager.all_steps():
      return False
    host, steps = _host_arrays(state), self.all_steps()
    kept = (f"the newest checkpoint, {steps[-1]}, is unchanged" if steps
            else "there is no earlier checkpoint")
    if bad := faults.nonfinite_leaves(host):
      raise NonFiniteStateError(
          f"refusing to save checkpoint {step} in {self.directory}: NaN or "
          f"inf in {len(bad)} arrays of the state: {'; '.join(bad[:8])}"
          f"{'; ...' * (len(bad) > 8)}. Nothing was written; {kept} (the "
          "training diverged: lower optim.lr or check the inputs)")
    try:
      self._manager.save(
          int(step), force=True,
          args=ocp.args.Composite(**{
              STATE: ocp.args.StandardSave(host),
              DATA: grain.checkpoint.CheckpointSave(iterator)}))
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointWriteError(
          f"could not write checkpoint {step} to {self.directory} "
          f"({type(e).__name__}: {e}); {kept} (free disk space or fix the "
          "permissions, then restart: the run resumes from the newest)") from e
    for old in self.all_steps()[:-self.keep]:
      if old != step:  # Never the one just committed.
        self._manager.delete(old)
    logging.info("saved checkpoint %d in %s", step, self.directory)
    return True

  def restore_latest(self, state: Any, iterator: Any) -> Any | None:
    """The newest readable checkpoint's state; ``iterator`` moved to its position.

    Args:
      state: a train state of the right structure, shapes and dtypes (the
        freshly initialised one); it is not modified.
      iterator: the data iterator, set in place to the saved position.

    Returns:
      The restored state as host numpy arrays, or None when the directory
      holds no committed checkpoint.

    Raises:
      RuntimeError: naming the directory when checkpoints exist but none can
        be read.
    """
    steps, template = self.all_steps(), _host_arrays(state)
    for step in reversed(steps):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**{
            STATE: ocp.args.StandardRestore(template),
            DATA: grain.checkpoint.CheckpointRestore(iterator)}))[STATE]
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e)
        continue
      if bad := faults.nonfinite_leaves(restored):
        self._set_aside(step, NonFiniteStateError("; ".join(bad[:8])))
        continue
      if int(restored["step"]) != step:
        raise RuntimeError(
            f"checkpoint {self.directory}/{step} holds a state at step "
            f"{int(restored['step'])}; the directory is inconsistent")
      return restored
    if steps:
      raise RuntimeError(
          f"none of the checkpoints {steps} in {self.directory} can be read "
          "(see the warnings above); move them away to start afresh")
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    """Moves an unreadable checkpoint to ``<step>.unreadable`` (nothing lost)."""
    source = os.path.join(self.directory, str(step))
    target = f"{source}.unreadable"
    logging.warning(
        "checkpoint %s cannot be read (%s: %s); moving it to %s and falling "
        "back to the previous checkpoint", source, type(error).__name__,
        str(error)[:500], target)
    if jax.process_index() == 0 and os.path.isdir(source):
      suffix = 0
      while os.path.exists(target):
        suffix += 1
        target = f"{source}.unreadable{suffix}"
      os.rename(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
    self._manager.reload()

  # Preemption.

  def install_sigterm_handler(self) -> None:
    """On SIGTERM, :meth:`preemption_requested` turns True (main thread only;
    the loop then saves and stops; :meth:`close` puts the old handler back)."""
    if threading.current_thread() is not threading.main_thread():
      logging.warning("not the main thread: SIGTERM handler not installed")
      return

    def handler(signum, frame):  # pylint: disable=unused-argument
      logging.warning("SIGTERM received: saving a checkpoint at the end of "
                      "this step")
      self._sigterm.set()

    self._previous_handler = signal.signal(signal.SIGTERM, handler)

  def preemption_requested(self) -> bool:
    """Whether any process received SIGTERM (a collective on multi-host runs:
    every process must call it at the same step)."""
    local = self._sigterm.is_set()
    if jax.process_count() == 1:
      return local
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.int32(local))
    return bool(np.max(flags))

  def close(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def find_checkpoint(path: str | os.PathLike) -> pathlib.Path:
  """The newest train-state checkpoint at or under ``path``.

  ``path`` may be a run's workdir (holding ``checkpoints/``), a checkpoint
  directory of :class:`Checkpointer`, or one step's directory. Only committed
  steps count (``<step>``; not the ``<step>.orbax-checkpoint-tmp`` of a save
  cut off, nor a ``<step>.unreadable`` set aside).

  Returns:
    The step directory (holding ``state/``).

  Raises:
    FileNotFoundError: naming ``path`` and what was looked for.
  """
  path = pathlib.Path(os.fspath(path)).absolute()
  if (path / STATE).is_dir():
    return path
  for directory in (path / "checkpoints", path):
    if directory.is_dir():
      steps = [p for p in directory.iterdir()
               if re.fullmatch(r"\d+", p.name) and (p / STATE).is_dir()]
      if steps:
        return max(steps, key=lambda p: int(p.name))
  raise FileNotFoundError(
      f"init_from={os.fspath(path)!r} holds no checkpoint (looked for "
      f"{path}/{STATE}, {path}/checkpoints/<step>/{STATE} and "
      f"{path}/<step>/{STATE}); point it at the workdir of a finished stage-1 "
      "run")


def restore_model(path: str | os.PathLike, model: nnx.Module) -> int:
  """Copies the ``params`` and ``batch_stats`` of a checkpoint into ``model``.

  Args:
    path: see :func:`find_checkpoint`.
    model: a model of the same architecture and number of classes.

  Returns:
    The step of the checkpoint read.

  Raises:
    FileNotFoundError: when ``path`` holds no checkpoint.
    ValueError: naming the first parameter that is missing from the
      checkpoint or has another shape.
  """
  step_dir = find_checkpoint(path)
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.restore(step_dir / STATE)
  for collection, kind in (("params", nnx.Param),
                           ("batch_stats", nnx.BatchStat)):
    flat = _flatten(saved.get(collection, {}))
    state = nnx.state(model, kind)
    for path_, variable in nnx.to_flat_state(state):
      key = tuple(str(k) for k in path_)
      value = flat.get(key + ("value",), flat.get(key))
      if value is None:
        raise ValueError(f"{step_dir}: {collection} has no "
                         f"{'/'.join(key)} (another architecture?)")
      current = variable.get_value()
      if np.shape(value) != current.shape:
        raise ValueError(
            f"{step_dir}: {collection} {'/'.join(key)} has shape "
            f"{np.shape(value)}, the model expects {current.shape} "
            "(another architecture or number of classes?)")
      variable.set_value(jax.numpy.asarray(value, current.dtype))
    nnx.update(model, state)
  return int(step_dir.name) if step_dir.name.isdigit() else -1


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (str(k),)))
    return out
  return {prefix: tree}


def save_arrays(directory: str | os.PathLike, tree: dict[str, Any]) -> str:
  """Writes ``tree`` (nested ``dict[str, array]``) as an Orbax checkpoint.

  Args:
    directory: must not exist yet (Orbax writes it atomically: a crash leaves
      no half-written checkpoint under this name).
    tree: nested dicts with string keys and numpy / jax array leaves.

  Returns:
    The absolute checkpoint path.

  Raises:
    FileExistsError: naming ``directory`` when it exists.
  """
  path = os.path.abspath(os.fspath(directory))
  if os.path.exists(path):
    raise FileExistsError(f"{path} exists; choose a new checkpoint directory")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, tree)
  return path


def restore_arrays(directory: str | os.PathLike) -> dict[str, Any]:
  """Reads a checkpoint written by :func:`save_arrays` (as numpy arrays).

  Raises:
    FileNotFoundError: naming ``directory`` when it holds no checkpoint.
  """
  path = os.path.abspath(os.fspath(directory))
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"no checkpoint at {path} (expected a directory written by "
        "potts_jax.checkpointing.save_arrays, e.g. by "
        "`python -m potts_jax.models.pretrained convert`)")
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)
