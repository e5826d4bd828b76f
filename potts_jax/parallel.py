"""Data parallelism: the mesh, and the *pmapped step* run two ways.

The training step is written once as a per-device function over a named axis
``data`` (:data:`AXIS`): it sees its own slice of the global batch, and
communicates only by collectives over ``data`` (``lax.psum`` of gradients and
loss terms, ``lax.pmean`` of BatchNorm statistics). :class:`DataParallel` runs
such a function either

* ``kind="shard_map"`` (default): ``jax.jit(jax.shard_map(fn, ...))`` over a
  one-axis mesh of every device of every host. Replicated values (the train
  state) are global arrays with sharding ``P()``, batches global arrays
  sharded ``P("data")`` (:meth:`DataParallel.put_batch`); or
* ``kind="pmap"``: ``jax.pmap(fn, axis_name="data")``, the literal form.
  Replicated values carry a leading axis of the local devices, batches are
  host-local numpy reshaped to ``[local_devices, B / local_devices, ...]``.

Both compute the same numbers; the training loop moves values in and out only
through :meth:`DataParallel.replicate`, :meth:`DataParallel.put_batch` and
:meth:`DataParallel.unreplicate`, so it is the same code for both. Nothing in
this module starts ``jax.distributed`` (that is :func:`initialize_distributed`,
called by ``main()`` only, which also starts the heartbeat thread that stops
every process when one of them is gone).
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import threading
import time
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

AXIS = "data"
"""The name of the data-parallel mesh axis."""

KINDS = ("shard_map", "pmap")

P = jax.sharding.PartitionSpec


def _shard_map(fn, **kwargs):
  shard_map = getattr(jax, "shard_map", None)
  if shard_map is None:  # jax < 0.7 kept it in experimental.
    from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top
  return shard_map(fn, **kwargs)


HEARTBEAT_TIMEOUT_ENV = "POTTS_JAX_HEARTBEAT_TIMEOUT"
"""Seconds without a heartbeat after which a process counts as gone."""
SHUTDOWN_TIMEOUT_ENV = "POTTS_JAX_SHUTDOWN_TIMEOUT"
"""Seconds a finished process waits at exit for the others."""
DEFAULT_HEARTBEAT_TIMEOUT = 60
DEFAULT_SHUTDOWN_TIMEOUT = 300
PEER_GONE_EXIT_CODE = 1
"""The exit status of a process stopped because another one is gone."""
_HEARTBEAT_KEY = "potts_jax/heartbeat/"


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
    :data:`PEER_GONE_EXIT_CODE`. JAX's own heartbeat check, set to twice
    that time, is the backstop (it aborts the process, naming the task
    "unhealthy"). When process 0, which runs the coordination service,
    dies, JAX stops the others at once ("the leader task ... died").
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
  heartbeat = _Heartbeat(state.client, state.process_id, state.num_processes,
                         timeouts["heartbeat"], state.coordinator_address)
  heartbeat.start()
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
  mesh = make_mesh()
  ones = jax.make_array_from_process_local_data(
      jax.sharding.NamedSharding(mesh, P(AXIS)),
      np.ones(jax.local_device_count(), np.int32))
  total = jax.jit(jax.numpy.sum, out_shardings=jax.sharding.NamedSharding(
      mesh, P()))(ones)
  if int(total.addressable_data(0)) != jax.device_count():
    raise RuntimeError(f"an all-reduce over {jax.device_count()} devices "
                       f"gave {total.addressable_data(0)}")


class _Heartbeat(threading.Thread):
  """Posts this process's heartbeat and stops it when another one is gone.

  Every ``timeout / 10`` seconds (0.5 to 5) it sets the key
  ``potts_jax/heartbeat/<process>`` of the coordination service to a new
  count and reads every process's. A process whose count has not changed
  for ``timeout`` seconds is gone: this one logs which and exits at once
  (``os._exit``, whatever the main thread is blocked in). It does the same
  when process 0's coordination service has not answered for ``timeout``
  seconds. Once this process is exiting (``exiting`` set), the service may
  stop as the job ends: errors reaching it then end the thread quietly.

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

  def run(self) -> None:
    start = time.monotonic()
    # Per other process: its last count seen, and since when.
    last = {p: (None, start) for p in range(self.num_processes)
            if p != self.process}
    count, failing_since = 0, None
    while True:
      count += 1
      try:
        self.client.key_value_set(f"{_HEARTBEAT_KEY}{self.process}",
                                  str(count), allow_overwrite=True)
        entries = self.client.key_value_dir_get(_HEARTBEAT_KEY)
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
      counts = {key.rsplit("/", 1)[-1]: value for key, value in entries}
      for peer, (seen, since) in last.items():
        value = counts.get(str(peer))
        if value != seen:
          last[peer] = (value, now)
        elif now - since >= self.timeout:
          self._stop(f"process {peer} of {self.num_processes} is gone: "
                     f"no heartbeat from it for {now - since:.0f} s")
      time.sleep(self.interval)

  def _stop(self, reason: str) -> None:
    logging.error(
        "%s (limit %d s, %s); stopping process %d of %d too. Restart every "
        "process with the same command to resume from the newest "
        "checkpoint.", reason, self.timeout, HEARTBEAT_TIMEOUT_ENV,
        self.process, self.num_processes)
    logging.flush()
    sys.stderr.flush()
    os._exit(PEER_GONE_EXIT_CODE)  # pylint: disable=protected-access


