"""Two processes on localhost run the same command as one multi-host job.

Each process has 2 fake CPU devices; ``main()`` calls
``jax.distributed.initialize()`` from ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (loopback only, gloo
collectives), and both train the demo's ``runlocal`` config over the 4-device
mesh in one shared workdir. When one process dies (SIGKILL), the other stops
by itself within the heartbeat timeout, naming the dead process
(:func:`potts_jax.multihost.initialize_distributed`); both started again
resume from the checkpoints and finish together.

No wait here is unbounded, so the file cannot hang, however loaded the
machine:

* every process gets ``POTTS_JAX_HEARTBEAT_TIMEOUT`` (a process silent that
  long stops the others; JAX's own heartbeat check at twice that is the
  backstop) and ``POTTS_JAX_SHUTDOWN_TIMEOUT`` (the longest a finished
  process waits at JAX's shutdown barrier, where a process once waited JAX's
  default 300 s for the other: JAX then aborts every process);
* every wait of the test has a deadline (:data:`READY`, :data:`START`,
  :data:`RUN`, the heartbeat timeout + :data:`SLACK`); at a deadline the
  test sends SIGABRT to what still runs (with ``PYTHONFAULTHANDLER`` set,
  each process prints the Python stack of every thread, as it also does when
  JAX aborts it), then SIGKILL, and fails with both processes' logs, as on
  any other failure;
* both processes' stdout and stderr are read as they come (a process that
  writes to a full pipe nobody reads blocks, and the other then waits for it
  in a collective or at the shutdown barrier).

The worst case of the whole file is under 30 minutes; on a 2-core machine
it takes about 4 (the subprocesses use the tests' persistent compilation
cache, as ``make test`` exports it).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import pytest

from potts_jax import checkpointing
from potts_jax import multihost
from tests.conftest import REPO

HEARTBEAT = 20
"""POTTS_JAX_HEARTBEAT_TIMEOUT of the training runs (seconds)."""
SHUTDOWN = 180
"""POTTS_JAX_SHUTDOWN_TIMEOUT of the training runs (seconds)."""
START = 480
"""Deadline for a run to reach its first checkpoint (seconds)."""
RUN = 600
"""Deadline for a whole run (seconds)."""
READY = 120
"""Deadline for both processes of a job without training to start (s)."""
SLACK = 60
"""How much later than the heartbeat timeout a survivor may stop (seconds)."""


def _free_port() -> int:
  """A TCP port free on every interface (the coordinator binds ``[::]``)."""
  for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
    try:
      with socket.socket(family) as s:
        s.bind((address, 0))
        return s.getsockname()[1]
    except OSError:
      continue
  raise OSError("no free TCP port on this machine")


class _Job:
  """``num`` processes of one multi-host job, their output read as it comes.

  Args:
    args: the command after ``python``.
    env: extra environment of every process.
    num: how many processes.
  """

  def __init__(self, args: list[str], env: dict[str, str], num: int = 2):
    port = _free_port()
    flags = os.environ.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=4", "")
    self.lines = [{"stdout": [], "stderr": []} for _ in range(num)]
    self.processes, self._readers = [], []
    for i in range(num):
      process_env = dict(
          os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
          JAX_NUM_PROCESSES=str(num), JAX_PROCESS_ID=str(i),
          JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1",
          XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count=2",
          **env)
      # The persistent compilation cache of the tests (conftest), as `make
      # test` exports it: the second run compiles nothing.
      cache = jax.config.jax_compilation_cache_dir
      if cache:
        process_env.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
        process_env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                               "0.5")
      process = subprocess.Popen(
          [sys.executable, *args], cwd=REPO, env=process_env,
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      self.processes.append(process)
      for name in ("stdout", "stderr"):
        reader = threading.Thread(
            target=self._read, args=(getattr(process, name),
                                     self.lines[i][name]), daemon=True)
        reader.start()
        self._readers.append(reader)

  @staticmethod
  def _read(stream, lines: list[str]) -> None:
    for line in stream:
      lines.append(line)

  def text(self, i: int, name: str = "stderr") -> str:
    return "".join(self.lines[i][name])

  def logs(self) -> str:
    """Every process's exit status, the lines of its stderr that name an
    error (with the first traceback) and the end of its stderr."""
    parts = []
    for i, p in enumerate(self.processes):
      text = self.text(i)
      named = [line for line in text.splitlines()
               if re.search(r"error|exception|fatal|gone", line, re.I)][:30]
      traceback = re.search(r"^Traceback.*?(?=^\S.*Error|\Z).*?$", text,
                            re.M | re.S)
      parts.append(
          f"--- process {i} (exit {p.poll()}), lines naming an error:\n"
          + "\n".join(named)
          + (f"\n--- its first traceback:\n{traceback.group(0)[-4000:]}"
             if traceback else "")
          + f"\n--- the end of its stderr:\n{text[-6000:]}")
    return "\n".join(parts)

  def fail(self, why: str) -> None:
    """Stops what still runs (with its Python stacks) and fails the test."""
    alive = [p for p in self.processes if p.poll() is None]
    for p in alive:
      p.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER: every thread.
    for p in alive:
      try:
        p.wait(timeout=20)
      except subprocess.TimeoutExpired:
        p.kill()
    self.close()
    pytest.fail(f"{why}\n{self.logs()}", pytrace=False)

  def wait_for(self, i: int, pattern: str, timeout: float) -> None:
    """Until a line of process ``i``'s stderr matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, self.text(i)):
      if self.processes[i].poll() is not None:
        self.fail(f"process {i} ended before a line matching {pattern!r}")
      if time.monotonic() > deadline:
        self.fail(f"no line matching {pattern!r} from process {i} in "
                  f"{timeout} s")
      time.sleep(0.2)

  def wait(self, timeout: float, why: str, which=None) -> list[int]:
    """The exit statuses of processes ``which`` (all), within ``timeout``."""
    deadline = time.monotonic() + timeout
    which = range(len(self.processes)) if which is None else which
    codes = []
    for i in which:
      try:
        codes.append(self.processes[i].wait(
            timeout=max(0.1, deadline - time.monotonic())))
      except subprocess.TimeoutExpired:
        self.fail(f"process {i} still running after {timeout:.0f} s: {why}")
    return codes

  def close(self) -> None:
    for p in self.processes:
      if p.poll() is None:
        p.kill()
        p.wait()
    for reader in self._readers:
      reader.join(timeout=10)

  def __enter__(self) -> "_Job":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _train(workdir) -> _Job:
  return _Job(["-m", "potts_jax.main", "--config=configs/demo.py:runlocal",
               f"--workdir={workdir}"],
              {multihost.HEARTBEAT_TIMEOUT_ENV: str(HEARTBEAT),
               multihost.SHUTDOWN_TIMEOUT_ENV: str(SHUTDOWN)})


