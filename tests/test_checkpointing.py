"""potts_jax.checkpointing under faults: NaN/inf, retention, cut-off and failed
writes, damaged files.

The checkpointer is the last line of defence of a run: it never writes a
state holding NaN or inf, never deletes the newest finite checkpoint, never
takes a save that was cut off (SIGKILL in the middle of the write or just
before its commit, in a subprocess) or a damaged directory for a complete
checkpoint, and a write that fails (a file-size limit, an injected full disk)
raises an error naming the directory and leaves the previous checkpoint
readable.
"""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from potts_jax import checkpointing
from potts_jax import faults
from tests.conftest import REPO

# Orbax leaves an asyncio callback behind when a damaged checkpoint fails to
# restore; harmless, reported by pytest as an unraisable exception.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")
TMP = ".orbax-checkpoint-tmp"
SOURCE = list(range(20))


def _iterator():
  return iter(grain.MapDataset.source(SOURCE).to_iter_dataset())


def _state(step: int, size: int = 6) -> dict:
  """A train-state-like tree whose every value depends on ``step``."""
  return {"params": {"backbone": {"stem": {"kernel": np.arange(
              size, dtype=np.float32) + step}}, "head": {"bias": np.full(
              3, step, np.float32)}},
          "batch_stats": {"mean": np.full(2, -step, np.float32)},
          "opt_state": ({"trace": np.full(4, 0.5 * step, np.float32)},),
          "step": np.int32(step), "rng": np.array([7, step], np.uint32)}


def _assert_state(restored, step: int) -> None:
  want = _state(step)
  assert (jax.tree.structure(restored) == jax.tree.structure(want))
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), b)


def _save_steps(directory, steps, keep=3) -> None:
  iterator = _iterator()
  with checkpointing.Checkpointer(directory, keep=keep, save_every=1) as c:
    for step in steps:
      next(iterator)  # The iterator's position is the step.
      assert c.save(step, _state(step), iterator)


def _restore(directory, keep=3):
  iterator = _iterator()
  with checkpointing.Checkpointer(directory, keep=keep, save_every=1) as c:
    restored = c.restore_latest(_state(0), iterator)
    steps = c.all_steps()
  return restored, next(iterator), steps


def _entries(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir())


# NaN and inf.


def test_a_nonfinite_state_is_refused_naming_step_and_arrays(tmp_path):
  _save_steps(tmp_path, [1, 2], keep=1)
  bad = _state(3)
  bad["params"]["backbone"]["stem"]["kernel"][[1, 4]] = np.nan
  bad["opt_state"][0]["trace"][0] = -np.inf
  with checkpointing.Checkpointer(tmp_path, keep=1, save_every=1) as c:
    with pytest.raises(checkpointing.NonFiniteStateError) as error:
      c.save(3, bad, _iterator())
    assert c.all_steps() == [2]
  message = str(error.value)
  assert f"refusing to save checkpoint 3 in {tmp_path}" in message
  assert "params/backbone/stem/kernel (2 NaN, 0 inf of 6)" in message
  assert "opt_state/0/trace (0 NaN, 1 inf of 4)" in message
  assert "batch_stats" not in message and "head" not in message
  assert "the newest checkpoint, 2, is unchanged" in message
  # Nothing was written and, with keep=1, the last finite one is kept.
  assert _entries(tmp_path) == ["2"]
  restored, position, _ = _restore(tmp_path, keep=1)
  _assert_state(restored, 2)
  assert position == 2


def test_a_nonfinite_checkpoint_on_disk_is_set_aside(tmp_path, caplog):
  """One written before the check existed: restore falls back past it."""
  _save_steps(tmp_path, [1])
  bad = _state(2)
  bad["batch_stats"]["mean"][1] = np.nan
  iterator = _iterator()
  with checkpointing.Checkpointer(tmp_path, save_every=1) as c:
    c._manager.save(2, args=checkpointing.ocp.args.Composite(**{  # pylint: disable=protected-access
        checkpointing.STATE: checkpointing.ocp.args.StandardSave(bad),
        checkpointing.DATA: grain.checkpoint.CheckpointSave(iterator)}))
  restored, position, steps = _restore(tmp_path)
  _assert_state(restored, 1)
  assert position == 1 and steps == [1]
  assert (tmp_path / "2.unreadable").is_dir()
  assert "batch_stats/mean (1 NaN" in caplog.text


