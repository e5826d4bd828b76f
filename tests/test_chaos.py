"""Kill anywhere: a run killed at the fault points ends as if never killed.

One workdir of ``configs/demo.py:runlocal`` (stage 1: 3 pCE steps, checkpoints
at 2 and 3; stage 2: 2 soft-SL steps, checkpoint at 2) is started again and
again, each time with ``POTTS_JAX_FAULT`` naming the next fault point
(:mod:`potts_jax.faults`): SIGKILL in the middle of a checkpoint write, in the
first step after a restore, at the stage boundary and during evaluation. The
last start, without a fault, must end with the parameters and metrics of an
uninterrupted run (1e-6; :func:`tests.test_train._assert_same_run`). Every
process is ``python -m potts_jax.main`` with the tests' devices and
persistent compilation cache; the reference runs in this process. (Failed
writes: ``tests/test_checkpointing.py``; each start here costs a train-step
compilation.)
"""

import os
import pathlib
import signal
import subprocess
import sys

import jax
import pytest

from potts_jax import faults
from potts_jax import train
from tests.conftest import REPO
from tests.test_train import _assert_same_run

sys.path.insert(0, str(REPO))
from configs import demo  # noqa: E402  pylint: disable=g-import-not-at-top

TMP = ".orbax-checkpoint-tmp"


def _env(fault: str | None) -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.pop(faults.ENV, None)
  if fault:
    env[faults.ENV] = fault
  cache = jax.config.jax_compilation_cache_dir
  if cache:
    env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  return env


def _start(workdir: pathlib.Path, fault: str | None = None
           ) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "potts_jax.main",
       "--config=configs/demo.py:runlocal", f"--workdir={workdir}"],
      cwd=REPO, env=_env(fault), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
  try:
    out, _ = process.communicate(timeout=300)
  finally:
    if process.poll() is None:
      process.kill()
  return process.returncode, out


def _killed_at(workdir: pathlib.Path, fault: str) -> str:
  process = _start(workdir, fault)
  code, out = _finish(process)
  point, _, n = fault.partition(":")
  assert code == -signal.SIGKILL, f"{fault}: exit {code}\n{out[-3000:]}"
  assert (f"{faults.ENV}: killing process {process.pid} at {point} "
          f"(call {n or 1})") in out
  return out


def _entries(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir())


@pytest.mark.slow
def test_killed_at_every_point_ends_like_an_uninterrupted_run(tmp_path):
  chaos = tmp_path / "chaos"
  s1, s2 = chaos / "stage1" / "checkpoints", chaos / "stage2" / "checkpoints"

  # The second save of stage 1 (step 3) cut off in the middle of its write:
  # step 2 committed, step 3 a temporary directory only.
  _killed_at(chaos, "checkpoint_write:2")
  assert _entries(s1) == ["2", f"3{TMP}"]

  # The first step after restoring step 2 (the partial save removed).
  out = _killed_at(chaos, "train_step")
  assert "resumed" in out and "at step 2" in out
  assert _entries(s1) == ["2"]

  # Between the stages: stage 1 finished (step 3 saved, evaluated,
  # metrics.json written), stage 2 not started.
  _killed_at(chaos, "stage_boundary")
  assert _entries(s1) == ["2", "3"]
  assert (chaos / "stage1" / "metrics.json").is_file()
  assert not (chaos / "stage2").exists()

  # Stage 2's final evaluation (its checkpoint 2 written).
  _killed_at(chaos, "evaluation")
  assert _entries(s2) == ["2"]
  assert not (chaos / "stage2" / "metrics.json").exists()

  code, out = _finish(_start(chaos))
  assert code == 0, out[-3000:]
  assert "resumed" in out and (chaos / "metrics.json").is_file()

  reference = tmp_path / "reference"
  train.train_and_evaluate(demo.get_config("runlocal"), str(reference))
  _assert_same_run(reference, chaos)