@pytest.mark.slow
def test_two_processes_train_stop_together_resume_and_agree(tmp_path):
  # 1. Process 1 is killed once it has trained and saved step 2 of stage 1;
  # process 0 (in a collective, at a barrier or on its own) must stop.
  start = time.monotonic()
  with _train(tmp_path) as job:
    job.wait_for(1, r"saved checkpoint 2 in \S*stage1", timeout=START)
    job.processes[1].kill()
    killed = time.monotonic()
    [code] = job.wait(HEARTBEAT + SLACK,
                      "process 1 was killed, process 0 should have stopped",
                      which=[0])
    stopped_after = time.monotonic() - killed
    if code == 0 or "process 1 of 2 is gone" not in job.text(0):
      job.fail(f"process 0 ended with status {code} without naming the "
               "dead process 1")
  print(f"\nrun 1: process 1 killed after {killed - start:.0f} s; process 0 "
        f"stopped {stopped_after:.1f} s later (status {code})")
  assert stopped_after <= HEARTBEAT + SLACK

  # 2. Both again in the same workdir: they resume, finish, and agree.
  start = time.monotonic()
  with _train(tmp_path) as job:
    codes = job.wait(RUN, "the resumed run")
    if codes != [0, 0]:
      job.fail(f"the resumed run ended with statuses {codes}")
    outputs = [(job.text(i, "stdout"), job.text(i)) for i in range(2)]
    logs = job.logs()
  print(f"run 2 (resumed): {time.monotonic() - start:.0f} s")
  for i, (out, err) in enumerate(outputs):
    assert f"process {i} of 2" in err, logs
    assert "4 devices (2 processes)" in err, logs
    assert re.search(r"resumed \S*stage1 at step [23]|stage1 already finished",
                     err), f"process {i} did not resume:\n{logs}"
  summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert summaries[0] == summaries[1]
  assert summaries[0]["step"] == 2 and 0 <= summaries[0]["miou"] <= 1
  record = json.loads((tmp_path / "metrics.json").read_text())
  assert record["miou"] == summaries[0]["miou"]
  # Each process saved its own data-iterator position with the state.
  step_dir = checkpointing.find_checkpoint(tmp_path / "stage2")
  names = sorted(p.name for p in (step_dir / checkpointing.DATA).iterdir()
                 if p.suffix == ".json")
  assert names == ["process_0-of-2.json", "process_1-of-2.json"]


_WORKER = """
import time
import numpy as np
from absl import logging
logging.use_absl_handler()
logging.set_verbosity("info")
import jax
from potts_jax import multihost
multihost.initialize_distributed()
from jax.experimental import multihost_utils
logging.info("ready")
try:
  for i in range(10**6):
    if {collective}:
      multihost_utils.process_allgather(np.int32(i))
    if jax.process_index() == {raises} and i == 20:
      raise ValueError("a bad value on process {raises}")
    time.sleep(0.1)
except Exception as e:
  logging.exception("failed")
  multihost.stop_after_failure(f"error: {{e}}")
"""


@pytest.mark.parametrize("work,killed", [("host", 1), ("collective", 1),
                                         ("collective", 0)])