# Retention.


def test_retention_deletes_only_after_a_newer_commit(tmp_path, monkeypatch):
  _save_steps(tmp_path, [1, 2, 3, 4], keep=2)
  assert _entries(tmp_path) == ["3", "4"]
  iterator = _iterator()
  with checkpointing.Checkpointer(tmp_path, keep=2, save_every=1) as c:
    with pytest.raises(checkpointing.NonFiniteStateError):
      c.save(5, dict(_state(5), batch_stats={"mean": np.full(2, np.inf)}),
             iterator)
    assert c.all_steps() == [3, 4]
  monkeypatch.setenv(faults.ENV, "checkpoint_write_error")
  faults.reset()
  with checkpointing.Checkpointer(tmp_path, keep=2, save_every=1) as c:
    with pytest.raises(checkpointing.CheckpointWriteError) as error:
      c.save(5, _state(5), iterator)
    assert c.all_steps() == [3, 4]
  assert f"could not write checkpoint 5 to {tmp_path}" in str(error.value)
  assert "No space left on device" in str(error.value)
  assert "the newest checkpoint, 4, is unchanged" in str(error.value)
  assert _entries(tmp_path) == ["3", "4", f"5{TMP}"]
  monkeypatch.delenv(faults.ENV)
  restored, _, steps = _restore(tmp_path, keep=2)
  _assert_state(restored, 4)
  assert steps == [3, 4] and _entries(tmp_path) == ["3", "4"]
  _save_steps(tmp_path, [5, 6], keep=2)
  assert _entries(tmp_path) == ["5", "6"]


# Writes cut off or failed (subprocesses).

SAVER = """
import resource, signal, sys
import numpy as np
sys.path.insert(0, {repo!r})
from tests import test_checkpointing as t
from potts_jax import checkpointing
directory, steps, limit = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
iterator = t._iterator()
with checkpointing.Checkpointer(directory, keep=1, save_every=1) as c:
  for step in map(int, steps):
    next(iterator)
    if step == int(steps[-1]) and limit:
      # No file may grow past `limit` bytes: the write fails (EFBIG).
      signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
      resource.setrlimit(resource.RLIMIT_FSIZE,
                         (limit, resource.RLIM_INFINITY))
      c.save(step, t._state(step, size=100_000), iterator)
    else:
      c.save(step, t._state(step), iterator)
print("all saved")
"""


