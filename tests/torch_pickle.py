"""A torch-free writer of ``torch.save``'s two formats, for the tests.

It emits the pickle opcodes ``torch.save`` emits (GLOBAL ``torch._utils
_rebuild_tensor_v2``, BINPERSID storage ids, REDUCE ...) directly, so no
stand-in ``torch`` module is ever put in ``sys.modules``; :func:`write_zip` and
:func:`write_legacy` lay them out as torch's zip (torch >= 1.6) and legacy
serialisations.
"""

import dataclasses
import itertools
import pickle
import struct
import sys
import zipfile

import ml_dtypes
import numpy as np


STORAGE_NAMES = {
    "float32": "FloatStorage", "float64": "DoubleStorage",
    "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "complex64": "ComplexFloatStorage",
}


@dataclasses.dataclass(frozen=True)
class Global:
  """A module-level name, pickled as GLOBAL ``module\\nname``."""
  module: str
  name: str


@dataclasses.dataclass(frozen=True)
class Reduce:
  """``func(*args)``, pickled as ``func args REDUCE``."""
  func: object
  args: tuple


@dataclasses.dataclass(frozen=True)
class PersistentId:
  """Pickled as ``pid BINPERSID`` (what ``Pickler.persistent_id`` emits)."""
  pid: tuple


class ODict(dict):
  """Pickled like ``collections.OrderedDict``: REDUCE, then SETITEMS."""


@dataclasses.dataclass(eq=False)
class Storage:
  """A torch storage: key and its elements (a 1-D array of its dtype)."""
  key: str
  data: np.ndarray


@dataclasses.dataclass(eq=False)
class Tensor:
  """A strided tensor into a storage, as ``_rebuild_tensor_v2`` gets it.

  ``view`` is a legacy ``view_metadata`` (view_key, offset, size); ``v3``
  writes ``_rebuild_tensor_v3`` with an UntypedStorage and this torch dtype.
  """
  storage: Storage
  offset: int
  shape: tuple
  stride: tuple
  view: tuple | None = None
  v3: str | None = None


def dumps(obj) -> bytes:
  """Protocol-2 pickle of ``obj`` (None/bool/int/float/str/containers/nodes)."""
  out = bytearray(pickle.PROTO + b"\x02")

  def emit(x):
    if x is None:
      out.extend(pickle.NONE)
    elif isinstance(x, bool):
      out.extend(pickle.NEWTRUE if x else pickle.NEWFALSE)
    elif isinstance(x, int):
      if -2**31 <= x < 2**31:
        out.extend(pickle.BININT + struct.pack("<i", x))
      else:
        b = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
        out.extend(pickle.LONG1 + bytes([len(b)]) + b)
    elif isinstance(x, float):
      out.extend(pickle.BINFLOAT + struct.pack(">d", x))
    elif isinstance(x, str):
      b = x.encode()
      out.extend(pickle.BINUNICODE + struct.pack("<I", len(b)) + b)
    elif isinstance(x, tuple):
      out.extend(pickle.MARK)
      for v in x:
        emit(v)
      out.extend(pickle.TUPLE)
    elif isinstance(x, list):
      out.extend(pickle.EMPTY_LIST + pickle.MARK)
      for v in x:
        emit(v)
      out.extend(pickle.APPENDS)
    elif isinstance(x, dict):
      if isinstance(x, ODict):
        emit(Reduce(Global("collections", "OrderedDict"), ()))
      else:
        out.extend(pickle.EMPTY_DICT)
      out.extend(pickle.MARK)
      for k, v in x.items():
        emit(k)
        emit(v)
      out.extend(pickle.SETITEMS)
    elif isinstance(x, Global):
      out.extend(pickle.GLOBAL + f"{x.module}\n{x.name}\n".encode())
    elif isinstance(x, Reduce):
      emit(x.func)
      emit(x.args)
      out.extend(pickle.REDUCE)
    elif isinstance(x, PersistentId):
      emit(x.pid)
      out.extend(pickle.BINPERSID)
    else:
      raise TypeError(type(x))

  emit(obj)
  out.extend(pickle.STOP)
  return bytes(out)