def test_a_dead_process_stops_the_other(work, killed):
  """Without training: process 1 dies while both do host work (only the
  heartbeat can tell) or run collectives (the survivor's collective fails
  at once; the heartbeat names the dead process, not the cut connection),
  or process 0, which runs the coordination service, dies while both run
  collectives (JAX stops the survivor at once)."""
  heartbeat = 5
  code = _WORKER.format(collective=work == "collective", raises=-1)
  with _Job(["-c", code], {multihost.HEARTBEAT_TIMEOUT_ENV: str(heartbeat),
                           multihost.SHUTDOWN_TIMEOUT_ENV: "120"}) as job:
    deadline = time.monotonic() + READY
    for i in range(2):
      job.wait_for(i, "ready", timeout=deadline - time.monotonic())
    time.sleep(1)
    job.processes[killed].kill()
    start = time.monotonic()
    survivor = 1 - killed
    [status] = job.wait(heartbeat + SLACK, f"process {killed} was killed",
                        which=[survivor])
    stopped_after = time.monotonic() - start
    err = job.text(survivor)
    if killed == 1:
      named = "process 1 of 2 is gone" in err
    else:  # JAX stops the others at once when the coordinator dies.
      named = re.search(r"process 0 of 2, the coordination service|"
                        r"leader task was preempted/died", err)
    if status == 0 or not named:
      job.fail(f"process {survivor} ended with status {status} without "
               f"naming the dead process {killed}")
  assert stopped_after <= heartbeat + SLACK
  if killed == 1:
    assert status == multihost.PEER_GONE_EXIT_CODE


@pytest.mark.parametrize("work", ["host", "collective"])
@pytest.mark.parametrize("raises", [0, 1])
def test_a_failed_process_stops_the_other_naming_its_error(work, raises):
  """A process whose code raises exits with its error, and the other stops
  at its next heartbeat, naming that error: neither waits for a timeout."""
  heartbeat = 30
  code = _WORKER.format(collective=work == "collective", raises=raises)
  with _Job(["-c", code], {multihost.HEARTBEAT_TIMEOUT_ENV: str(heartbeat),
                           multihost.SHUTDOWN_TIMEOUT_ENV: "120"}) as job:
    deadline = time.monotonic() + READY
    for i in range(2):
      job.wait_for(i, "ready", timeout=deadline - time.monotonic())
    job.wait_for(raises, "failed", timeout=READY)
    start = time.monotonic()
    codes = job.wait(heartbeat, f"process {raises} failed")
    stopped_after = time.monotonic() - start
    error = f"a bad value on process {raises}"
    other = 1 - raises
    if (error not in job.text(raises).splitlines()[-1]
        or f"process {raises} of 2 failed: error: {error}"
        not in job.text(other)):
      job.fail(f"statuses {codes}: process {raises}'s error not named "
               "last by it and by the other")
  assert codes[raises] == 1 and codes[other] == multihost.PEER_GONE_EXIT_CODE
  assert stopped_after < heartbeat / 2


_LATE = """
import time
import jax
import numpy as np
from potts_jax import multihost
from potts_jax import parallel
multihost.initialize_distributed()
if jax.process_index() == 1:
  time.sleep({late})  # As if compiling long what process 0 had cached.
mesh = parallel.make_mesh()
x = jax.make_array_from_process_local_data(
    jax.sharding.NamedSharding(mesh, parallel.P(parallel.AXIS)),
    np.full((jax.local_device_count(), 3), jax.process_index() + 1.0,
            np.float32))
mean = jax.jit(lambda a: a.mean(0), out_shardings=jax.sharding.NamedSharding(
    mesh, parallel.P()))(x)
print("mean", mean.addressable_data(0).tolist(), flush=True)
"""


def test_a_process_late_at_its_first_collective_is_waited_for():
  """gloo gives up connecting after 30 s; processes connected at start-up
  (multihost.initialize_distributed) wait for a late one at any collective."""
  late = 35
  with _Job(["-c", _LATE.format(late=late)],
            {multihost.HEARTBEAT_TIMEOUT_ENV: "20"}) as job:
    codes = job.wait(READY + late, "a process 35 s late")
    if codes != [0, 0]:
      job.fail(f"statuses {codes}")
    outputs = [job.text(i, "stdout") for i in range(2)]
  for out in outputs:  # Devices of process 0 hold 1, of process 1 hold 2.
    assert "mean [1.5, 1.5, 1.5]" in out, out


def test_timeouts_from_the_environment(monkeypatch):
  monkeypatch.delenv(multihost.HEARTBEAT_TIMEOUT_ENV, raising=False)
  monkeypatch.delenv(multihost.SHUTDOWN_TIMEOUT_ENV, raising=False)
  assert multihost.distributed_timeouts() == {"heartbeat": 60, "shutdown": 300}
  monkeypatch.setenv(multihost.HEARTBEAT_TIMEOUT_ENV, "15")
  monkeypatch.setenv(multihost.SHUTDOWN_TIMEOUT_ENV, "90")
  assert multihost.distributed_timeouts() == {"heartbeat": 15, "shutdown": 90}
  for bad in ("1.5", "0", "soon"):
    monkeypatch.setenv(multihost.HEARTBEAT_TIMEOUT_ENV, bad)
    with pytest.raises(ValueError, match=multihost.HEARTBEAT_TIMEOUT_ENV):
      multihost.distributed_timeouts()