def _saver(directory, steps, fault=None, limit=0):
  env = dict(os.environ)
  env.pop(faults.ENV, None)
  if fault:
    env[faults.ENV] = fault
  return subprocess.run(
      [sys.executable, "-c", SAVER.format(repo=str(REPO)), str(directory),
       ",".join(map(str, steps)), str(limit)],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("point", ["checkpoint_write", "checkpoint_commit"])
def test_a_save_cut_off_is_never_taken_for_a_checkpoint(tmp_path, point):
  done = _saver(tmp_path, [1, 2, 3], fault=f"{point}:3")
  assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
  assert f"at {point} (call 3)" in done.stderr
  # keep=1: checkpoint 1 deleted once 2 was committed; 3 never committed.
  assert _entries(tmp_path) == ["2", f"3{TMP}"]
  partial = _entries(tmp_path / f"3{TMP}")
  assert "commit_success.txt" not in partial
  if point == "checkpoint_write":  # Both items written, neither committed.
    assert partial == ["_CHECKPOINT_METADATA", f"data{TMP}", f"state{TMP}"]
  else:  # Every item committed, the step not.
    assert partial == ["_CHECKPOINT_METADATA", "data", "state"]
  assert checkpointing.find_checkpoint(tmp_path).name == "2"
  restored, position, steps = _restore(tmp_path, keep=1)
  _assert_state(restored, 2)
  assert position == 2 and steps == [2]
  assert _entries(tmp_path) == ["2"]  # Opening removed the partial save.
  _save_steps(tmp_path, [3], keep=1)
  assert _entries(tmp_path) == ["3"]


def test_a_write_that_fails_names_the_directory_and_keeps_the_last(tmp_path):
  done = _saver(tmp_path, [1, 2], limit=64 << 10)
  assert done.returncode == 1, done.stderr[-3000:]
  assert "CheckpointWriteError" in done.stderr
  assert f"could not write checkpoint 2 to {tmp_path}" in done.stderr
  assert "File too large" in done.stderr
  assert "the newest checkpoint, 1, is unchanged" in done.stderr
  restored, position, steps = _restore(tmp_path, keep=1)
  _assert_state(restored, 1)
  assert position == 1 and steps == [1]


# Damaged files in the newest checkpoint.

# (what is done to which files of checkpoint 2, the step restored): damage
# to a file Orbax needs to read the state or the iterator makes it fall back
# to 1; the commit marker and the step's metadata are not needed on a local
# file system (the rename commits), so 2 reads back exactly.
DAMAGE = [
    ("delete", "state/manifest.ocdbt", 1),
    ("delete", "state/d/", 1),
    ("truncate", "state/d/", 1),
    ("flip", "state/d/", 1),
    ("truncate", "state/manifest.ocdbt", 1),
    ("empty", "state/_METADATA", 1),
    ("delete", "data/process_0-of-1.json", 1),
    ("truncate", "data/process_0-of-1.json", 1),
    ("rmtree", "state", 1),
    ("rmtree", "data", 1),
    ("delete", "state/_METADATA", 1),  # (Tuples in the tree need it.)
    ("delete", "commit_success.txt", 2),
    ("delete", "_CHECKPOINT_METADATA", 2),
]


def _damage(step_dir: pathlib.Path, how: str, where: str) -> None:
  if how == "rmtree":
    shutil.rmtree(step_dir / where)
    return
  files = [p for p in sorted(step_dir.rglob("*")) if p.is_file()
           and str(p.relative_to(step_dir)).startswith(where)]
  assert files, f"no {where} in {step_dir}"
  for f in files:
    data = bytearray(f.read_bytes())
    if how == "delete":
      f.unlink()
    elif how == "truncate":
      f.write_bytes(data[:len(data) // 2])
    elif how == "empty":
      f.write_bytes(b"")
    elif how == "flip":
      data[len(data) // 2] ^= 0xFF
      f.write_bytes(bytes(data))


@pytest.mark.parametrize("how,where,expected", DAMAGE,
                         ids=[f"{h}-{w}" for h, w, _ in DAMAGE])
def test_a_damaged_newest_checkpoint_is_never_taken_for_complete(
    tmp_path, caplog, how, where, expected):
  _save_steps(tmp_path, [1, 2])
  _damage(tmp_path / "2", how, where)
  restored, position, steps = _restore(tmp_path)
  _assert_state(restored, expected)
  assert position == expected
  if expected == 1:
    assert steps == [1] and (tmp_path / "2.unreadable").is_dir()
    assert "cannot be read" in caplog.text
  else:
    assert steps == [1, 2]


def test_find_checkpoint_skips_partial_and_set_aside_steps(tmp_path):
  _save_steps(tmp_path / "checkpoints", [1, 2])
  for name in (f"9{TMP}", "8.unreadable"):
    shutil.copytree(tmp_path / "checkpoints" / "2",
                    tmp_path / "checkpoints" / name)
  assert checkpointing.find_checkpoint(tmp_path).name == "2"
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "x"))):
    checkpointing.find_checkpoint(tmp_path / "x")
