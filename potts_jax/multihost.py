"""Multi-host jobs: start-up, and a failure that stops every process.

``main()`` calls :func:`initialize_distributed` (``jax.distributed``, a
heartbeat thread per process, collectives connected with every process in
step) and, on an exception, :func:`stop_after_failure`. Together they bound
how long any process waits for a dead or failed one.
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import threading
import time
from typing import Any

from absl import logging
import jax
import numpy as np

from potts_jax import parallel

HEARTBEAT_TIMEOUT_ENV = "POTTS_JAX_HEARTBEAT_TIMEOUT"
"""Seconds without a heartbeat after which a process counts as gone."""
SHUTDOWN_TIMEOUT_ENV = "POTTS_JAX_SHUTDOWN_TIMEOUT"
"""Seconds a finished process waits at exit for the others."""
DEFAULT_HEARTBEAT_TIMEOUT = 60
DEFAULT_SHUTDOWN_TIMEOUT = 300
PEER_GONE_EXIT_CODE = 1
"""The exit status of a process stopped because another one is gone."""
_HEARTBEAT_KEY = "potts_jax/heartbeat/"
_FAILED = "failed: "
_STOPPED = "stopped"
_EXITED = "exited"
"""Heartbeat values other than a count: ``failed: <error>`` (posted by
:func:`stop_after_failure`), ``stopped`` (a process stopping because
another failed: the acknowledgement the failed one waits for) and
``exited`` (a failed process, as it exits)."""
_heartbeat: _Heartbeat | None = None
"""This process's heartbeat thread, once :func:`initialize_distributed`
started it."""


def _seconds(env: str, default: int) -> int:
  """A whole number of seconds >= 1 from ``env``, else ``default``."""
  value = os.environ.get(env, "").strip()
  if not value:
    return default
  try:
    seconds = int(value)
  except ValueError:
    raise ValueError(f"{env}={value!r} is not a whole number of seconds"
                     ) from None
  if seconds < 1:
    raise ValueError(f"{env}={value!r}: expected at least 1 second")
  return seconds


def distributed_timeouts() -> dict[str, int]:
  """``{"heartbeat": s, "shutdown": s}`` from :data:`HEARTBEAT_TIMEOUT_ENV`
  and :data:`SHUTDOWN_TIMEOUT_ENV` (defaults 60 and 300 seconds).

  Raises:
    ValueError: naming the variable, when one is not a whole number >= 1.
  """
  return {"heartbeat": _seconds(HEARTBEAT_TIMEOUT_ENV,
                                DEFAULT_HEARTBEAT_TIMEOUT),
          "shutdown": _seconds(SHUTDOWN_TIMEOUT_ENV, DEFAULT_SHUTDOWN_TIMEOUT)}


def initialize_distributed() -> None:
  """``jax.distributed.initialize()`` on multi-host launches, else nothing.

  Called by ``main()`` only, never at import. It initialises when the
  environment names a coordinator (``JAX_COORDINATOR_ADDRESS``, with
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` for a launch by hand), or a
  cluster JAX auto-detects (Slurm with several tasks, Cloud TPU pods, Open
  MPI); a single process without one runs as is. On CPU, processes exchange
  collectives through gloo (JAX's default), connected here with every
  process in step, so that one compiling much longer than another later
  cannot break the connection (:func:`_connect_collectives`).

  A dead process stops the others within a bounded time, instead of leaving
  them waiting in a collective or at a barrier forever:

  * ``POTTS_JAX_HEARTBEAT_TIMEOUT`` (seconds, default 60): every process
    runs a heartbeat thread (:class:`_Heartbeat`) that posts to the
    coordination service's key-value store every few seconds and reads the
    others'. When a process has posted nothing for that long (killed, lost
    its host, or hung so hard that no Python thread runs), each other
    process logs ``process K of N is gone: ...`` and exits with status
    :data:`PEER_GONE_EXIT_CODE`. A process that fails with an exception
    says so through :func:`stop_after_failure`, and the others stop at
    their next heartbeat (``process K of N failed: <its error>``). JAX's
    own heartbeat check, set to twice that time, is the backstop (it aborts
    the process, naming the task "unhealthy"). When process 0, which runs
    the coordination service, dies, JAX stops the others at once ("the
    leader task ... died").
  * ``POTTS_JAX_SHUTDOWN_TIMEOUT`` (seconds, default 300): how long a
    process that has finished waits at JAX's shutdown barrier for the
    others (e.g. for process 0 writing the final figure); past it, JAX
    aborts every process ("Shutdown barrier has failed").

  Restarting every process with the same command resumes the run from its
  newest checkpoint.

  Raises:
    ValueError: a malformed ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` or
      timeout variable, naming it.
  """
  auto = (int(os.environ.get("SLURM_NTASKS", "1")) > 1
          or "TPU_WORKER_HOSTNAMES" in os.environ
          or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)
  if "JAX_COORDINATOR_ADDRESS" not in os.environ and not auto:
    return
  kwargs = {}
  for key, env in (("num_processes", "JAX_NUM_PROCESSES"),
                   ("process_id", "JAX_PROCESS_ID")):
    if env in os.environ:
      try:
        kwargs[key] = int(os.environ[env])
      except ValueError:
        raise ValueError(f"{env}={os.environ[env]!r} is not an integer"
                         ) from None
  timeouts = distributed_timeouts()
  backstop = {"heartbeat_timeout_seconds": 2 * timeouts["heartbeat"],
              "shutdown_timeout_seconds": timeouts["shutdown"]}
  accepted = inspect.signature(jax.distributed.initialize).parameters
  for name, value in backstop.items():
    if name in accepted:
      kwargs[name] = value
    else:
      logging.warning("jax %s: jax.distributed.initialize() takes no %s; "
                      "JAX's default applies", jax.__version__, name)
  jax.distributed.initialize(**kwargs)
  state = getattr(getattr(jax, "_src", None), "distributed", None)
  state = getattr(state, "global_state", None)
  logging.info("jax.distributed: process %d of %d, %d local / %d devices "
               "(coordination service: process 0 at %s)",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(),
               getattr(state, "coordinator_address", "?"))
  if getattr(state, "client", None) is None:
    logging.warning("jax %s: no distributed client found; only JAX's own "
                    "heartbeat check (%d s) stops this process when another "
                    "one dies", jax.__version__, 2 * timeouts["heartbeat"])
    return
  global _heartbeat
  heartbeat = _Heartbeat(state.client, state.process_id, state.num_processes,
                         timeouts["heartbeat"], state.coordinator_address)
  heartbeat.start()
  _heartbeat = heartbeat
  # Runs before JAX's own exit handler (registered at its import), which
  # waits at the shutdown barrier and then stops the service.
  atexit.register(heartbeat.exiting.set)
  _connect_collectives(state.client, timeouts["shutdown"])
  logging.info("jax.distributed: a process silent for %d s stops the others "
               "(%s; shutdown barrier %d s, %s)", timeouts["heartbeat"],
               HEARTBEAT_TIMEOUT_ENV, timeouts["shutdown"],
               SHUTDOWN_TIMEOUT_ENV)


def _connect_collectives(client: Any, timeout: int) -> None:
  """Runs one all-reduce over every device with all processes in step.

  On CPU, gloo connects the processes at their first collective and gives
  up when one of them is more than 30 s late (``Gloo context initialization
  failed: ... GetKeyValue() timed out``): at the first training step one
  process may still be compiling what another loaded from its cache. Once
  connected, later collectives wait for a late process as long as XLA's
  collective timeout allows. So every process meets the others at a
  coordination-service barrier first (at most ``timeout`` seconds; a dead
  process is caught by the heartbeat), then connects with a tiny sum.
  """
  client.wait_at_barrier("potts_jax/connect_collectives", timeout * 1000)
  mesh = parallel.make_mesh()
  ones = jax.make_array_from_process_local_data(
      jax.sharding.NamedSharding(mesh, parallel.P(parallel.AXIS)),
      np.ones(jax.local_device_count(), np.int32))
  total = jax.jit(jax.numpy.sum, out_shardings=jax.sharding.NamedSharding(
      mesh, parallel.P()))(ones)
  if int(total.addressable_data(0)) != jax.device_count():
    raise RuntimeError(f"an all-reduce over {jax.device_count()} devices "
                       f"gave {total.addressable_data(0)}")


class _Heartbeat(threading.Thread):
  """Posts this process's heartbeat and stops it when another one is gone.

  Every ``timeout / 10`` seconds (0.5 to 5) it sets the key
  ``potts_jax/heartbeat/<process>`` of the coordination service to a new
  count and reads every process's. A process whose value has not changed
  for ``timeout`` seconds is gone, and one whose value says it failed
  (:meth:`fail`) has failed: this one logs which and exits at once
  (``os._exit``, whatever the main thread is blocked in). It does the same
  when process 0's coordination service has not answered for ``timeout``
  seconds. Once this process is exiting (``exiting`` set), the service may
  stop as the job ends: errors reaching it then end the thread quietly.

  Process 0 runs the service, and JAX aborts every other process when it
  exits: so process 0, stopping because another process failed, waits
  (at most ``timeout``) for that one to have exited.

  Args:
    client: JAX's distributed runtime client.
    process: this process's id; num_processes: how many there are.
    timeout: seconds of silence after which a process counts as gone.
    coordinator: the service's address, for the messages.
  """

  def __init__(self, client: Any, process: int, num_processes: int,
               timeout: int, coordinator: str | None):
    super().__init__(name="potts_jax-heartbeat", daemon=True)
    self.client, self.process, self.num_processes = (client, process,
                                                     num_processes)
    self.timeout, self.coordinator = timeout, coordinator
    self.interval = min(5.0, max(0.5, timeout / 10))
    self.exiting = threading.Event()
    # Per other process: its last value read, and since when (monotonic).
    self.seen = {p: (None, time.monotonic()) for p in range(num_processes)
                 if p != process}
    self.failure: str | None = None
    self._lock = threading.Lock()

  def post(self, value: str) -> None:
    """Sets this process's heartbeat value (a failure is never replaced by
    a count); may raise the client's error."""
    with self._lock:
      if self.failure is not None and value.isdigit():
        value = _FAILED + self.failure
      self.client.key_value_set(f"{_HEARTBEAT_KEY}{self.process}", value,
                                allow_overwrite=True)

  def read(self) -> dict[int, str]:
    """Every other process's heartbeat value."""
    entries = self.client.key_value_dir_get(_HEARTBEAT_KEY)
    values = {key.rsplit("/", 1)[-1]: value for key, value in entries}
    return {p: values.get(str(p)) for p in self.seen}

  def fail(self, message: str) -> None:
    """Posts that this process failed with ``message``: the others stop at
    their next read, and post ``stopped``."""
    self.failure = message[:1000]
    try:
      self.post("0")
    except Exception:  # pylint: disable=broad-except
      pass  # The service is gone: the others see this process silent.

  def run(self) -> None:
    count, failing_since = 0, None
    while True:
      count += 1
      try:
        self.post(str(count))
        values = self.read()
      except Exception as e:  # pylint: disable=broad-except
        if self.exiting.is_set() or not jax.distributed.is_initialized():
          return
        now = time.monotonic()
        failing_since = failing_since or now
        if now - failing_since >= self.timeout:
          self._stop(
              f"process 0 of {self.num_processes}, the coordination service "
              f"at {self.coordinator}, is gone or unreachable: no answer "
              f"for {now - failing_since:.0f} s ({str(e)[:300]})")
        time.sleep(self.interval)
        continue
      failing_since = None
      now = time.monotonic()
      for peer, value in values.items():
        seen, since = self.seen[peer]
        if (value or "").startswith(_FAILED) and self.failure is None:
          self._stop(f"process {peer} of {self.num_processes} failed: "
                     f"{value[len(_FAILED):]}", failed=peer)
        if value != seen:
          self.seen[peer] = (value, now)
        elif now - since >= self.timeout:
          self._stop(f"process {peer} of {self.num_processes} is gone: "
                     f"no heartbeat from it for {now - since:.0f} s")
      time.sleep(self.interval)

  def _stop(self, reason: str, failed: int | None = None) -> None:
    logging.error(
        "%s (heartbeat limit %d s, %s); stopping process %d of %d too. "
        "Restart every process with the same command to resume from the "
        "newest checkpoint.", reason, self.timeout, HEARTBEAT_TIMEOUT_ENV,
        self.process, self.num_processes)
    logging.flush()
    sys.stderr.flush()
    if failed is not None:
      try:
        self.post(_STOPPED)
        deadline = time.monotonic() + self.timeout
        while (self.process == 0 and time.monotonic() < deadline
               and self.read()[failed] != _EXITED):
          time.sleep(0.1)
      except Exception:  # pylint: disable=broad-except
        pass
    os._exit(PEER_GONE_EXIT_CODE)  # pylint: disable=protected-access


