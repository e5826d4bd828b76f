"""The GPU suite of benchmarks/device/ runs here as a dry run, so it cannot rot
between the sessions that have a GPU."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

DEVICE = REPO / "benchmarks" / "device"
sys.path.insert(0, str(DEVICE))
import prepare  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
import suite  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
  """``run.sh --dry-run``'s exit status, output and rows."""
  out = tmp_path_factory.mktemp("device_out")
  env = dict(os.environ, OUT=str(out), PYTHON=sys.executable)
  # The suite's own processes: one CPU device, as on a machine without a GPU
  # (conftest's four fake devices are for the tests of sharding).
  env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=4", "").strip()
  # Budgets x3: a dry run does little work, but on a loaded CI machine its
  # compilations alone can use up a GPU-sized budget.
  proc = subprocess.run(["bash", str(DEVICE / "run.sh"), "--dry-run",
                         "--scale", "3"],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=1200, check=False)
  rows = [json.loads(line) for line in
          (out / "device.jsonl").read_text().splitlines()]
  logs = {p: (out / f"part_{p}.log").read_text()[-3000:] for p in "abc"}
  return proc, rows, logs


def _rows(rows, part, name):
  return [r for r in rows if r["part"] == part and r["name"] == name]


@pytest.mark.slow
def test_dry_run_exits_zero_with_every_part(dry_run):
  proc, rows, logs = dry_run
  assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:],
                                logs)
  parts = _rows(rows, "suite", "part")
  assert [p["which"] for p in parts] == ["a", "b", "c"]
  assert all(p["rc"] == 0 for p in parts), parts
  assert _rows(rows, "suite", "imports")[0]["ok"]
  errors = [r for r in rows if "error" in r]
  assert not errors, errors
  assert all(r["dry_run"] for r in rows if r["part"] in "abc")


@pytest.mark.slow
def test_dry_run_part_a_compares_and_checks(dry_run):
  _, rows, _ = dry_run
  checks = [r for r in rows if r["part"] == "a" and r["name"] in (
      "solver", "dense", "train_step", "parallel")]
  assert {r["name"] for r in checks} == {"solver", "dense", "train_step",
                                         "parallel"}
  assert all(r["ok"] for r in checks), checks
  assert _rows(rows, "a", "done")[0]["failed"] == []


@pytest.mark.slow
def test_dry_run_part_b_measures(dry_run):
  _, rows, _ = dry_run
  (bandwidth,) = _rows(rows, "b", "copy_bandwidth")
  assert bandwidth["bytes_per_s"] > 0
  solver = _rows(rows, "b", "solver")
  assert [r["neighborhood"] for r in solver] == ["nn4", "nn8"]
  for r in solver:  # The floor is 4 B H W (3K + D) bytes per step.
    b, h, w, k = r["shape"]
    d = 2 if r["neighborhood"] == "nn4" else 4
    assert r["floor_bytes_per_step"] == 4 * b * h * w * (3 * k + d)
    assert r["floor_ratio"] > 0 and r["seconds"] > 0
  (dense,) = _rows(rows, "b", "dense")
  assert dense["ms"] > 0 and dense["step_ms"] > 0
  steps = {r["method"]: r for r in _rows(rows, "b", "train_step")}
  assert set(steps) == {"pce", "soft_sl"}
  assert steps["pce"]["ratio_to_pce"] == 1.0
  assert steps["soft_sl"]["ratio_to_pce"] == pytest.approx(
      steps["soft_sl"]["ms_per_step"] / steps["pce"]["ms_per_step"], abs=0.01)
  assert all(r["finite_loss"] and r["xla_bytes"] > 0 for r in steps.values())


@pytest.mark.slow
def test_dry_run_part_c_trains_from_stage_one(dry_run):
  _, rows, _ = dry_run
  runs = [r for r in rows if r["part"] == "c" and "miou" in r
          and r["name"] != "summary"]
  assert runs[0]["name"] == "stage1"
  assert len(runs) >= 2, [r for r in rows if r["part"] == "c"]
  for r in runs:
    assert 0.0 <= r["miou"] <= 1.0 and r["steps"] > 0
    if r["name"] != "stage1":
      assert r["init_from"].endswith("stage1")
  (summary,) = _rows(rows, "c", "summary")
  assert set(summary["miou"]) == {r["name"] for r in runs}


def test_suite_names_a_bad_part_or_budget(capsys):
  with pytest.raises(SystemExit):
    suite.main(["--parts", "ax", "--out", "/tmp/unused"])
  assert "unknown ['x']" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    suite.main(["--budget", "z=3", "--out", "/tmp/unused"])
  assert "X=VALUE" in capsys.readouterr().err


def test_wheel_set_is_what_the_device_lacks():
  wheels = prepare.closure()
  assert {"tensorflow-datasets", "grain", "array-record", "ml-collections",
          "tensorboardx", "pymaxflow", "protobuf"} <= set(wheels)
  assert not set(wheels) & prepare.ON_DEVICE
  assert "jax" not in wheels and "numpy" not in wheels
