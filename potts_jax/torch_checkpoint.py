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

The pickles go through a restricted unpickler resolving only
``collections.OrderedDict``, ``torch._utils._rebuild_tensor{,_v2,_v3}``,
``torch._utils._rebuild_parameter{,_with_state}``, the storage types
(``torch.FloatStorage`` ..., ``torch.UntypedStorage``) and torch dtypes
(``torch.float32`` ...). Any other global (``os.system``, ``builtins.eval``, an
``nn.Module`` class, quantised / sparse tensors, tensor subclasses) raises
:class:`CheckpointError`: loading a file never runs code from it. The tar
format of torch < 0.4 and TorchScript archives are not supported.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
import zlib
from typing import Any

import ml_dtypes
import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C
_PROTOCOL = 1001
#: Keys under which :func:`load` looks for a nested state_dict, in this order.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")

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


class _Dtype:
  """Stand-in for a torch dtype (``torch.float32``) or storage type."""

  def __init__(self, dtype):
    self.dtype = np.dtype(dtype)


class _Storage:
  """``numel`` elements of ``dtype``; legacy views: from ``start`` of root."""

  def __init__(self, key, dtype, numel, root=None, start=0):
    self.key, self.dtype, self.numel = key, dtype, numel
    self.root, self.start = root, start
    self.data: bytes | None = None  # Filled after unpickling.

  def raw(self) -> bytes | None:
    """The storage's bytes (``None`` until read)."""
    if self.root is None or self.root.data is None:
      return self.data if self.root is None else None
    item = self.dtype.itemsize  # A view: a slice of the root's bytes.
    return self.root.data[self.start * item:(self.start + self.numel) * item]


class _TensorRef:
  """A tensor to build once every storage has its bytes."""

  def __init__(self, storage, offset, size, stride, dtype=None):
    if not isinstance(storage, _Storage) or not (
        dtype is None or isinstance(dtype, _Dtype)):
      raise TypeError("malformed tensor arguments")
    self.storage, self.offset = storage, offset
    self.size, self.stride = tuple(size), tuple(stride)
    self.dtype = storage.dtype if dtype is None else dtype.dtype


def _rebuild_tensor(storage, offset, size, stride):
  return _TensorRef(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, offset, size, stride)


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad,
                       backward_hooks, dtype, metadata=None):
  del requires_grad, backward_hooks, metadata
  return _TensorRef(storage, offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
  del requires_grad, backward_hooks, state
  return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "UntypedStorage"): _Dtype(np.uint8),
    ("torch.storage", "UntypedStorage"): _Dtype(np.uint8),
}
_GLOBALS.update({("torch", k + "Storage"): _Dtype(_TORCH_DTYPES[v])
                 for k, v in _STORAGE_DTYPES.items()})
_GLOBALS.update({("torch", k): _Dtype(v) for k, v in _TORCH_DTYPES.items()})


class _Unpickler(pickle.Unpickler):
  """Resolves only the globals of :data:`_GLOBALS`; collects storages."""

  def __init__(self, file, path, legacy, allow_globals=True):
    super().__init__(file, encoding="utf-8")
    self.path, self.legacy, self.allow_globals = path, legacy, allow_globals
    self.storages: dict[str, _Storage] = {}

  def find_class(self, module, name):
    if self.allow_globals and (module, name) in _GLOBALS:
      return _GLOBALS[module, name]
    raise CheckpointError(
        f"{self.path}: refusing to load global '{module}.{name}': only "
        "tensors, storages, dtypes and collections.OrderedDict are allowed")

  def persistent_load(self, pid):
    n = 6 if self.legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == n and
            pid[0] in ("storage", b"storage")):
      raise CheckpointError(f"{self.path}: unsupported persistent id {pid!r}")
    stype, key, numel = pid[1], str(pid[2]), pid[4]
    if not isinstance(stype, _Dtype) or not isinstance(numel, int):
      raise CheckpointError(f"{self.path}: malformed storage id {pid!r}")
    root = self.storages.setdefault(key, _Storage(key, stype.dtype, numel))
    if not self.legacy or pid[5] is None:
      return root
    _, start, size = pid[5]  # (view_key, offset, size), in elements.
    return _Storage(key, root.dtype, size, root, start)


def _unpickle(unpickler: _Unpickler) -> Any:
  """Runs ``unpickler``; pickle failures become :class:`CheckpointError`."""
  path = unpickler.path
  try:
    return unpickler.load()
  except CheckpointError:
    raise
  except Exception as e:  # noqa: BLE001  (any malformed pickle)
    what = "file is truncated" if isinstance(e, EOFError) or (
        "truncated" in str(e)) else "corrupt pickle"
    raise CheckpointError(f"{path}: {what} ({type(e).__name__}: {e})") from e


def _read_zip(path: str) -> tuple[Any, str]:
  """Unpickles a zip checkpoint and fills its storages; returns (obj, order)."""
  try:
    zf = zipfile.ZipFile(path)
  except zipfile.BadZipFile as e:
    raise CheckpointError(f"{path}: truncated or corrupt zip archive ({e})"
                         ) from e
  with zf:
    names = set(zf.namelist())
    pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pkls) != 1:
      raise CheckpointError(f"{path}: zip archive is not a PyTorch checkpoint "
                            f"(expected one <prefix>/data.pkl, found {pkls})")
    prefix = pkls[0][:-len("data.pkl")]
    if prefix + "constants.pkl" in names:
      raise CheckpointError(f"{path}: is a TorchScript archive, not supported")
    try:
      order = "little"
      if prefix + "byteorder" in names:
        order = zf.read(prefix + "byteorder").decode().strip()
      if order not in ("little", "big"):
        raise CheckpointError(f"{path}: unknown byteorder {order!r}")
      unpickler = _Unpickler(io.BytesIO(zf.read(pkls[0])), path, legacy=False)
      obj = _unpickle(unpickler)
      for st in unpickler.storages.values():
        name = f"{prefix}data/{st.key}"
        if name not in names:
          raise CheckpointError(
              f"{path}: truncated or corrupt: zip entry {name!r} is missing")
        st.data = zf.read(name)
        if len(st.data) < st.numel * st.dtype.itemsize:
          raise CheckpointError(f"{path}: truncated: zip entry {name!r} has "
                                f"{len(st.data)} bytes, expected "
                                f"{st.numel * st.dtype.itemsize}")
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as e:
      raise CheckpointError(f"{path}: truncated or corrupt zip archive ({e})"
                           ) from e
  return obj, order