def local_copy(tree: Any) -> Any:
  """This process's copy of a replicated tree: a global array spanning other
  hosts becomes one of its local shards (the whole value, as it is
  replicated); other leaves are returned as they are."""
  def local(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x.addressable_data(0)
    return x
  return jax.tree.map(local, tree)


def make_mesh(devices: Any = None) -> jax.sharding.Mesh:
  """A one-axis mesh ``data`` over ``devices`` (all devices of all hosts)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  return jax.sharding.Mesh(devices.reshape(-1), (AXIS,))


class DataParallel:
  """Runs per-device functions over :data:`AXIS` as ``shard_map`` or ``pmap``.

  Args:
    kind: ``"shard_map"`` or ``"pmap"``.
    mesh: the one-axis mesh (``shard_map``); :func:`make_mesh` by default.
      ``pmap`` uses the local devices of every host.
  """

  def __init__(self, kind: str = "shard_map", mesh: Any = None):
    if kind not in KINDS:
      raise ValueError(f"parallel must be one of {KINDS}, got {kind!r}")
    self.kind = kind
    self.mesh = make_mesh() if mesh is None else mesh
    if kind == "shard_map":
      self.num_devices = self.mesh.devices.size
      self.num_local_devices = len(
          [d for d in self.mesh.devices.flat
           if d.process_index == jax.process_index()])
    else:
      self.num_devices = jax.device_count()
      self.num_local_devices = jax.local_device_count()

  def step(self, fn: Callable[..., Any], *, replicated: tuple[bool, ...],
           donate_argnums: tuple[int, ...] = ()) -> Callable[..., Any]:
    """Wraps a per-device ``fn(*args) -> outputs`` (outputs replicated).

    Args:
      fn: the per-device function; it may use collectives over :data:`AXIS`
        and must return values equal on every device (e.g. after ``psum``).
      replicated: per positional argument, True for a replicated value (the
        state), False for one split along its leading (batch) axis.
      donate_argnums: arguments whose buffers may be reused for the outputs.

    Returns:
      A function of the same arguments, placed by :meth:`replicate` /
      :meth:`put_batch`, returning replicated outputs.
    """
    if self.kind == "pmap":
      return jax.pmap(fn, axis_name=AXIS, donate_argnums=donate_argnums)
    in_specs = tuple(P() if r else P(AXIS) for r in replicated)
    # check_vma=False: pmap's semantics, where the gradient of a replicated
    # value is per device until fn psums it (with the check on, the transpose
    # would psum it implicitly and fn's own psum would count it N times).
    mapped = _shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=P(),
                        check_vma=False)
    return jax.jit(mapped, donate_argnums=donate_argnums)

  def replicate(self, tree: Any) -> Any:
    """The same value on every device (every host must pass the same value)."""
    if self.kind == "pmap":  # [local devices, ...], sharded by pmap's call.
      n = self.num_local_devices
      return jax.tree.map(
          lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)
    sharding = jax.sharding.NamedSharding(self.mesh, P())

    def put(x):
      if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])

    return jax.tree.map(put, tree)

  def unreplicate(self, tree: Any) -> Any:
    """Replicated outputs as host-usable values of this process: no device
    axis (``[0]`` for pmap), a local copy of a global array
    (:func:`local_copy`) for ``shard_map``."""
    if self.kind == "pmap":
      return jax.tree.map(lambda x: x[0], tree)
    return local_copy(tree)

  def put_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
    """A host-local batch ``[B_host, ...]`` as the mapped functions take it.

    Numeric entries are placed (``shard_map``: global arrays sharded over
    ``data``, the hosts' batches concatenated in process order; ``pmap``:
    ``[local_devices, B_host / local_devices, ...]``); others (names) are
    dropped.

    Raises:
      ValueError: when ``B_host`` is not a multiple of the local devices.
    """
    out = {}
    for key, value in batch.items():
      array = np.asarray(value)
      if array.dtype.kind not in "biuf":
        continue
      if array.shape[0] % self.num_local_devices:
        raise ValueError(
            f"batch entry {key!r} has {array.shape[0]} examples on this host, "
            f"not a multiple of its {self.num_local_devices} devices; make "
            "the per-host batch size a multiple of jax.local_device_count()")
      if self.kind == "pmap":
        out[key] = array.reshape((self.num_local_devices, -1)
                                 + array.shape[1:])
      else:
        sharding = jax.sharding.NamedSharding(self.mesh, P(AXIS))
        out[key] = jax.make_array_from_process_local_data(sharding, array)
    return out
