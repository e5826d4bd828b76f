"""Orbax checkpoints (the only module that imports orbax).

For now: saving and restoring a nested dict of arrays (converted weights,
``potts_jax.pretrained``). The training system (issue 6) adds periodic,
preemption-safe train-state checkpoints here.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


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
        "`python -m potts_jax.pretrained convert`)")
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)