def _dtype_name(a: np.ndarray) -> str:
  return "bfloat16" if a.dtype == ml_dtypes.bfloat16 else a.dtype.name


def to_pickle_tree(obj, legacy: bool, storages: dict):
  """Replaces each :class:`Tensor` by the reduce torch writes for it."""
  if isinstance(obj, Tensor):
    st = obj.storage
    storages[st.key] = st
    if obj.v3:
      stype, numel = Global("torch", "UntypedStorage"), st.data.nbytes
    else:
      stype = Global("torch", STORAGE_NAMES[_dtype_name(st.data)])
      numel = st.data.size
    pid = ("storage", stype, st.key, "cpu", numel)
    if legacy:
      pid += (obj.view,)
    args = (PersistentId(pid), obj.offset, tuple(obj.shape),
            tuple(obj.stride), False, ODict())
    if obj.v3:
      return Reduce(Global("torch._utils", "_rebuild_tensor_v3"),
                    args + (Global("torch", obj.v3),))
    return Reduce(Global("torch._utils", "_rebuild_tensor_v2"), args)
  if isinstance(obj, Reduce):
    return Reduce(obj.func, to_pickle_tree(obj.args, legacy, storages))
  if isinstance(obj, dict):
    return type(obj)(
        (k, to_pickle_tree(v, legacy, storages)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(to_pickle_tree(v, legacy, storages) for v in obj)
  return obj


def _raw(a: np.ndarray, order: str) -> bytes:
  return (a if order == sys.byteorder else a.byteswap()).tobytes()


def write_zip(path, obj, byteorder="little", prefix="archive", skip=()):
  """Writes ``obj`` as torch >= 1.6 does; omits the storages named in skip."""
  storages = {}
  pkl = dumps(to_pickle_tree(obj, False, storages))
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr(f"{prefix}/data.pkl", pkl)
    z.writestr(f"{prefix}/byteorder", byteorder)
    for key, st in sorted(storages.items()):
      if key not in skip:
        z.writestr(f"{prefix}/data/{key}", _raw(st.data, byteorder))
    z.writestr(f"{prefix}/version", "3\n")
  return path


def legacy_bytes(obj) -> tuple[bytes, bytes]:
  """(header + main pickle, the rest) of ``obj`` in the legacy format."""
  storages = {}
  main = dumps(to_pickle_tree(obj, True, storages))
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
  head = b"".join(pickle.dumps(x, protocol=2) for x in (
      0x1950A86A20F9469CFC6C, 1001, sys_info)) + main
  keys = sorted(storages)
  tail = pickle.dumps(keys, protocol=2) + b"".join(
      struct.pack("<q", storages[k].data.size) + _raw(storages[k].data,
                                                       "little") for k in keys)
  return head, tail


def write_legacy(path, obj):
  """Writes ``obj`` in the legacy format (torch < 1.6)."""
  path.write_bytes(b"".join(legacy_bytes(obj)))
  return path


FORMATS = {"zip": write_zip, "legacy": write_legacy}




_KEYS = itertools.count()


def contiguous(a: np.ndarray) -> Tensor:
  """A C-contiguous tensor owning a storage of its own (a fresh key)."""
  a = np.asarray(a)
  strides = [s // a.itemsize for s in np.array(a, order="C").strides]
  return Tensor(Storage(f"s{next(_KEYS)}", a.reshape(-1)), 0, a.shape,
                tuple(strides))


def assert_same(got: np.ndarray, want: np.ndarray):
  assert got.dtype == want.dtype and got.shape == want.shape
  assert got.flags.c_contiguous and got.flags.writeable
  np.testing.assert_array_equal(  # Bitwise (NaN-safe, any dtype).
      np.array(got, order="C").reshape(-1).view(np.uint8),
      np.array(want, order="C").reshape(-1).view(np.uint8))
