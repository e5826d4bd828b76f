"""The training system end to end: demo runlocal, exact resume, preemption.

One uninterrupted two-stage run (in this process, 4 fake devices) is the
reference; runs interrupted by SIGKILL and SIGTERM in a subprocess
(``python -m potts_jax.main``, same devices) and then resumed in the same
workdir must end with the same parameters and metrics.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest

from potts_jax import checkpointing
from potts_jax import train
from tests.conftest import REPO

sys.path.insert(0, str(REPO))
from configs import demo  # noqa: E402  pylint: disable=g-import-not-at-top

# Stage 1: 5 pCE steps, checkpoints every 2; stage 2: 2 soft-SL steps.
OVERRIDES = ("--config.total_steps=5", "--config.checkpoint_every=2")


def _config():
  c = demo.get_config("runlocal")
  c.total_steps = 5
  c.checkpoint_every = 2
  return c


def _start(workdir: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "potts_jax.main",
       "--config=configs/demo.py:runlocal", f"--workdir={workdir}",
       *OVERRIDES],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, PYTHONUNBUFFERED="1"))


class _Signaller(threading.Thread):
  """Reads a process's output as it comes; sends ``sig`` at the first line
  matching ``pattern`` (reading as it comes, so that the signal arrives while
  the run is at that step, not after it has run on into a full pipe)."""

  def __init__(self, process: subprocess.Popen, pattern: str, sig: int):
    super().__init__(daemon=True)
    self.process, self.pattern, self.sig = process, pattern, sig
    self.lines, self.sent = [], False
    self.start()

  def run(self):
    for line in self.process.stdout:
      self.lines.append(line)
      if not self.sent and re.search(self.pattern, line):
        self.process.send_signal(self.sig)
        self.sent = True

  def finish(self, timeout: float) -> str:
    self.process.wait(timeout=timeout)
    self.join(timeout=30)
    text = "".join(self.lines)
    assert self.sent, f"the run ended before {self.pattern!r}:\n{text[-3000:]}"
    return text


def _final_state(stage_dir: pathlib.Path):
  step_dir = checkpointing.find_checkpoint(stage_dir)
  tree = checkpointing.restore_arrays(step_dir / checkpointing.STATE)
  return int(step_dir.name), tree


def _assert_same_run(a: pathlib.Path, b: pathlib.Path) -> None:
  for stage in ("stage1", "stage2"):
    step_a, state_a = _final_state(a / stage)
    step_b, state_b = _final_state(b / stage)
    assert step_a == step_b
    for key in ("params", "batch_stats", "opt_state"):
      leaves_a = jax.tree.leaves(state_a[key])
      leaves_b = jax.tree.leaves(state_b[key])
      assert len(leaves_a) == len(leaves_b) > 0
      diff = max(float(np.max(np.abs(np.asarray(x, np.float64)
                                     - np.asarray(y, np.float64))))
                 for x, y in zip(leaves_a, leaves_b))
      assert diff <= 1e-6, (stage, key, diff)
  ma = json.loads((a / "metrics.json").read_text())
  mb = json.loads((b / "metrics.json").read_text())
  assert ma["step"] == mb["step"]
  for stage in ("stage1", "stage2"):
    np.testing.assert_allclose(mb["stages"][stage]["miou"],
                               ma["stages"][stage]["miou"], atol=1e-6)
    assert mb["stages"][stage]["iou"] == pytest.approx(
        ma["stages"][stage]["iou"], abs=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  assert jax.device_count() == 4
  record = train.train_and_evaluate(_config(), str(workdir))
  return workdir, record


def test_demo_runlocal_trains_both_stages(reference):
  workdir, record = reference
  assert set(record["stages"]) == {"stage1", "stage2"}
  for stage, steps in (("stage1", 5), ("stage2", 2)):
    d = workdir / stage
    assert checkpointing.find_checkpoint(d).name == str(steps)
    assert list(d.glob("events.out.tfevents.*")), f"no TensorBoard in {d}"
    assert (d / "figure.png").stat().st_size > 1000
    m = json.loads((d / "metrics.json").read_text())
    assert m["step"] == steps and 0.0 <= m["miou"] <= 1.0
    assert "full image, single scale" in m["protocol"]
    assert json.loads((d / "config.json").read_text())["method"] == (
        "pce" if stage == "stage1" else "soft_sl")
  # keep_checkpoints=3 of stage 1's saves at 2, 4, 5.
  assert sorted(int(p.name) for p in (workdir / "stage1/checkpoints")
                .iterdir() if p.name.isdigit()) == [2, 4, 5]
  # The run's metrics.json is the last stage's, with every stage's record.
  top = json.loads((workdir / "metrics.json").read_text())
  assert top["miou"] == top["stages"]["stage2"]["miou"]


def test_sigkill_and_sigterm_runs_resume_exactly(reference, tmp_path):
  ref_dir, _ = reference
  killed, stopped = tmp_path / "killed", tmp_path / "stopped"
  p_kill, p_term = _start(killed), _start(stopped)
  try:
    # SIGKILL after step 3 of stage 1 (checkpoint 2 written, 3 perhaps not);
    # SIGTERM after step 3: the run saves the step it is at and stops.
    kill = _Signaller(p_kill, r"step 3/5", signal.SIGKILL)
    term = _Signaller(p_term, r"step 3/5", signal.SIGTERM)
    kill.finish(timeout=300)
    out = term.finish(timeout=300)
  finally:
    for p in (p_kill, p_term):
      if p.poll() is None:
        p.kill()
  assert p_kill.returncode == -signal.SIGKILL
  assert p_term.returncode == 0, out[-3000:]
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["preempted"] is True
  saved = checkpointing.find_checkpoint(stopped / "stage1")
  assert int(saved.name) == summary["step"] >= 3
  assert not (stopped / "stage2").exists()
  assert checkpointing.find_checkpoint(killed / "stage1").name in ("2", "3")
  for workdir in (killed, stopped):
    train.train_and_evaluate(_config(), str(workdir))
    _assert_same_run(ref_dir, workdir)


def test_unreadable_newest_checkpoint_falls_back(tmp_path, caplog):
  import grain  # pylint: disable=g-import-not-at-top
  source = list(range(10))
  iterator = iter(grain.MapDataset.source(source).to_iter_dataset())
  state = {"w": np.arange(6, dtype=np.float32), "step": np.int32(0)}
  with checkpointing.Checkpointer(tmp_path, keep=3, save_every=1) as ckpt:
    for step in (1, 2):
      next(iterator)
      ckpt.save(step, dict(state, w=state["w"] + step, step=np.int32(step)),
                iterator)
  # Truncate every data file of the newest state.
  for f in (tmp_path / "2" / "state").rglob("*"):
    if f.is_file() and "ocdbt" in str(f.relative_to(tmp_path)):
      f.write_bytes(f.read_bytes()[:3])
  fresh = iter(grain.MapDataset.source(source).to_iter_dataset())
  with checkpointing.Checkpointer(tmp_path, keep=3, save_every=1) as ckpt:
    restored = ckpt.restore_latest(state, fresh)
  assert int(restored["step"]) == 1
  np.testing.assert_array_equal(restored["w"], state["w"] + 1)
  assert next(fresh) == 1  # The iterator is at checkpoint 1's position.
  assert (tmp_path / "2.unreadable").is_dir()
  assert "cannot be read" in caplog.text


def test_empty_directory_restores_nothing_and_bad_init_from(tmp_path):
  state = {"w": np.zeros(3, np.float32), "step": np.int32(0)}
  with checkpointing.Checkpointer(tmp_path / "c") as ckpt:
    assert ckpt.restore_latest(state, iter([])) is None
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
    checkpointing.find_checkpoint(tmp_path / "nothing")
  c = _config()
  c.stages = ()
  c.init_from = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="init_from=.*holds no checkpoint"):
    train.train_and_evaluate(c, str(tmp_path / "run"))


def test_restore_model_names_a_mismatched_parameter(reference):
  workdir, _ = reference
  c = _config()
  model = train.build_model(c, num_classes=7)  # The demo has 3 classes.
  with pytest.raises(ValueError, match="classifier.*has shape"):
    checkpointing.restore_model(workdir / "stage1", model)