def stop_after_failure(message: str) -> None:
  """Ends this process of a multi-process job after an exception.

  It exits (``os._exit``) instead of meeting the others at JAX's shutdown
  barrier, where it would wait for them and they for it. It first posts
  ``message`` as its heartbeat value and waits until every other process
  has read it (they stop, naming it: ``process K of N failed: ...``). A
  process that never reads it is gone, and this one's heartbeat then names
  it (``process K of N is gone``) within its timeout: a failure caused by
  another process's death, such as a collective cut off (``Gloo all-reduce
  failed: ... Connection closed by peer``), is reported as that death.
  Otherwise ``message`` goes to stderr last, and the exit status is 1.

  Returns at once, doing nothing, in a single-process run.

  Args:
    message: the failure, one line (e.g. ``"error: ..."``).
  """
  if jax.process_count() == 1:
    return
  heartbeat = _heartbeat
  if heartbeat is not None and heartbeat.is_alive():
    heartbeat.fail(message)
    deadline = time.monotonic() + heartbeat.timeout + 2 * heartbeat.interval
    acknowledged = (_STOPPED, _EXITED, _FAILED)
    while time.monotonic() < deadline and not all(
        (value or "").startswith(acknowledged)
        for value, _ in heartbeat.seen.values()):
      time.sleep(0.1)
  print(message, file=sys.stderr, flush=True)
  logging.flush()
  if heartbeat is not None:
    try:
      heartbeat.post(_EXITED)
    except Exception:  # pylint: disable=broad-except
      pass
  os._exit(1)  # pylint: disable=protected-access
