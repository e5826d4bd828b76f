"""Builds the hostile-file corpus of tests/fuzz_corpus (and the tests' cases).

Every case is a file that the project's readers must reject with their named
error, running no code and allocating no more than the file's size allows:

* ``torch/*.pth``: PyTorch checkpoints (zip and legacy) with pickles that call
  ``os.system`` & co. through every opcode that can call (GLOBAL and
  STACK_GLOBAL + REDUCE, INST, OBJ, NEWOBJ, NEWOBJ_EX, BUILD), memory bombs
  (counted strings, memo indices, storage and tensor sizes, a zip bomb), bad
  strides / offsets / dtypes, missing storages and corrupt containers;
  :mod:`potts_jax.models.torch_checkpoint` must raise ``CheckpointError``.
* ``xml/*.xml``: ScribbleSup annotations with entity bombs, external
  entities, bad structure and bad coordinates;
  :func:`potts_jax.data.scribblesup.parse_xml` must raise ``ValueError``
  naming the file.
* ``png/*.png``: scribble PNGs of random bytes, truncated, of the wrong mode
  or values, and a decompression bomb; the PNG readers must raise
  ``ValueError`` naming the file.

Code-running payloads target :data:`SENTINEL` (they would create it). Run
``python -m tests.fuzz_corpus.make_corpus`` from the repository root to
rewrite the corpus; the output is deterministic (fixed zip timestamps, seeded
random bytes), and ``tests/test_fuzz_inputs.py`` checks that the committed
files are what this script writes.
"""

from __future__ import annotations

import io
import pathlib
import pickle
import struct
import sys
import zipfile
import zlib

import numpy as np
from PIL import Image

from tests import torch_pickle as tp

HERE = pathlib.Path(__file__).resolve().parent
#: The file the code-running payloads of the corpus would create.
SENTINEL = "/tmp/potts_jax_fuzz_corpus_sentinel"
#: Set by :func:`tripwire`: a pickle that got to call it ran code.
TRIPPED: list = []
_MAGIC = 0x1950A86A20F9469CFC6C


def tripwire(*args):
  """A function the crafted pickles reference; it must never be called."""
  TRIPPED.append(args)
  if args and isinstance(args[0], str):
    pathlib.Path(args[0]).touch()


# ----------------------------------------------------------------------------
# Raw pickle pieces (protocol-2 framing, opcodes of any protocol).

def u(s: str) -> bytes:
  """BINUNICODE ``s``."""
  b = s.encode()
  return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def tup(*items: bytes) -> bytes:
  return pickle.MARK + b"".join(items) + pickle.TUPLE


