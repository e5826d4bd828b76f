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
this module starts ``jax.distributed``: that is
:func:`potts_jax.multihost.initialize_distributed`, called by ``main()``
only.
"""

from __future__ import annotations

from typing import Any, Callable

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
