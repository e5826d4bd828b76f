"""Files written whole or not at all.

A run killed at any moment, or a second writer on the same folder, must
never leave a half-written file where a reader expects a complete one:
:func:`atomic_write` writes beside the target and renames onto it.
"""

from __future__ import annotations

import os
import pathlib
import tempfile
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]
                 ) -> pathlib.Path:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames
  it onto ``path``: readers see the old file or the new one, never a part.

  The data is flushed to disk (``fsync``) before the rename; on any error the
  temporary file is removed and the error propagates, ``path`` untouched.

  Args:
    path: the file to write; its folder is created if missing.
    write: writes the content to the binary file object it is given.

  Returns:
    ``path`` as a ``pathlib.Path``.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path
