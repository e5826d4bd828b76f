"""The HTTP server of the annotation page: ``http.server`` and JSON only.

:class:`AnnotateServer` serves the static page of ``annotate_static/`` and
the JSON API documented in :mod:`potts_jax.tools.annotate` on a
:class:`~potts_jax.tools.annotate_workspace.Workspace`. Every refusal is an
HTTP 4xx with the body ``{"error": MESSAGE, "field": FIELD}``, the message
naming the field and what was expected.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import pathlib
import threading
import urllib.parse
from typing import Any, Callable

import numpy as np
from PIL import Image

from potts_jax.plots import viz
from potts_jax.tools import annotate_io
from potts_jax.tools import annotate_workspace
from potts_jax.tools.annotate_io import RequestError

STATIC = pathlib.Path(__file__).with_name("annotate_static")
STATIC_TYPES = {"index.html": "text/html; charset=utf-8",
                "annotate.js": "text/javascript; charset=utf-8",
                "annotate.css": "text/css; charset=utf-8"}
#: Largest request body accepted (bytes); larger ones get 413.
DEFAULT_MAX_BODY = 16 * 2**20
#: A refused body up to this size is read and dropped (so that the client
#: reads the 413 rather than a reset connection); beyond it the server hangs up.
_DRAIN_LIMIT = 64 * 2**20
_GET_ROUTES = ("/", "/index.html", "/static/<file>", "/api/images",
               "/api/image/<name>", "/api/scribbles/<name>")
_POST_ROUTES = ("/api/solve", "/api/save")


def png_data_url(image: Image.Image) -> str:
  """``data:image/png;base64,...`` of ``image``."""
  data = base64.b64encode(annotate_io.png_bytes(image)).decode("ascii")
  return "data:image/png;base64," + data


class AnnotateHandler(http.server.BaseHTTPRequestHandler):
  """One request on the server's workspace (module docstring)."""

  server: AnnotateServer
  server_version = "potts_jax-annotate/1"
  protocol_version = "HTTP/1.1"

  def do_GET(self):  # pylint: disable=invalid-name
    self._dispatch(self._get)

  def do_POST(self):  # pylint: disable=invalid-name
    self._dispatch(self._post)

  def do_PUT(self):  # pylint: disable=invalid-name
    self._dispatch(self._refuse_method)

  do_DELETE = do_PATCH = do_PUT

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    if not self.server.quiet:
      super().log_message(format, *args)

  # --- plumbing --------------------------------------------------------------

  def _dispatch(self, route: Callable[[str], None]) -> None:
    self._body_read = False
    try:
      route(urllib.parse.urlsplit(self.path).path)
    except RequestError as e:
      if self.command != "GET" and not self._body_read:
        self.close_connection = True
      self._send_json(e.status, {"error": str(e), "field": e.field})
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("annotate: %s %s failed", self.command, self.path)
      self.close_connection = True
      self._send_json(500, {"error": f"internal error: {e!r}", "field": None})

  def _send(self, status: int, body: bytes, content_type: str) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")
    if self.close_connection:
      self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(body)

  def _send_json(self, status: int, obj: Any) -> None:
    self._send(status, json.dumps(obj).encode(), "application/json")

  def _refuse_method(self, path: str) -> None:
    raise RequestError(405, "method", f"method: {self.command} is not "
                       f"served; expected GET {', '.join(_GET_ROUTES)} or "
                       f"POST {', '.join(_POST_ROUTES)}")

  def _read_json(self) -> dict[str, Any]:
    """The request body as a JSON object; 411/413/415/400 otherwise."""
    ctype = self.headers.get("Content-Type", "application/json")
    if ctype.split(";")[0].strip().lower() != "application/json":
      raise RequestError(415, "Content-Type", f"Content-Type: {ctype!r}; "
                         "expected application/json")
    length = self.headers.get("Content-Length")
    if length is None:
      raise RequestError(411, "Content-Length", "Content-Length: required "
                         "(a JSON body of known length)")
    try:
      length = int(length)
      if length < 0:
        raise ValueError(length)
    except ValueError:
      raise RequestError(400, "Content-Length", f"Content-Length: {length!r}"
                         "; expected a non-negative integer") from None
    limit = self.server.max_body
    if length > limit:
      if length <= _DRAIN_LIMIT:
        for _ in range(0, length, 2**20):
          self.rfile.read(min(2**20, length))
        self._body_read = True
      raise RequestError(413, "body", f"body: {length} bytes; expected at "
                         f"most {limit} (--max_body_mb)")
    data = self.rfile.read(length)
    self._body_read = True
    try:
      body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
      raise RequestError(400, "body", f"body: malformed JSON ({e}); expected "
                         '{"name": ..., "scribbles": {...}}') from None
    if not isinstance(body, dict):
      raise RequestError(400, "body", "body: expected a JSON object "
                         '{"name": ..., "scribbles": {...}}, got '
                         f"{type(body).__name__}")
    return body

  # --- routes ----------------------------------------------------------------

  def _get(self, path: str) -> None:
    ws = self.server.workspace
    if path in ("/", "/index.html"):
      path = "/static/index.html"
    if path.startswith("/static/"):
      name = urllib.parse.unquote(path[len("/static/"):])
      if name not in STATIC_TYPES:
        raise RequestError(404, "path", f"path: no static file {name!r}; "
                           f"expected one of {sorted(STATIC_TYPES)}")
      self._send(200, (STATIC / name).read_bytes(), STATIC_TYPES[name])
    elif path == "/api/images":
      self._send_json(200, ws.listing())
    elif path.startswith("/api/image/"):
      name = urllib.parse.unquote(path[len("/api/image/"):])
      self._send(200, *ws.image_bytes(name))
    elif path.startswith("/api/scribbles/"):
      name = urllib.parse.unquote(path[len("/api/scribbles/"):])
      raster = ws.saved_scribbles(name)
      self._send_json(200, dict(
          name=name, width=raster.shape[1], height=raster.shape[0],
          saved=ws.scribble_path(name).is_file(),
          runs=annotate_io.encode_runs(raster)))
    elif path in _POST_ROUTES:
      self._refuse_method(path)
    else:
      raise RequestError(404, "path", f"path: no route {path!r}; expected "
                         f"GET {', '.join(_GET_ROUTES)}")

  def _post(self, path: str) -> None:
    if path not in _POST_ROUTES:
      if path.startswith("/api/") or path.startswith("/static/"):
        self._refuse_method(path)
      raise RequestError(404, "path", f"path: no route {path!r}; expected "
                         f"POST {', '.join(_POST_ROUTES)}")
    ws = self.server.workspace
    body = self._read_json()
    if "name" not in body:
      raise RequestError(400, "name", "name: missing; expected the image "
                         "name as listed by GET /api/images")
    photo = ws.photo(body["name"])
    if "scribbles" not in body:
      raise RequestError(400, "scribbles", "scribbles: missing; expected "
                         '{"width", "height", "runs"} or {"png"}')
    raster = annotate_io.decode_scribbles(body["scribbles"], photo.size,
                                          ws.num_classes)
    if path == "/api/save":
      self._send_json(200, ws.save(photo.name, raster))
      return
    result = ws.solve(photo.name, raster)
    mask = Image.fromarray(result["mask"].astype(np.uint8), "P")
    mask.putpalette(ws.colours.reshape(-1).tolist())
    soft = Image.fromarray(viz.colorize(result["y"], ws.colours))
    self._send_json(200, dict(
        name=photo.name, energy=result["energy"],
        seconds=round(result["seconds"], 4), work_width=result["size"][0],
        work_height=result["size"][1],
        classes_in_mask=np.unique(result["mask"]).tolist(),
        soft=png_data_url(soft), mask=png_data_url(mask)))


class AnnotateServer(http.server.ThreadingHTTPServer):
  """A threading HTTP server on a workspace.

  Args:
    workspace: what the API reads and writes.
    host: address to listen on (loopback by default).
    port: port; 0 picks a free one (``server.server_address[1]``).
    max_body: largest request body in bytes.
    quiet: do not log each request to stderr.
  """

  daemon_threads = True

  def __init__(self, workspace: annotate_workspace.Workspace,
               host: str = "127.0.0.1", port: int = 8000, *,
               max_body: int = DEFAULT_MAX_BODY, quiet: bool = False):
    self.workspace, self.max_body, self.quiet = workspace, max_body, quiet
    super().__init__((host, port), AnnotateHandler)

  @property
  def url(self) -> str:
    host, port = self.server_address[:2]
    return f"http://{host}:{port}/"

  def serve_in_thread(self) -> threading.Thread:
    """Starts :meth:`serve_forever` in a daemon thread (stop: ``shutdown``)."""
    thread = threading.Thread(target=self.serve_forever, args=(0.05,),
                              daemon=True, name="annotate-server")
    thread.start()
    return thread