def glob(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def entry(body: bytes) -> bytes:
  """A protocol-2 pickle of ``{'x': <the value body pushes>}``."""
  return (pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + u("x") + body +
          pickle.SETITEM + pickle.STOP)


def calls(module: str, name: str, *args: bytes) -> dict[str, bytes]:
  """``module.name(*args)`` through every opcode that calls a global."""
  return {
      "global_reduce": glob(module, name) + tup(*args) + pickle.REDUCE,
      "stack_global_reduce": (u(module) + u(name) + pickle.STACK_GLOBAL +
                              tup(*args) + pickle.REDUCE),
      "inst": (pickle.MARK + b"".join(args) + pickle.INST +
               f"{module}\n{name}\n".encode()),
      "obj": pickle.MARK + glob(module, name) + b"".join(args) + pickle.OBJ,
      "newobj": glob(module, name) + tup(*args) + pickle.NEWOBJ,
      "newobj_ex": (glob(module, name) + tup(*args) + pickle.EMPTY_DICT +
                    pickle.NEWOBJ_EX),
  }


def code_payloads(sentinel: str) -> dict[str, bytes]:
  """Values whose unpickling would run code that creates ``sentinel``."""
  touch = u(f"touch {sentinel}")
  py = u(f"open({sentinel!r}, 'w').close()")
  targets = {
      "os_system": ("os", "system", touch),
      "posix_system": ("posix", "system", touch),
      "builtins_eval": ("builtins", "eval", py),
      "builtins_exec": ("builtins", "exec", py),
      "subprocess_popen": ("subprocess", "Popen", pickle.EMPTY_LIST +
                           pickle.MARK + u("touch") + u(sentinel) +
                           pickle.APPENDS),
      "tripwire": ("tests.fuzz_corpus.make_corpus", "tripwire", u(sentinel)),
  }
  out = {}
  for target, (module, name, arg) in targets.items():
    for how, body in calls(module, name, arg).items():
      out[f"{target}_{how}"] = body
  import_os = glob("builtins", "__import__") + tup(u("os")) + pickle.REDUCE
  out["builtins_getattr_chain"] = (  # getattr(__import__('os'), 'system')(..)
      glob("builtins", "getattr") + tup(import_os, u("system")) +
      pickle.REDUCE + tup(touch) + pickle.REDUCE)
  # BUILD on the allowed globals: would rewrite module state of the reader.
  out["build_on_storage_type"] = (
      glob("torch", "FloatStorage") + tup(pickle.NONE, pickle.EMPTY_DICT + u(
          "dtype") + u("float64") + pickle.SETITEM) + pickle.BUILD)
  out["build_on_rebuild_function"] = (
      glob("torch._utils", "_rebuild_tensor_v2") + tup(
          pickle.NONE, pickle.EMPTY_DICT + u("__defaults__") + tup(
              pickle.NONE) + pickle.SETITEM) + pickle.BUILD)
  out["build_on_ordereddict_class"] = (
      glob("collections", "OrderedDict") + tup(pickle.NONE, pickle.EMPTY_DICT +
                                               u("fromkeys") + pickle.NONE +
                                               pickle.SETITEM) + pickle.BUILD)
  return out


def bomb_payloads() -> dict[str, bytes]:
  """Values whose unpickling would allocate far more than the file's size."""
  huge = 2**40
  return {
      # The C unpickler sizes its memo (and zero-fills it) up to the index.
      "memo_long_binput": pickle.NONE + pickle.LONG_BINPUT + struct.pack(
          "<I", 2**31 - 1),
      "memo_put_text": pickle.NONE + pickle.PUT + b"999999999\n",
      # Counted strings: the C unpickler allocates the declared length.
      "binbytes8": pickle.BINBYTES8 + struct.pack("<Q", huge) + b"abc",
      "binunicode8": pickle.BINUNICODE8 + struct.pack("<Q", huge) + b"abc",
      "bytearray8": pickle.BYTEARRAY8 + struct.pack("<Q", huge) + b"abc",
      "binunicode": pickle.BINUNICODE + struct.pack("<I", 2**32 - 1) + b"a",
      "binstring": pickle.BINSTRING + struct.pack("<i", 2**31 - 1) + b"a",
      "long4": pickle.LONG4 + struct.pack("<i", 2**31 - 1) + b"\x01",
      "frame": pickle.FRAME + struct.pack("<Q", huge) + pickle.NONE,
      # Nesting deeper than the reader's limit; cycles.
      "deep_tuple": pickle.EMPTY_TUPLE + pickle.TUPLE1 * 200,
      "deep_list": pickle.EMPTY_LIST * 201 + pickle.APPEND * 200,
      "deep_dict_key": (pickle.EMPTY_DICT + pickle.EMPTY_TUPLE +
                        pickle.TUPLE1 * 200 + pickle.NONE + pickle.SETITEM),
      "cyclic_list": (pickle.EMPTY_LIST + pickle.BINPUT + b"\x00" +
                      pickle.BINGET + b"\x00" + pickle.APPEND),
      "cyclic_dict": (pickle.EMPTY_DICT + pickle.BINPUT + b"\x00" + u("a") +
                      pickle.BINGET + b"\x00" + pickle.SETITEM),
      # Malformed streams.
      "get_missing_memo": pickle.BINGET + b"\x07",
      "stack_underflow": pickle.MARK + pickle.TUPLE2,
      "bad_utf8": pickle.SHORT_BINUNICODE + b"\x02\xff\xfe",
      "unknown_opcode": b"\xff",
      "no_stop": b"",
  }


# ----------------------------------------------------------------------------
# Checkpoint containers.

_DATE = (1980, 1, 1, 0, 0, 0)


def zip_bytes(entries: dict[str, bytes], deflate: tuple[str, ...] = ()
              ) -> bytes:
  """A zip archive of ``entries`` with fixed timestamps (reproducible)."""
  bio = io.BytesIO()
  with zipfile.ZipFile(bio, "w") as z:
    for name, data in entries.items():
      info = zipfile.ZipInfo(name, _DATE)
      info.compress_type = (zipfile.ZIP_DEFLATED if name in deflate else
                            zipfile.ZIP_STORED)
      z.writestr(info, data)
  return bio.getvalue()


def zip_ckpt(pkl: bytes, storages: dict[str, bytes] | None = None,
             byteorder: bytes = b"little", **extra: bytes) -> bytes:
  """A torch >= 1.6 checkpoint of pickle ``pkl`` and raw ``storages``."""
  entries = {"archive/data.pkl": pkl, "archive/byteorder": byteorder}
  entries.update({f"archive/data/{k}": v for k, v in (storages or {}).items()})
  entries.update({f"archive/{k}": v for k, v in extra.items()})
  entries["archive/version"] = b"3\n"
  return zip_bytes(entries)


def legacy_ckpt(main: bytes, keys: list[str] = (), tail: bytes = b"") -> bytes:
  """A torch < 1.6 checkpoint of main pickle ``main``, storage ``keys``."""
  sys_info = {"protocol_version": 1001, "little_endian": True,
              "type_sizes": {"short": 2, "int": 4, "long": 4}}
  head = b"".join(pickle.dumps(x, protocol=2) for x in (_MAGIC, 1001, sys_info))
  return head + main + pickle.dumps(list(keys), protocol=2) + tail


def tensor_ckpt(fmt: str, obj) -> bytes:
  """``obj`` (``tests.torch_pickle`` nodes) as a ``fmt`` checkpoint."""
  if fmt == "legacy":
    return b"".join(tp.legacy_bytes(obj))
  storages = {}
  pkl = tp.dumps(tp.to_pickle_tree(obj, False, storages))
  return zip_ckpt(pkl, {k: s.data.tobytes() for k, s in storages.items()})


def storage_id(numel, stype=tp.Global("torch", "FloatStorage"), key="0",
               legacy=False, view=None) -> tp.PersistentId:
  pid = ("storage", stype, key, "cpu", numel)
  return tp.PersistentId(pid + ((view,) if legacy else ()))


def rebuild(pid, offset, size, stride, dtype=None) -> tp.Reduce:
  """``_rebuild_tensor_v2`` (or ``_v3`` with ``dtype``) of raw arguments."""
  args = (pid, offset, size, stride, False, tp.ODict())
  if dtype is None:
    return tp.Reduce(tp.Global("torch._utils", "_rebuild_tensor_v2"), args)
  return tp.Reduce(tp.Global("torch._utils", "_rebuild_tensor_v3"),
                   args + (dtype,))


def raw_tensor_ckpt(fmt: str, numel, offset, size, stride, data: bytes,
                    dtype=None, view=None, stype=None) -> bytes:
  """One tensor ``w`` over storage ``0`` holding ``data``, every argument
  as given (so that it can be anything)."""
  legacy = fmt == "legacy"
  pid = storage_id(numel, legacy=legacy, view=view,
                   **({"stype": stype} if stype is not None else {}))
  main = tp.dumps(tp.ODict(w=rebuild(pid, offset, size, stride, dtype)))
  if legacy:
    return legacy_ckpt(main, ["0"], struct.pack("<q", len(data) // 4) + data)
  return zip_ckpt(main, {"0": data})


def _patch_central(data: bytes, name: bytes, **fields: int) -> bytes:
  """Rewrites fields of the central directory record of entry ``name``."""
  offsets = {"flags": (8, "<H"), "method": (10, "<H"),
             "compress_size": (20, "<I"), "file_size": (24, "<I")}
  out = bytearray(data)
  at = 0
  while True:
    at = out.index(b"PK\x01\x02", at)
    n = struct.unpack("<H", out[at + 28:at + 30])[0]
    if out[at + 46:at + 46 + n] == name:
      break
    at += 4
  for field, value in fields.items():
    off, fmt = offsets[field]
    struct.pack_into(fmt, out, at + off, value)
  return bytes(out)


def torch_cases(sentinel: str = SENTINEL) -> dict[str, bytes]:
  """Name -> bytes of every hostile checkpoint (each must be rejected)."""
  cases = {}
  for name, body in {**code_payloads(sentinel), **bomb_payloads()}.items():
    cases[f"zip_{name}"] = zip_ckpt(entry(body))
    cases[f"legacy_{name}"] = legacy_ckpt(entry(body))
  f32 = np.arange(6, dtype=np.float32).tobytes()
  tensors = {  # (numel, offset, size, stride, data, extra)
      "numel_huge": (2**40, 0, (2,), (1,), f32, {}),
      "numel_negative": (-1, 0, (2,), (1,), f32, {}),
      "numel_not_int": ("6", 0, (2,), (1,), f32, {}),
      "numel_beyond_int64": (2**70, 0, (2,), (1,), f32, {}),
      "storage_type_int": (6, 0, (2,), (1,), f32, {"stype": 5}),
      "storage_type_global": (6, 0, (2,), (1,), f32, {
          "stype": tp.Global("os", "system")}),
      "stride_negative": (6, 5, (3,), (-1,), f32, {}),
      "offset_negative": (6, -1, (2,), (1,), f32, {}),
      "size_negative": (6, 0, (-2,), (1,), f32, {}),
      "offset_plus_size_beyond": (6, 3, (4,), (1,), f32, {}),
      "stride_beyond": (6, 0, (2, 2), (5, 1), f32, {}),
      "stride_int64_overflow": (6, 0, (2,), (2**63,), f32, {}),
      "broadcast_4tb": (6, 0, (2**20, 2**20), (0, 0), f32, {}),
      "broadcast_64mb": (6, 0, (4096, 4096), (0, 0), f32, {}),
      "dims_65": (6, 0, (1,) * 65, (1,) * 65, f32, {}),
      "size_str": (6, 0, "abc", (1, 1, 1), f32, {}),
      "size_float": (6, 0, (2.0,), (1,), f32, {}),
      "stride_len_mismatch": (6, 0, (2, 3), (1,), f32, {}),
      "dtype_str": (24, 0, (2,), (1,), f32, {"dtype": "float32"}),
      "dtype_global_refused": (24, 0, (2,), (1,), f32, {
          "dtype": tp.Global("numpy", "float32")}),
  }
  for name, (numel, offset, size, stride, data, extra) in tensors.items():
    for fmt in ("zip", "legacy"):
      if fmt == "legacy" and "dtype" in extra:
        continue
      cases[f"{fmt}_tensor_{name}"] = raw_tensor_ckpt(
          fmt, numel, offset, size, stride, data, **extra)
  cases["legacy_view_outside_root"] = raw_tensor_ckpt(
      "legacy", 6, 0, (2,), (1,), f32, view=("v", 4, 10))
  cases["legacy_view_negative"] = raw_tensor_ckpt(
      "legacy", 6, 0, (2,), (1,), f32, view=("v", -2, 2))
  cases["legacy_view_malformed"] = raw_tensor_ckpt(
      "legacy", 6, 0, (2,), (1,), f32, view="v")
  good = tp.ODict(w=tp.Tensor(tp.Storage("0", np.arange(6, dtype=np.float32)),
                             0, (6,), (1,)))  # A fixed key: reproducible.
  legacy = tensor_ckpt("legacy", good)
  main = tp.dumps(tp.ODict(w=rebuild(storage_id(6, legacy=True), 0, (6,),
                                     (1,))))
  cases["legacy_count_mismatch"] = legacy_ckpt(
      main, ["0"], struct.pack("<q", 7) + f32)
  cases["legacy_count_huge"] = legacy_ckpt(
      main, ["0"], struct.pack("<q", 2**62) + f32)
  cases["legacy_missing_storage_key"] = legacy_ckpt(main, [], b"")
  cases["legacy_extra_storage_key"] = legacy_ckpt(
      main, ["0", "1"], struct.pack("<q", 6) + f32)
  cases["legacy_keys_not_a_list"] = legacy_ckpt(main)[:-len(
      pickle.dumps([], protocol=2))] + pickle.dumps({"0": 1}, protocol=2)
  cases["legacy_wrong_protocol"] = (
      pickle.dumps(_MAGIC, protocol=2) + pickle.dumps(1002, protocol=2) +
      legacy[len(pickle.dumps(_MAGIC, 2)) + len(pickle.dumps(1001, 2)):])
  cases["legacy_magic_only"] = pickle.dumps(_MAGIC, protocol=2)
  for frac in (0.25, 0.5, 0.75, 0.99):
    cases[f"legacy_cut_{int(frac * 100)}"] = legacy[:int(len(legacy) * frac)]
  zipped = tensor_ckpt("zip", good)
  for frac in (0.25, 0.5, 0.75, 0.99):
    cases[f"zip_cut_{int(frac * 100)}"] = zipped[:int(len(zipped) * frac)]
  pkl = tp.dumps(tp.ODict(w=rebuild(storage_id(6), 0, (6,), (1,))))
  cases["zip_missing_storage"] = zip_ckpt(pkl)
  cases["zip_short_storage"] = zip_ckpt(pkl, {"0": f32[:20]})
  cases["zip_byteorder_middle"] = zip_ckpt(pkl, {"0": f32}, b"middle")
  cases["zip_byteorder_binary"] = zip_ckpt(pkl, {"0": f32}, b"\xff\xfe")
  cases["zip_torchscript"] = zip_ckpt(pkl, {"0": f32},
                                     **{"constants.pkl": b"\x80\x02)."})
  cases["zip_two_data_pkl"] = zip_bytes({"a/data.pkl": pkl, "b/data.pkl": pkl})
  cases["zip_no_data_pkl"] = zip_bytes({"readme.txt": b"hello"})
  cases["zip_empty_archive"] = zip_bytes({})
  # 24 MiB of zeros deflated to ~24 KiB: past 4 x the file size + 16 MiB.
  cases["zip_bomb_deflate"] = zip_bytes(
      {"archive/data.pkl": pkl, "archive/data/0": bytes(24 << 20)},
      deflate=("archive/data/0",))
  stored = zip_ckpt(pkl, {"0": f32})
  cases["zip_lying_compress_size"] = _patch_central(
      stored, b"archive/data/0", compress_size=2**31, file_size=2**31)
  cases["zip_encrypted_flag"] = _patch_central(stored, b"archive/data.pkl",
                                               flags=1)
  cases["zip_unknown_method"] = _patch_central(stored, b"archive/data.pkl",
                                               method=99)
  rng = np.random.default_rng(0)
  cases["random_bytes"] = rng.bytes(1024)
  cases["random_after_zip_magic"] = b"PK\x03\x04" + rng.bytes(1024)
  cases["random_after_pickle_magic"] = pickle.dumps(_MAGIC, 2) + rng.bytes(512)
  cases["empty"] = b""
  return cases


# ----------------------------------------------------------------------------
# ScribbleSup XML.

_POLY = ("<polygon><tag>{tag}</tag><point><X>{x}</X><Y>{y}</Y></point>"
         "</polygon>")


def xml_cases(secret: str = "/etc/hostname") -> dict[str, bytes]:
  """Name -> bytes of every hostile ScribbleSup XML (each must be rejected).

  Args:
    secret: a local file the external-entity cases try to read.
  """
  good = _POLY.format(tag="cat", x=1, y=2)
  laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in
                   range(1, 10))
  return {k: v.encode() if isinstance(v, str) else v for k, v in {
      "billion_laughs": (f'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY l0 '
                         f'"lol">{laughs}]><annotation><polygon><tag>&l9;'
                         "</tag></polygon></annotation>"),
      "quadratic_blowup": (f'<!DOCTYPE a [<!ENTITY x "{"x" * 2000}">]>'
                           f'<annotation><filename>{"&x;" * 2000}'
                           f"</filename>{good}</annotation>"),
      "xxe_file": (f'<!DOCTYPE a [<!ENTITY x SYSTEM "file://{secret}">]>'
                   f"<annotation><filename>&x;</filename>{good}</annotation>"),
      "xxe_parameter": (f'<!DOCTYPE a [<!ENTITY % x SYSTEM "file://{secret}">'
                        f"%x;]><annotation>{good}</annotation>"),
      "external_dtd": ('<!DOCTYPE a SYSTEM "http://127.0.0.1:1/x.dtd">'
                       f"<annotation>{good}</annotation>"),
      "doctype_only": f"<!DOCTYPE annotation><annotation>{good}</annotation>",
      "malformed": "<annotation><polygon><tag>cat</tag>",
      "not_xml": "hello, world",
      "empty": "",
      "binary": bytes(range(256)),
      "wrong_root": f"<notes>{good}</notes>",
      "unknown_tag": _POLY.format(tag="unicorn", x=1, y=2).join(
          ["<annotation>", "</annotation>"]),
      "missing_tag": ("<annotation><polygon><point><X>1</X><Y>2</Y></point>"
                      "</polygon></annotation>"),
      "no_points": "<annotation><polygon><tag>cat</tag></polygon></annotation>",
      "x_not_numeric": _POLY.format(tag="cat", x="abc", y=2).join(
          ["<annotation>", "</annotation>"]),
      "y_missing": ("<annotation><polygon><tag>cat</tag><point><X>1</X>"
                    "</point></polygon></annotation>"),
      "x_nan": _POLY.format(tag="cat", x="nan", y=2).join(
          ["<annotation>", "</annotation>"]),
      "x_inf": _POLY.format(tag="cat", x="inf", y=2).join(
          ["<annotation>", "</annotation>"]),
      "x_huge": _POLY.format(tag="cat", x="1e400", y=2).join(
          ["<annotation>", "</annotation>"]),
      "x_nested_element": _POLY.format(tag="cat", x="<b>1</b>", y=2).join(
          ["<annotation>", "</annotation>"]),
      "deep_nesting": "<a>" * 1000 + "</a>" * 1000,
  }.items()}


# ----------------------------------------------------------------------------
# Scribble PNGs.

def png(array: np.ndarray) -> bytes:
  bio = io.BytesIO()
  Image.fromarray(array).save(bio, "PNG")
  return bio.getvalue()


def png_bomb(width: int, height: int, bit_depth: int = 1) -> bytes:
  """A valid grey PNG header claiming ``width`` x ``height`` pixels, with
  an image stream of a few rows (readers must refuse it before decoding)."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
  ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
  rows = zlib.compress(bytes(4 * (1 + (width * bit_depth + 7) // 8)))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
          chunk(b"IDAT", rows) + chunk(b"IEND", b""))


#: Height and width every PNG case is checked against (those of the photo).
PNG_SHAPE = (6, 8)


def png_cases() -> dict[str, bytes]:
  """Name -> bytes of every hostile scribble PNG of :data:`PNG_SHAPE`."""
  h, w = PNG_SHAPE
  good = np.full((h, w), 255, np.uint8)
  good[1, 1:4], good[4, 2:6] = 0, 1
  valid = png(good)
  rng = np.random.default_rng(1)
  values = good.copy()
  values[2, 2] = 77
  return {
      "random_bytes": rng.bytes(512),
      "png_magic_then_random": b"\x89PNG\r\n\x1a\n" + rng.bytes(256),
      "truncated_half": valid[:len(valid) // 2],
      "truncated_in_pixels": valid[:-30],
      "empty": b"",
      "rgb": png(np.stack([good] * 3, -1)),
      "rgba": png(np.stack([good] * 4, -1)),
      "mode_i16": png(good.astype(np.uint16) * 200),
      "mode_1": png(good > 128),
      "wrong_size": png(good[:, :-1]),
      "transposed": png(np.ascontiguousarray(good.T)),
      "class_out_of_range": png(values),
      "decompression_bomb": png_bomb(200_000, 200_000),
      "bomb_warning_size": png_bomb(12_000, 12_000),
  }


def main() -> None:
  """Writes every case under ``tests/fuzz_corpus/{torch,xml,png}/``."""
  for sub, cases, ext in (("torch", torch_cases(), "pth"),
                          ("xml", xml_cases(), "xml"),
                          ("png", png_cases(), "png")):
    folder = HERE / sub
    folder.mkdir(exist_ok=True)
    for old in folder.glob(f"*.{ext}"):
      old.unlink()
    for name, data in cases.items():
      (folder / f"{name}.{ext}").write_bytes(data)
  total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
  print(f"wrote {HERE} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
  main()
