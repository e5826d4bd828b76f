"""Reads PyTorch checkpoints (``.pth`` / ``.pt``) into numpy, without torch.

Both ``torch.save`` serialisations are read (formats of torch/serialization.py):

* **zip** (torch >= 1.6): ``<prefix>/data.pkl`` (the pickle, persistent ids
  ``('storage', storage_type, key, location, numel)``), ``<prefix>/data/<key>``
  (raw storages, in the order of ``<prefix>/byteorder``, else little-endian).
* **legacy** (torch < 1.6, ``_use_new_zipfile_serialization=False``): pickles
  of the magic number ``0x1950a86a20f9469cfc6c``, the protocol version 1001, a
  sys-info dict, the object (persistent ids ``('storage', storage_type,
  root_key, location, numel, view_metadata)``) and the storage keys; then per
  key an 8-byte little-endian element count and the little-endian raw bytes.

Files are untrusted. Pickles are scanned (:func:`_scan`), then run by an
unpickler resolving only ``collections.OrderedDict``, ``torch._utils``'s
``_rebuild_tensor{,_v2,_v3}`` and ``_rebuild_parameter{,_with_state}``, storage
types and dtypes: any other global (``os.system``, an ``nn.Module`` ...) raises
:class:`CheckpointError`, so loading never runs the file's code. Sizes, strides
and offsets are checked before anything is built, entries and tensors may
allocate :data:`EXPANSION` x the file size + :data:`SLACK` bytes in all, and
every failure is a :class:`CheckpointError` naming the file. Not supported:
torch < 0.4's tar format, TorchScript.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import pickletools
import reprlib
import struct
import sys
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

_MAGIC, _PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
#: Keys under which :func:`load` looks for a nested state_dict, in this order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
#: Deepest nesting of containers a pickle may have; allocation limits.
MAX_DEPTH, EXPANSION, SLACK = 100, 4, 16 << 20
_MAX_DIMS, _MAX_INT = 64, 1 << 62

_TORCH_DTYPES = {
    n: np.dtype(getattr(ml_dtypes, n) if n.startswith(("bf", "float8")) else n)
    for n in ("float16 float32 float64 bfloat16 int8 int16 int32 int64 uint8 "
              "uint16 uint32 uint64 bool complex64 complex128 float8_e4m3fn "
              "float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz").split()}
_STORAGE_DTYPES = dict(  # torch.<Name>Storage: dtype.
    Float="float32", Double="float64", Half="float16", BFloat16="bfloat16",
    Long="int64", Int="int32", Short="int16", Char="int8", Byte="uint8",
    Bool="bool", ComplexFloat="complex64", ComplexDouble="complex128")


class CheckpointError(ValueError):
  """A file that is not a readable, safe PyTorch checkpoint."""


class _Sealed:
  """Slots only and BUILD refused: a file cannot alter these objects."""
  __slots__ = ()

  def __setstate__(self, state):
    raise TypeError(f"BUILD of a {type(self).__name__} is not allowed")


class _Dtype(_Sealed):
  """Stand-in for a torch dtype (``torch.float32``) or storage type."""
  __slots__ = ("dtype",)
  __init__ = lambda self, dtype: setattr(self, "dtype", np.dtype(dtype))


class _Call(_Sealed):
  """An allowed function, for REDUCE (positional arguments)."""
  __slots__ = ("fn",)
  __init__ = lambda self, fn: setattr(self, "fn", fn)
  __call__ = lambda self, *args: self.fn(*args)


class _Storage(_Sealed):
  """``numel`` elements of ``dtype``; legacy views: from ``start`` of root."""
  __slots__ = ("key", "dtype", "numel", "root", "start", "data")

  def __init__(self, key, dtype, numel, root=None, start=0):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.root, self.start, self.data = root, start, None  # data: read later.


class _TensorRef(_Sealed):
  """(storage, offset, size, stride, dtype), checked once storages are read."""
  __slots__ = ("args",)
  __init__ = lambda self, *args: setattr(self, "args", args)


# _rebuild_tensor{,_v2,_v3}(storage, offset, size, stride, ...); v3: dtype 7th.
_TENSOR = _Call(lambda st, offset, size, stride, *_: _TensorRef(
    st, offset, size, stride, None))
_PARAMETER = _Call(lambda data, *_: data)
_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _TENSOR,
    ("torch._utils", "_rebuild_tensor_v2"): _TENSOR,
    ("torch._utils", "_rebuild_tensor_v3"): _Call(
        lambda st, offset, size, stride, _, __, dtype, *___: _TensorRef(
            st, offset, size, stride, dtype)),
    ("torch._utils", "_rebuild_parameter"): _PARAMETER,
    ("torch._utils", "_rebuild_parameter_with_state"): _PARAMETER,
    ("torch", "UntypedStorage"): _Dtype(np.uint8),
    ("torch.storage", "UntypedStorage"): _Dtype(np.uint8),
}
_GLOBALS.update({("torch", k + "Storage"): _Dtype(_TORCH_DTYPES[v])
                 for k, v in _STORAGE_DTYPES.items()})
_GLOBALS.update({("torch", k): _Dtype(v) for k, v in _TORCH_DTYPES.items()})
_nonneg = lambda *values: all(
    isinstance(v, int) and 0 <= v < _MAX_INT for v in values)


class _Unpickler(pickle.Unpickler):
  """Resolves only the globals of :data:`_GLOBALS`; collects storages."""

  def __init__(self, file, path, legacy, allow_globals=True):
    super().__init__(file, encoding="utf-8")
    self.path, self.legacy, self.allow_globals = path, legacy, allow_globals
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module, name):
    if self.allow_globals and (module, name) in _GLOBALS:
      return _GLOBALS[module, name]
    raise CheckpointError(f"{self.path}: refusing to load global '{module}."
                          f"{name}': only tensors, storages, dtypes and "
                          "collections.OrderedDict are allowed")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 + self.legacy and
            pid[0] in ("storage", b"storage") and isinstance(pid[1], _Dtype)
            and isinstance(pid[2], (str, int)) and _nonneg(pid[4])):
      raise CheckpointError(
          f"{self.path}: unsupported storage id {reprlib.repr(pid)}")
    stype, key, numel = pid[1], str(pid[2]), pid[4]
    root = self.storages.setdefault(key, _Storage(key, stype.dtype, numel))
    if not self.legacy or pid[5] is None:
      return root
    view = pid[5]  # (view_key, offset, size), in elements.
    if not (isinstance(view, tuple) and len(view) == 3 and _nonneg(*view[1:])
            and view[1] + view[2] <= root.numel):
      raise CheckpointError(f"{self.path}: storage view {reprlib.repr(view)} "
                            f"outside storage {key} of {root.numel} elements")
    return _Storage(key, root.dtype, view[2], root, view[1])


def _scan(bio: io.BytesIO, path: str) -> None:
  """Checks the pickle at ``bio``'s position, reading it up to its STOP.

  Rejects what would make the C unpickler allocate huge buffers (counted
  strings longer than the data, memo indices beyond the opcodes read) or
  crash (hashing tuples nested deeper than MAX_DEPTH overflows the C stack)."""
  stack, marks, memo, mark = [], [], {}, pickletools.markobject
  try:
    for n, (op, arg, _) in enumerate(pickletools.genops(bio)):
      if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
        idx = len(memo) if op.name == "MEMOIZE" else arg
        if not 0 <= idx <= n:
          raise CheckpointError(f"{path}: corrupt pickle (memo index {idx})")
        memo[idx] = stack[-1]
      elif op.name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
        stack.append(stack[-1] if op.name == "DUP" else memo[arg])
      elif op.name == "MARK":
        marks.append(len(stack))
      else:
        before = op.stack_before
        start = (marks.pop() - before.index(mark) if mark in before else
                 len(stack) - len(before))
        if start < (marks[-1] if marks else 0):
          raise CheckpointError(f"{path}: corrupt pickle (stack underflow)")
        popped, stack[start:] = stack[start:], []
        depth = (max(popped[0], 1 + max(popped[1:], default=0))  # Filled.
                 if op.name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS",
                                "ADDITEMS", "BUILD")
                 else 1 + max(popped, default=-1))
        if depth > MAX_DEPTH:
          raise CheckpointError(f"{path}: pickle nests deeper than {MAX_DEPTH}")
        stack.extend([depth] * len(op.stack_after))
  except CheckpointError:
    raise
  except (ValueError, IndexError, KeyError) as e:  # Malformed or cut short.
    raise CheckpointError(f"{path}: file is truncated or corrupt (pickle: "
                          f"{type(e).__name__}: {str(e)[:200]})") from e


class _Load:
  """One :func:`load_object`: the file and what it may still allocate."""

  def __init__(self, path: str, size: int):
    self.path, self.left = path, EXPANSION * size + SLACK

  def spend(self, nbytes: int, what: str) -> None:
    self.left -= nbytes
    if self.left < 0:
      raise CheckpointError(f"{self.path}: {what} needs {nbytes} bytes, over "
                            f"{EXPANSION} x the file size + {SLACK} in all")

  def unpickle(self, bio: io.BytesIO, legacy: bool, allow_globals=True):
    """Scans, then unpickles the pickle at ``bio``'s position."""
    pos = bio.tell()
    _scan(bio, self.path)
    bio.seek(pos)  # The unpickler stops at the same STOP.
    unpickler = _Unpickler(bio, self.path, legacy, allow_globals)
    return unpickler.load(), unpickler  # load_object converts its errors.

  def zip(self) -> tuple[Any, str]:
    """Unpickles a zip checkpoint, fills its storages; returns (obj, order)."""
    path = self.path
    with zipfile.ZipFile(path) as zf:
      def read(name: str) -> bytes:  # Reading allocates up to either size.
        info = zf.getinfo(name)
        self.spend(max(info.file_size, info.compress_size), f"entry {name!r}")
        return zf.read(name)

      names = set(zf.namelist())
      pkls = [n for n in names if n.endswith("/data.pkl") and "/" not in n[:-9]]
      if len(pkls) != 1:
        raise CheckpointError(f"{path}: zip archive is not a PyTorch "
                              "checkpoint (expected one <prefix>/data.pkl, "
                              f"found {reprlib.repr(pkls)})")
      prefix = pkls[0][:-len("data.pkl")]
      if prefix + "constants.pkl" in names:
        raise CheckpointError(f"{path}: is a TorchScript archive, unsupported")
      order = read(prefix + "byteorder").decode("ascii", "replace").strip(
          ) if prefix + "byteorder" in names else "little"
      if order not in ("little", "big"):
        raise CheckpointError(f"{path}: unknown byteorder {order[:20]!r}")
      obj, unpickler = self.unpickle(io.BytesIO(read(pkls[0])), False)
      for st in unpickler.storages.values():
        name, nbytes = f"{prefix}data/{st.key}", st.numel * st.dtype.itemsize
        if name not in names or len(data := read(name)) < nbytes:
          raise CheckpointError(f"{path}: truncated or corrupt: zip entry "
                                f"{name!r} is missing or under {nbytes} bytes")
        st.data = data
    return obj, order

  def legacy(self, f) -> Any:
    """Unpickles a legacy checkpoint (open file ``f``); fills its storages."""
    path, bio = self.path, io.BytesIO(f.read(128))  # The magic, then all.
    small = lambda: self.unpickle(bio, True, allow_globals=False)[0]
    try:
      magic = small()
    except Exception:  # noqa: BLE001  (not a pickle at all)
      magic = None
    if magic != _MAGIC:
      raise CheckpointError(f"{path}: not a PyTorch checkpoint: expected a "
                            f"zip archive or the legacy magic {_MAGIC:#x}")
    f.seek(0)
    pos, bio = bio.tell(), io.BytesIO(f.read())
    bio.seek(pos)
    if (version := small()) != _PROTOCOL:
      raise CheckpointError(f"{path}: unsupported legacy protocol "
                            f"{reprlib.repr(version)}")
    small()  # sys_info: legacy storages are little-endian whatever it says.
    obj, unpickler = self.unpickle(bio, legacy=True)
    keys = small()
    if not isinstance(keys, list) or set(map(str, keys)) != set(
        unpickler.storages):
      raise CheckpointError(f"{path}: storage key list does not match pickle")
    data, pos = memoryview(bio.getvalue()), bio.tell()  # Slices: no copies.
    for key in keys:
      st = unpickler.storages[str(key)]
      nbytes = st.numel * st.dtype.itemsize
      if pos + 8 + nbytes > len(data) or struct.unpack(
          "<q", data[pos:pos + 8])[0] != st.numel:
        raise CheckpointError(f"{path}: file is truncated or corrupt (data "
                              f"of storage {key} of {st.numel} elements)")
      st.data, pos = data[pos + 8:pos + 8 + nbytes], pos + 8 + nbytes
    return obj

  def tensor(self, ref: _TensorRef, where: str, swap: bool) -> np.ndarray:
    """A contiguous copy of the strided tensor ``ref`` (bounds checked)."""
    st, offset, shape, stride, dtype = ref.args
    if not (isinstance(st, _Storage) and isinstance(dtype, (_Dtype, type(None)))
            and isinstance(shape, tuple) and isinstance(stride, tuple) and
            len(shape) == len(stride) <= _MAX_DIMS and
            _nonneg(*shape, *stride, offset)):
      raise CheckpointError(f"{self.path}: tensor {where}: bad storage/offset/"
                            f"size/stride/dtype {reprlib.repr(ref.args)}")
    dtype = st.dtype if dtype is None else dtype.dtype
    item, raw = st.dtype.itemsize, (st.root or st).data  # All read by now.
    if st.root is not None:  # A legacy view: a slice of its root's bytes.
      raw = raw[st.start * item:(st.start + st.numel) * item]
    elems = np.frombuffer(raw, np.uint8)[:len(raw) // dtype.itemsize *
                                         dtype.itemsize].view(dtype)
    self.spend(math.prod(shape) * dtype.itemsize, f"tensor {where} {shape}")
    if 0 in shape:
      return np.zeros(shape, dtype)
    last = offset + sum((d - 1) * s for d, s in zip(shape, stride))
    if last >= elems.size:
      raise CheckpointError(f"{self.path}: tensor {where} reaches element "
                            f"{last} of a storage of {elems.size} elements")
    strides = [s * dtype.itemsize if d > 1 else 0  # Size 1: any stride.
               for d, s in zip(shape, stride)]
    out = np.array(np.lib.stride_tricks.as_strided(
        elems[offset:], shape, strides, writeable=False), order="C", copy=True)
    return out.byteswap() if swap else out

  def convert(self, obj: Any, swap: bool, where: str = "") -> Any:
    """Replaces every tensor in nested dicts / lists / tuples by an array."""
    at = lambda k: f"{where}.{str(k)[:80]}".lstrip(".")
    if isinstance(obj, _TensorRef):
      return self.tensor(obj, where, swap)
    if isinstance(obj, dict):
      return {k: self.convert(v, swap, at(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
      return type(obj)(self.convert(v, swap, at(i)) for i, v in enumerate(obj))
    if isinstance(obj, (_Sealed, type)):
      raise CheckpointError(f"{self.path}: {where} is a bare "
                            f"{type(obj).__name__}")
    return obj


def load_object(path: str | os.PathLike) -> Any:
  """Loads a whole checkpoint: nested dicts / lists / tuples of arrays.

  Args:
    path: a ``.pth`` / ``.pt`` file written by ``torch.save``.

  Returns:
    The unpickled object with every tensor as a C-contiguous numpy array
    (a copy honouring the tensor's storage offset and strides) and every
    ``OrderedDict`` as a plain (ordered) ``dict``.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    CheckpointError: (a ``ValueError``) the file is neither format, is
      truncated or corrupt, nests too deeply, would allocate more than its
      size allows (module docstring), or references a disallowed global.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  with open(path, "rb") as f:
    load = _Load(path, os.fstat(f.fileno()).st_size)
    try:
      if f.read(4) == b"PK\x03\x04":
        obj, order = load.zip()
        return load.convert(obj, order != sys.byteorder)
      f.seek(0)
      return load.convert(load.legacy(f), sys.byteorder != "little")
    except CheckpointError:
      raise
    except Exception as e:  # noqa: BLE001  (pickle, zip, recursion ... errors)
      raise CheckpointError(f"{path}: truncated or corrupt checkpoint ("
                            f"{type(e).__name__}: {str(e)[:200]})") from e


def load(path: str | os.PathLike, key: str | None = None
        ) -> dict[str, np.ndarray]:
  """Loads the state_dict of a PyTorch checkpoint as numpy arrays.

  Args:
    path: a ``.pth`` / ``.pt`` file written by ``torch.save`` (zip or legacy).
    key: the top-level entry holding the state_dict, for checkpoints such as
      ``{'epoch': 3, 'state_dict': ...}``. When ``None``, the top-level dict is
      used if it is a state_dict, else the first of :data:`STATE_DICT_KEYS`
      that holds one.

  Returns:
    An ordered ``dict`` of state_dict key to C-contiguous array, in the file's
    order, with the tensor's dtype (bfloat16 as ``ml_dtypes.bfloat16``) and
    shape.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    CheckpointError: (a ``ValueError``) see :func:`load_object`; also when no
      dict of tensors is found.
  """
  obj, where = load_object(path), "the top level"
  is_state_dict = lambda o: isinstance(o, dict) and all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in o.items())
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
      raise CheckpointError(f"{path}: no entry {key!r} (top level: "
                            f"{reprlib.repr(keys)})")
    obj, where = obj[key], repr(key)
  elif isinstance(obj, dict) and not is_state_dict(obj):
    for k in STATE_DICT_KEYS:
      if is_state_dict(obj.get(k)):
        return dict(obj[k])
  if not is_state_dict(obj):
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)
          ] if isinstance(obj, dict) else []
    raise CheckpointError(
        f"{path}: {where} is not a dict of tensors (a {type(obj).__name__}; "
        f"non-tensor entries {reprlib.repr(bad[:5])})")
  return dict(obj)
