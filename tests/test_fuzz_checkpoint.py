"""Hostile files for potts_jax.models.torch_checkpoint: fuzz and crafted cases.

A ``.pth`` file comes from the internet; whatever its bytes, loading it must
raise :class:`CheckpointError` (or return plain data), run no code from it,
leave the reader's module state alone and allocate no more than the file's
size allows (``EXPANSION`` x its size + ``SLACK``). The crafted cases are
those of :mod:`tests.fuzz_corpus.make_corpus` (also committed as files under
``tests/fuzz_corpus/torch``, checked by ``tests/test_fuzz_inputs.py``); the
fuzz tests mutate valid checkpoints written by :mod:`tests.torch_pickle`.
Hypothesis runs derandomised with a fixed budget.
"""

import pathlib
import pickle
import struct
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from potts_jax.models import torch_checkpoint as tc
from tests import torch_pickle as tp
from tests.fuzz_corpus import make_corpus as corpus

REPO = pathlib.Path(__file__).resolve().parents[1]


def fuzz(n: int) -> settings:
  """A fixed, reproducible hypothesis budget of ``n`` examples."""
  return settings(max_examples=n, deadline=None, derandomize=True,
                  database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("fuzz_checkpoint")


def load_limited(path: pathlib.Path, fn=tc.load_object):
  """``fn(path)`` under tracemalloc: (result or the exception, peak bytes)."""
  tracemalloc.start()
  try:
    result = fn(path)
  except Exception as e:  # noqa: BLE001  (the caller checks the type)
    result = e
  finally:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  return result, peak


def budget(path: pathlib.Path) -> int:
  """The most a load of ``path`` may allocate, plus interpreter overhead."""
  return tc.EXPANSION * path.stat().st_size + tc.SLACK + (1 << 20)


def _module_state():
  return {k: getattr(v, "dtype", None) for k, v in tc._GLOBALS.items()}


# ----------------------------------------------------------------------------
# Crafted cases: every one is rejected, runs nothing, allocates little.

CASES = corpus.torch_cases()  # Code payloads would create corpus.SENTINEL.


@pytest.fixture()
def sentinel():
  """Checks that no payload ran: no sentinel file, no tripwire call, the
  reader's allowed globals unchanged."""
  path = pathlib.Path(corpus.SENTINEL)
  path.unlink(missing_ok=True)
  corpus.TRIPPED.clear()
  state = _module_state()
  yield path
  assert not path.exists(), "a crafted checkpoint ran code"
  assert not corpus.TRIPPED, "a crafted checkpoint called the tripwire"
  assert _module_state() == state, "a crafted checkpoint altered the reader"


@pytest.mark.parametrize("name", sorted(CASES))
def test_crafted_checkpoint_is_rejected(tmp_path, sentinel, name):
  data = CASES[name]
  path = tmp_path / f"{name}.pth"
  path.write_bytes(data)
  for fn in (tc.load_object, tc.load):
    result, peak = load_limited(path, fn)
    assert isinstance(result, tc.CheckpointError), (name, result)
    assert str(path) in str(result)
    # Nothing near the declared sizes (GBs to TBs) was allocated.
    assert peak <= 8 * len(data) + (2 << 20), (name, peak)


@pytest.mark.parametrize("target, prefix", [
    ("os.system", "os_system_"), ("posix.system", "posix_system_"),
    ("builtins.eval", "builtins_eval_"), ("builtins.exec", "builtins_exec_"),
    ("subprocess.Popen", "subprocess_popen_"),
    ("builtins.getattr", "builtins_getattr_"),
    ("tests.fuzz_corpus.make_corpus.tripwire", "tripwire_")])
def test_code_globals_are_named_in_the_error(tmp_path, sentinel, target,
                                             prefix):
  names = [n for n in CASES if n.startswith(("zip_" + prefix,
                                            "legacy_" + prefix))]
  assert len(names) >= 2, target  # Both containers, every calling opcode.
  for name in names:
    path = tmp_path / f"{name}.pth"
    path.write_bytes(CASES[name])
    with pytest.raises(tc.CheckpointError,
                       match=f"refusing to load global '{target}'"):
      tc.load(path)


def test_build_cannot_alter_the_reader(tmp_path, sentinel):
  """BUILD on the allowed globals used to rewrite the reader's module state
  (torch.FloatStorage read as float64 afterwards); a later load of a valid
  file must see the reader unchanged."""
  for name in ("build_on_storage_type", "build_on_rebuild_function",
               "build_on_ordereddict_class"):
    for fmt in ("zip", "legacy"):
      path = tmp_path / f"{name}.pth"
      path.write_bytes(CASES[f"{fmt}_{name}"])
      with pytest.raises(tc.CheckpointError):
        tc.load_object(path)
  want = np.arange(5, dtype=np.float32)
  good = tp.write_zip(tmp_path / "good.pt", tp.ODict(w=tp.contiguous(want)))
  tp.assert_same(tc.load(good)["w"], want)


def test_deep_tuple_key_does_not_crash_the_interpreter(tmp_path):
  """Hashing a million-deep tuple (a dict key) overflows the C stack: the
  unpickler would crash the process, so the reader must refuse first."""
  body = (pickle.EMPTY_DICT + pickle.EMPTY_TUPLE + pickle.TUPLE1 * 1_000_000
          + pickle.NONE + pickle.SETITEM)
  path = tmp_path / "deep.pth"
  path.write_bytes(corpus.zip_ckpt(corpus.entry(body)))
  code = ("import importlib.util\n"  # The module alone: a fast start.
          "spec = importlib.util.spec_from_file_location("
          f"'tc', {tc.__file__!r})\n"
          "tc = importlib.util.module_from_spec(spec)\n"
          "spec.loader.exec_module(tc)\n"
          "try:\n"
          f"  tc.load_object({str(path)!r})\n"
          "except tc.CheckpointError as e:\n"
          "  print('rejected:', e)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "rejected:" in out.stdout and "deeper than" in out.stdout


def test_memory_limit_is_per_load_and_tight(tmp_path):
  """A broadcast view just under the limit loads; one over it does not."""
  st_ = tp.Storage("0", np.arange(4, dtype=np.float32))
  limit = tc.SLACK // 4  # float32 elements the slack alone allows.
  ok = tp.write_zip(tmp_path / "ok.pt", tp.ODict(
      w=tp.Tensor(st_, 0, (limit // 2,), (0,))))
  assert tc.load(ok)["w"].shape == (limit // 2,)
  big = tp.write_zip(tmp_path / "big.pt", tp.ODict(
      w=tp.Tensor(st_, 0, (limit * 2,), (0,))))
  with pytest.raises(tc.CheckpointError, match="over 4 x the file size"):
    tc.load(big)


def test_a_large_non_checkpoint_is_rejected_unread(tmp_path):
  path = tmp_path / "video.pth"
  with open(path, "wb") as f:  # Sparse: 1 GiB of zeros, no disk used.
    f.truncate(1 << 30)
  result, peak = load_limited(path)
  assert isinstance(result, tc.CheckpointError)
  assert "not a PyTorch checkpoint" in str(result) and peak < 1 << 20


def test_size_one_dims_ignore_their_stride(tmp_path):
  data = np.arange(6, dtype=np.int32)
  path = tp.write_zip(tmp_path / "s.pt", tp.ODict(
      w=tp.Tensor(tp.Storage("0", data), 2, (1, 3), (2**61, 1))))
  tp.assert_same(tc.load(path)["w"], data[2:5].reshape(1, 3))


# ----------------------------------------------------------------------------
# Fuzz: truncations, byte flips, random bytes and random pickles.

RNG = np.random.default_rng(0)
GOOD = tp.ODict(
    a=tp.contiguous(RNG.standard_normal((3, 4)).astype(np.float32)),
    b=tp.Tensor(tp.Storage("s", np.arange(10, dtype=np.int64)), 2, (2, 3),
                (1, 2)),
    c=tp.contiguous(np.array([True, False])))
VALID = {"zip": corpus.tensor_ckpt("zip", GOOD),
         "legacy": corpus.tensor_ckpt("legacy", GOOD)}


def _check(path: pathlib.Path, must_fail: bool):
  """Loads ``path``: CheckpointError (or data when allowed), within budget."""
  result, peak = load_limited(path)
  if must_fail or isinstance(result, Exception):
    assert isinstance(result, tc.CheckpointError), repr(result)
    assert str(path) in str(result)
  assert peak <= budget(path), peak


def test_valid_checkpoints_load(workdir):
  for fmt, data in VALID.items():
    path = workdir / f"valid_{fmt}.pth"
    path.write_bytes(data)
    got = tc.load(path)
    assert list(got) == ["a", "b", "c"]
    np.testing.assert_array_equal(got["b"], [[2, 4, 6], [3, 5, 7]])


@fuzz(60)
@given(fmt=st.sampled_from(sorted(VALID)), cut=st.floats(0, 1,
                                                         exclude_max=True))
def test_truncated_checkpoint(workdir, fmt, cut):
  data = VALID[fmt]
  path = workdir / "cut.pth"
  path.write_bytes(data[:int(len(data) * cut)])
  _check(path, must_fail=True)


@fuzz(80)
@given(fmt=st.sampled_from(sorted(VALID)),
       flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                st.integers(0, 255)), min_size=1, max_size=4))
def test_byte_flips(workdir, fmt, flips):
  data = bytearray(VALID[fmt])
  for where, value in flips:
    data[int(where * len(data))] = value
  path = workdir / "flipped.pth"
  path.write_bytes(bytes(data))
  _check(path, must_fail=False)


@fuzz(40)
@given(prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02",
                               pickle.dumps(0x1950A86A20F9469CFC6C, 2)]),
       tail=st.binary(max_size=512))
def test_random_bytes(workdir, prefix, tail):
  path = workdir / "random.pth"
  path.write_bytes(prefix + tail)
  _check(path, must_fail=True)


_OPS = [pickle.NONE, pickle.NEWTRUE, pickle.EMPTY_TUPLE, pickle.EMPTY_LIST,
        pickle.EMPTY_DICT, pickle.EMPTY_SET, pickle.MARK, pickle.TUPLE,
        pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3, pickle.LIST, pickle.DICT,
        pickle.APPEND, pickle.APPENDS, pickle.SETITEM, pickle.SETITEMS,
        pickle.ADDITEMS, pickle.FROZENSET, pickle.POP, pickle.POP_MARK,
        pickle.DUP, pickle.REDUCE, pickle.BUILD, pickle.NEWOBJ,
        pickle.BINPERSID, pickle.MEMOIZE, pickle.STACK_GLOBAL,
        pickle.BININT1 + b"\x03", pickle.BININT + struct.pack("<i", -1),
        pickle.BINFLOAT + struct.pack(">d", 1.5), corpus.u("torch"),
        corpus.u("FloatStorage"), corpus.u("storage"), corpus.u("0"),
        corpus.glob("collections", "OrderedDict"),
        corpus.glob("torch._utils", "_rebuild_tensor_v2"),
        corpus.glob("torch._utils", "_rebuild_parameter"),
        corpus.glob("torch", "FloatStorage"),
        pickle.BINPUT + b"\x00", pickle.BINPUT + b"\x01",
        pickle.BINGET + b"\x00", pickle.BINGET + b"\x01"]


@fuzz(150)
@given(ops=st.lists(st.sampled_from(_OPS), max_size=40),
       fmt=st.sampled_from(["zip", "legacy"]))
def test_random_opcode_streams(workdir, ops, fmt):
  """Any opcode soup, in either container: data or CheckpointError."""
  pkl = pickle.PROTO + b"\x04" + b"".join(ops) + pickle.STOP
  path = workdir / "soup.pth"
  path.write_bytes(corpus.zip_ckpt(pkl, {"0": bytes(64)}) if fmt == "zip"
                   else corpus.legacy_ckpt(pkl, ["0"], struct.pack("<q", 16) +
                                           bytes(64)))
  _check(path, must_fail=False)


_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False), st.text(max_size=8))
_TREES = st.recursive(
    _LEAVES, lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.tuples(kids, kids),
        st.dictionaries(st.text(max_size=4), kids, max_size=4)),
    max_leaves=20)


@fuzz(60)
@given(tree=_TREES, protocol=st.integers(0, 5))
def test_plain_data_round_trips_at_every_protocol(workdir, tree, protocol):
  """The scan must accept what a pickler writes (memo, frames, marks)."""
  pkl = pickle.dumps({"tree": tree, "same": [tree, tree]}, protocol=protocol)
  path = workdir / "plain.pth"
  path.write_bytes(corpus.zip_ckpt(pkl))
  got = tc.load_object(path)
  assert got == {"tree": tree, "same": [tree, tree]}
