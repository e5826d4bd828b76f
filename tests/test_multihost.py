"""Two processes on localhost run the same command as one multi-host job.

Each process has 2 fake CPU devices; ``main()`` calls
``jax.distributed.initialize()`` from ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (loopback only, gloo
collectives), and both train the demo's ``runlocal`` config over the 4-device
mesh in one shared workdir.
"""

import json
import os
import socket
import subprocess
import sys

from potts_jax import checkpointing
from tests.conftest import REPO


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_together_and_agree(tmp_path):
  port = _free_port()
  flags = os.environ.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=4", "")
  processes = []
  for i in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
               JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
               XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=2")
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "potts_jax.main",
         "--config=configs/demo.py:runlocal", f"--workdir={tmp_path}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True))
  outputs = []
  try:
    for p in processes:
      out, err = p.communicate(timeout=420)
      outputs.append((p.returncode, out, err))
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()
  for i, (code, out, err) in enumerate(outputs):
    # Both logs: a process stuck at the shutdown barrier waits for the other.
    assert code == 0, f"process {i} failed:\n" + "\n".join(
        f"--- process {j} (exit {c}):\n{e[-3000:]}"
        for j, (c, _, e) in enumerate(outputs))
    assert "process 0 of 2" in err or "process 1 of 2" in err
    assert "4 devices (2 processes)" in err
  summaries = [json.loads(out.strip().splitlines()[-1])
               for _, out, _ in outputs]
  assert summaries[0] == summaries[1]
  assert summaries[0]["step"] == 2 and 0 <= summaries[0]["miou"] <= 1
  record = json.loads((tmp_path / "metrics.json").read_text())
  assert record["miou"] == summaries[0]["miou"]
  # Each process saved its own data-iterator position with the state.
  step_dir = checkpointing.find_checkpoint(tmp_path / "stage2")
  names = sorted(p.name for p in (step_dir / checkpointing.DATA).iterdir()
                 if p.suffix == ".json")
  assert names == ["process_0-of-2.json", "process_1-of-2.json"]