def _read_legacy(f, path: str) -> Any:
  """Unpickles a legacy checkpoint after its magic number; fills storages."""
  small = lambda: _unpickle(_Unpickler(f, path, True, allow_globals=False))
  if (version := small()) != _PROTOCOL:
    raise CheckpointError(f"{path}: unsupported legacy protocol {version!r}")
  small()  # sys_info: legacy storage bytes are little-endian whatever it says.
  unpickler = _Unpickler(f, path, legacy=True)
  obj = _unpickle(unpickler)
  keys = small()
  if not isinstance(keys, list) or set(map(str, keys)) != set(
      unpickler.storages):
    raise CheckpointError(f"{path}: storage key list does not match pickle")
  for key in keys:
    st = unpickler.storages[str(key)]
    head, st.data = f.read(8), f.read(st.numel * st.dtype.itemsize)
    if len(head) < 8 or len(st.data) < st.numel * st.dtype.itemsize:
      raise CheckpointError(f"{path}: file is truncated (data of storage "
                            f"{key} ends early)")
    if struct.unpack("<q", head)[0] != st.numel:
      raise CheckpointError(f"{path}: storage {key} has "
                            f"{struct.unpack('<q', head)[0]} elements, "
                            f"expected {st.numel}")
  return obj


def _materialize(ref: _TensorRef, where: str, path: str,
                 swap: bool) -> np.ndarray:
  """A contiguous copy of the strided tensor ``ref`` (bounds checked)."""
  shape, stride, offset, dtype = ref.size, ref.stride, ref.offset, ref.dtype
  ints = shape + stride + (offset,)
  if len(shape) != len(stride) or not all(
      isinstance(i, int) and i >= 0 for i in ints):
    raise CheckpointError(f"{path}: tensor {where}: bad size/stride/offset "
                          f"{shape}/{stride}/{offset}")
  raw = ref.storage.raw()
  if raw is None:
    raise CheckpointError(f"{path}: truncated: storage {ref.storage.key} of "
                          f"tensor {where} has no data")
  elems = np.frombuffer(raw, np.uint8)[:len(raw) // dtype.itemsize *
                                       dtype.itemsize].view(dtype)
  if 0 in shape:
    return np.zeros(shape, dtype)
  last = offset + sum((d - 1) * s for d, s in zip(shape, stride))
  if last >= elems.size:
    raise CheckpointError(f"{path}: tensor {where} reaches element {last} of a "
                          f"storage of {elems.size} elements")
  view = np.lib.stride_tricks.as_strided(
      elems[offset:], shape, [s * dtype.itemsize for s in stride],
      writeable=False)
  out = np.array(view, order="C", copy=True)
  return out.byteswap() if swap else out


def _convert(obj: Any, where: str, path: str, swap: bool) -> Any:
  """Replaces every tensor in nested dicts / lists / tuples by an array."""
  if isinstance(obj, _TensorRef):
    return _materialize(obj, where, path, swap)
  if isinstance(obj, dict):
    return {k: _convert(v, f"{where}.{k}".lstrip("."), path, swap)
            for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_convert(v, f"{where}.{i}".lstrip("."), path, swap)
                     for i, v in enumerate(obj))
  if isinstance(obj, (_Storage, _Dtype, type)):
    raise CheckpointError(f"{path}: {where} is a bare {type(obj).__name__}")
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
      truncated or corrupt, or its pickle references a disallowed global.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such checkpoint file")
  with open(path, "rb") as f:
    head = f.read(128)
    if head[:4] == b"PK\x03\x04":
      obj, order = _read_zip(path)
      return _convert(obj, "", path, order != sys.byteorder)
    bio = io.BytesIO(head)
    try:
      magic = _Unpickler(bio, path, True, allow_globals=False).load()
    except Exception:  # noqa: BLE001  (not a pickle at all)
      magic = None
    if magic != _MAGIC:
      raise CheckpointError(
          f"{path}: not a PyTorch checkpoint: expected a zip archive or the "
          f"legacy magic number {_MAGIC:#x}")
    f.seek(bio.tell())
    obj = _read_legacy(f, path)
  return _convert(obj, "", path, sys.byteorder != "little")


def _is_state_dict(obj: Any) -> bool:
  return isinstance(obj, dict) and all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


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
  obj = load_object(path)
  where = "the top level"
  if key is not None:
    if not isinstance(obj, dict) or key not in obj:
      keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
      raise CheckpointError(f"{path}: no entry {key!r} (top level: {keys})")
    obj, where = obj[key], repr(key)
  elif isinstance(obj, dict) and not _is_state_dict(obj):
    for k in STATE_DICT_KEYS:
      if _is_state_dict(obj.get(k)):
        return dict(obj[k])
  if not _is_state_dict(obj):
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)
          ] if isinstance(obj, dict) else []
    raise CheckpointError(
        f"{path}: {where} is not a dict of tensors (a {type(obj).__name__}; "
        f"non-tensor entries {bad[:5]})")
  return dict(obj)
