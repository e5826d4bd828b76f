"""``python -m potts_jax.main``: usage and a dataset that is not prepared."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _main(*args, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "potts_jax.main", *args],
                        cwd=cwd, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_unprepared_voc_stops_at_once_naming_dataset_dir_and_command(tmp_path):
  data_dir, workdir = tmp_path / "tfds", tmp_path / "run"
  data_dir.mkdir()
  result = _main("--config=configs/voc.py", f"--workdir={workdir}",
                 f"--config.input.data_dir={data_dir}")
  assert result.returncode != 0
  err = result.stderr
  assert "voc_scribble" in err
  assert str(data_dir) in err
  assert "python -m potts_jax.data.prepare --dataset=voc_scribble" in err
  # Nothing written to the workdir but the log.
  assert sorted(p.name for p in workdir.iterdir()) == ["log.txt"]
  assert "voc_scribble" in (workdir / "log.txt").read_text()
  assert list(data_dir.iterdir()) == []


def test_help_and_missing_flags():
  result = _main("--help")  # absl exits with 1 after printing the help.
  assert "--workdir" in result.stdout and "--config" in result.stdout
  result = _main("--config=configs/demo.py")
  assert result.returncode != 0
  assert "workdir" in result.stderr


@pytest.mark.slow
def test_a_diverging_run_exits_naming_the_steps_and_a_nonfinite_term(
    tmp_path):
  result = _main("--config=configs/demo.py:runlocal", f"--workdir={tmp_path}",
                 "--config.optim.lr=1e30", "--config.total_steps=10")
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: stage stage1: steps ") and "nan" in last
  assert "Last finite checkpoint" in last
