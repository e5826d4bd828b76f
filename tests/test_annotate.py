"""The annotation server's API (potts_jax.tools.annotate): refusals, solving,
atomic saving, restoring, and a saved folder that prepares and trains."""

import base64
import http.client
import io
import json
import pathlib
import socket
import subprocess
import sys
import threading

import numpy as np
from PIL import Image
import pytest

from potts_jax.tools import annotate
from potts_jax import files
from potts_jax.tools import annotate_io
from potts_jax.tools import annotate_server
from potts_jax.tools import annotate_workspace
from tests.conftest import REPO

W, H = 48, 36
NAMES = ("a", "b", "c")
OPTIONS = dict(num_steps=40)


def _photo(seed: int) -> np.ndarray:
  """``[H, W, 3]`` uint8: a blue left half, a red right half, noise."""
  rng = np.random.default_rng(seed)
  image = np.zeros((H, W, 3), np.float64)
  image[:, :W // 2] = (40, 60, 180)
  image[:, W // 2:] = (200, 50, 40)
  image += rng.normal(0, 12, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def _strokes() -> np.ndarray:
  raster = np.full((H, W), 255, np.uint8)
  raster[8:11, 4:18] = 0
  raster[20:23, 30:44] = 1
  return raster


@pytest.fixture
def photos(tmp_path) -> pathlib.Path:
  folder = tmp_path / "photos"
  folder.mkdir()
  for seed, name in enumerate(NAMES):
    Image.fromarray(_photo(seed)).save(folder / f"{name}.png")
  (folder / "notes.txt").write_text("not a photo")
  (folder / "broken.jpg").write_bytes(b"not a JPEG either")
  return folder


def _serve(photos, out, classes=annotate_workspace.DEFAULT_CLASSES, **kw):
  ws = annotate_workspace.Workspace(photos, out, classes, max_size=W,
                                    options=OPTIONS)
  server = annotate_server.AnnotateServer(ws, "127.0.0.1", 0, quiet=True,
                                          **kw)
  server.serve_in_thread()
  return server


@pytest.fixture
def server(photos, tmp_path):
  server = _serve(photos, tmp_path / "out")
  yield server
  server.shutdown()
  server.server_close()


def _call(server, method, path, body=None, headers=None):
  """``(status, parsed JSON or bytes, content type)``."""
  conn = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
  if body is not None and not isinstance(body, bytes):
    body = json.dumps(body).encode()
  headers = {"Content-Type": "application/json", **(headers or {})}
  conn.request(method, path, body=body, headers=headers if body else {})
  response = conn.getresponse()
  data, ctype = response.read(), response.getheader("Content-Type")
  conn.close()
  return (response.status, json.loads(data) if ctype == "application/json"
          else data, ctype)


def _runs(raster):
  return {"width": raster.shape[1], "height": raster.shape[0],
          "runs": annotate_io.encode_runs(raster)}


def _png(array, mode="L"):
  buf = io.BytesIO()
  Image.fromarray(array, mode).save(buf, "PNG")
  return {"png": base64.b64encode(buf.getvalue()).decode()}


def test_listing_page_and_photo_bytes(server, photos):
  status, listing, _ = _call(server, "GET", "/api/images")
  assert status == 200
  assert [r["name"] for r in listing["images"]] == list(NAMES)
  assert (listing["total"], listing["labelled"]) == (3, 0)
  assert listing["classes"] == ["background", "foreground"]
  assert list(listing["skipped"]) == ["broken"]  # notes.txt: not listed.
  assert listing["images"][0] == dict(name="a", width=W, height=H,
                                      labelled=False)
  status, data, ctype = _call(server, "GET", "/api/image/a")
  assert (status, ctype) == (200, "image/png")
  assert data == (photos / "a.png").read_bytes()
  for path in ("/", "/static/annotate.js", "/static/annotate.css"):
    status, data, _ = _call(server, "GET", path)
    assert status == 200 and len(data) > 100
  assert b"/static/annotate.js" in _call(server, "GET", "/")[1]


def test_exif_turned_jpegs_are_sent_as_stored(tmp_path):
  # A browser would turn this JPEG; the dataset reads it unturned.
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90° clockwise"
  Image.fromarray(_photo(0)).save(tmp_path / "turned.jpg", exif=exif)
  Image.fromarray(_photo(1)).save(tmp_path / "plain.jpg")
  ws = annotate_workspace.Workspace(tmp_path, tmp_path / "out")
  data, ctype = ws.image_bytes("turned")
  assert ctype == "image/png" and Image.open(io.BytesIO(data)).size == (W, H)
  data, ctype = ws.image_bytes("plain")
  assert (ctype, data) == ("image/jpeg", (tmp_path / "plain.jpg").read_bytes())


BAD_GETS = [
    ("/api/image/../secret", 400, "name"),
    ("/api/image/..%2F..%2Fetc%2Fpasswd", 400, "name"),
    ("/api/image/sub%2Fa", 400, "name"),
    ("/api/image/.hidden", 400, "name"),
    ("/api/image/", 400, "name"),
    ("/api/image/nothing", 404, "name"),
    ("/api/image/notes", 404, "name"),  # a file that is no photo
    ("/api/image/broken", 415, "name"),  # a .jpg PIL cannot read
    ("/api/scribbles/..", 400, "name"),
    ("/api/scribbles/nothing", 404, "name"),
    ("/static/..%2Fannotate.py", 404, "path"),
    ("/static/annotate_server.py", 404, "path"),
    ("/etc/passwd", 404, "path"),
    ("/api/solve", 405, "method"),
]


@pytest.mark.parametrize("path,status,field", BAD_GETS)
def test_bad_gets_are_refused(server, path, status, field):
  got, body, ctype = _call(server, "GET", path)
  assert (got, ctype, body["field"]) == (status, "application/json", field)
  assert body["error"].startswith(f"{field}:"), body["error"]


def _bad_posts():
  ok = _runs(_strokes())
  rgb = _png(np.zeros((H, W, 3), np.uint8), "RGB")
  other_size = _runs(np.full((H, W + 1), 255, np.uint8))
  unknown = _strokes()
  unknown[0, 0] = 7
  return [
      (b"{name: 1", 400, "body", "malformed JSON"),
      (b"[1, 2]", 400, "body", "expected a JSON object"),
      ({"scribbles": ok}, 400, "name", "missing"),
      ({"name": "../a", "scribbles": ok}, 400, "name", "path component"),
      ({"name": "x/a", "scribbles": ok}, 400, "name", "path component"),
      ({"name": 5, "scribbles": ok}, 400, "name", "non-empty string"),
      ({"name": "zzz", "scribbles": ok}, 404, "name", "no image"),
      ({"name": "notes", "scribbles": ok}, 404, "name", "no image"),
      ({"name": "broken", "scribbles": ok}, 415, "name", "not an image"),
      ({"name": "a"}, 400, "scribbles", "missing"),
      ({"name": "a", "scribbles": [1, 2]}, 400, "scribbles", "either"),
      ({"name": "a", "scribbles": {**ok, **_png(_strokes())}}, 400,
       "scribbles", "either"),
      ({"name": "a", "scribbles": other_size}, 422, "scribbles",
       f"expected the photo's {W}x{H}"),
      ({"name": "a", "scribbles": _png(np.zeros((H + 2, W), np.uint8))},
       422, "scribbles", f"expected the photo's {W}x{H}"),
      ({"name": "a", "scribbles": dict(ok, width="48")}, 400,
       "scribbles.width", "positive integer"),
      ({"name": "a", "scribbles": dict(ok, runs=ok["runs"][:-2])}, 422,
       "scribbles.runs", "add up to"),
      ({"name": "a", "scribbles": dict(ok, runs=[255, "x"])}, 400,
       "scribbles.runs", "flat list of integers"),
      ({"name": "a", "scribbles": dict(ok, runs=[255, 0] + ok["runs"])}, 400,
       "scribbles.runs", ">= 1"),
      ({"name": "a", "scribbles": _runs(unknown)}, 422, "scribbles",
       "unknown class ids [7]; expected 0..1 or 255"),
      ({"name": "a", "scribbles": {"png": "%%%"}}, 422, "scribbles.png",
       "not a base64 PNG"),
      ({"name": "a", "scribbles": {"png": base64.b64encode(b"GIF89a")
                                   .decode()}}, 422, "scribbles.png",
       "not a base64 PNG"),
      ({"name": "a", "scribbles": rgb}, 422, "scribbles.png",
       "single-channel PNG"),
      ({"name": "a", "scribbles": _runs(np.full((H, W), 255, np.uint8))},
       422, "scribbles", "nothing is scribbled"),
  ]


@pytest.mark.parametrize("endpoint", ["/api/solve", "/api/save"])
def test_bad_posts_are_refused(server, endpoint):
  for body, status, field, words in _bad_posts():
    got, answer, _ = _call(server, "POST", endpoint, body)
    assert (got, answer["field"]) == (status, field), (body, answer)
    assert answer["error"].startswith(f"{field}:") and words in answer[
        "error"], answer["error"]
  assert not (server.workspace.out / "scribbles").exists()


def test_bad_requests_at_the_http_level(photos, tmp_path):
  server = _serve(photos, tmp_path / "out", max_body=4096)
  try:
    body = {"name": "a", "scribbles": _runs(_strokes()), "pad": "x" * 5000}
    status, answer, _ = _call(server, "POST", "/api/solve", body)
    assert (status, answer["field"]) == (413, "body")
    assert "expected at most 4096" in answer["error"]
    status, answer, _ = _call(server, "POST", "/api/solve", b"{}",
                              {"Content-Type": "text/plain"})
    assert (status, answer["field"]) == (415, "Content-Type")
    status, answer, _ = _call(server, "PUT", "/api/save", b"{}")
    assert (status, answer["field"]) == (405, "method")
    with socket.create_connection(server.server_address[:2], timeout=30) as s:
      s.sendall(b"POST /api/solve HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n\r\n")
      head = s.recv(65536).decode()
    assert head.startswith("HTTP/1.1 411") and "Content-Length" in head
  finally:
    server.shutdown()
    server.server_close()


def _data_url_png(url: str) -> Image.Image:
  assert url.startswith("data:image/png;base64,")
  return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_solve_save_and_restore(server, photos):
  strokes = _strokes()
  for scribbles in (_runs(strokes), _png(strokes)):
    status, answer, _ = _call(server, "POST", "/api/solve",
                              {"name": "a", "scribbles": scribbles})
    assert status == 200, answer
    assert (answer["work_width"], answer["work_height"]) == (W, H)
    assert np.isfinite(answer["energy"]) and answer["seconds"] > 0
    mask = np.asarray(_data_url_png(answer["mask"]))
    assert mask.shape == (H, W) and answer["classes_in_mask"] == [0, 1]
    np.testing.assert_array_equal(mask[strokes != 255], strokes[strokes != 255])
    assert (mask[:, :W // 2] == 0).mean() > 0.9 and (mask[:, W // 2:] == 1
                                                      ).mean() > 0.9
    assert _data_url_png(answer["soft"]).size == (W, H)
  status, answer, _ = _call(server, "POST", "/api/save",
                            {"name": "a", "scribbles": _runs(strokes)})
  assert status == 200, answer
  assert answer == {"name": "a", "labelled": 1, "total": 3, "files": {
      "image": "images/a.png", "scribbles": "scribbles/set1/a.png",
      "mask": "masks/a.png"}}
  out = server.workspace.out
  assert (out / "images" / "a.png").read_bytes() == (photos / "a.png"
                                                     ).read_bytes()
  saved = Image.open(out / "scribbles" / "set1" / "a.png")
  assert saved.mode == "L"
  np.testing.assert_array_equal(np.asarray(saved), strokes)
  mask = Image.open(out / "masks" / "a.png")
  assert mask.mode == "L" and mask.size == (W, H)
  assert set(np.unique(np.asarray(mask)).tolist()) == {0, 1}
  assert (out / "classes.txt").read_text() == "background\nforeground\n"
  assert (out / "index.tsv").read_text() == (
      f"name\twidth\theight\tset1_labeled\na\t{W}\t{H}\t"
      f"{(strokes != 255).sum()}\n")
  assert _call(server, "GET", "/api/images")[1]["labelled"] == 1
  status, answer, _ = _call(server, "GET", "/api/scribbles/a")
  assert status == 200 and answer["saved"] is True
  restored = np.repeat(*np.asarray(answer["runs"]).reshape(-1, 2).T)
  np.testing.assert_array_equal(restored.reshape(H, W), strokes)
  assert not list(out.rglob("*.tmp"))
  # Reopened (a new server on the same folders): the strokes come back.
  again = _serve(photos, out)
  try:
    answer = _call(again, "GET", "/api/scribbles/a")[1]
    assert answer["saved"] is True
    assert answer["runs"] == annotate_io.encode_runs(strokes)
    unsaved = _call(again, "GET", "/api/scribbles/b")[1]
    assert unsaved["saved"] is False and unsaved["runs"] == [255, W * H]
  finally:
    again.shutdown()
    again.server_close()


def test_writes_are_atomic(server, tmp_path):
  path = tmp_path / "file.bin"
  files.atomic_write(path, lambda f: f.write(b"old"))

  def broken(f):
    f.write(b"half of the new")
    raise OSError("disk full")

  with pytest.raises(OSError, match="disk full"):
    files.atomic_write(path, broken)
  assert path.read_bytes() == b"old"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin", "photos"]
  # Two tabs saving the same photo at once: the file is one of the two
  # rasters, whole; the index holds one row for it.
  rasters = []
  for k in range(6):
    r = _strokes()
    r[30, k:k + 6] = k % 2
    rasters.append(r)
  errors = []

  def save(raster):
    status, answer, _ = _call(server, "POST", "/api/save",
                              {"name": "b", "scribbles": _runs(raster)})
    if status != 200:
      errors.append(answer)

  threads = [threading.Thread(target=save, args=(r,)) for r in rasters]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=120)
  assert not errors
  out = server.workspace.out
  saved = np.asarray(Image.open(out / "scribbles" / "set1" / "b.png"))
  assert any((saved == r).all() for r in rasters)
  assert (out / "index.tsv").read_text().count("\nb\t") == 1
  assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_classes(photos, tmp_path):
  out = tmp_path / "out"
  assert annotate.read_class_names(None, out, 2) == ["background",
                                                     "foreground"]
  assert annotate.read_class_names(None, out, 3) == ["class 0", "class 1",
                                                     "class 2"]
  listing = tmp_path / "classes.txt"
  listing.write_text("sky\nroad\n\ncar\n")
  assert annotate.read_class_names(str(listing), out, 2) == ["sky", "road",
                                                             "car"]
  server = _serve(photos, out, ["sky", "road", "car"])
  try:
    strokes = _strokes()
    strokes[0, :3] = 2
    assert _call(server, "POST", "/api/save",
                 {"name": "c", "scribbles": _runs(strokes)})[0] == 200
    strokes[0, 0] = 3
    status, answer, _ = _call(server, "POST", "/api/solve",
                              {"name": "c", "scribbles": _runs(strokes)})
    assert status == 422 and "expected 0..2 or 255" in answer["error"]
  finally:
    server.shutdown()
    server.server_close()
  # Reopened without --classes: OUT/classes.txt names them.
  assert annotate.read_class_names(None, out, 2) == ["sky", "road", "car"]
  listing.write_text("sky\nroad\n")
  with pytest.raises(ValueError, match="expected the same classes"):
    annotate.read_class_names(str(listing), out, 2)


def test_command_line_errors_name_the_folder(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "potts_jax.tools.annotate", "--images",
       str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  assert f"--images: folder {tmp_path / 'missing'} not found" in proc.stderr


@pytest.mark.slow
def test_saved_folder_prepares_and_trains(server, tmp_path):
  from potts_jax import train  # pylint: disable=g-import-not-at-top
  from potts_jax.data.builders import folder_builder  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO))
  from configs import demo  # pylint: disable=g-import-not-at-top
  for name in NAMES:
    assert _call(server, "POST", "/api/save",
                 {"name": name, "scribbles": _runs(_strokes())})[0] == 200
  out = server.workspace.out
  data_dir = tmp_path / "tfds"
  builder = folder_builder.prepare(out, data_dir, name="annotated",
                                   scribble_set="set1")
  train_split = builder.as_data_source("train")
  assert len(train_split) == 3
  assert builder.info.metadata["classes"] == ["background", "foreground"]
  example = train_split[0]
  assert example["image"].shape == (H, W, 3)
  np.testing.assert_array_equal(example["scribbles"][..., 0], _strokes())

  c = demo.get_config("runlocal")
  c.input.update(dataset="folder", folder_root=str(out),
                 dataset_config="annotated", data_dir=str(data_dir),
                 scribble_set="set1", train_split="train", crop_size=32)
  c.eval.split = "train"
  c.total_steps, c.stages = 1, ()
  c.loss.method, c.figure, c.image_every = "pce", False, 0
  record = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert record["step"] == 1 and 0.0 <= record["miou"] <= 1.0
