r"""A local annotation page: scribbles drawn in a browser, masks by the solver.

Run::

  python -m potts_jax.tools.annotate --images PHOTOS --out DATASET \
      [--classes classes.txt] [--port 8000] [--host 127.0.0.1]

and open the printed address. The page (plain JS and canvas, served from
``annotate_static/``, nothing loaded from elsewhere) shows the photos of
``--images`` one after another; strokes of the chosen class are drawn with
mouse or pen, and ~300 ms after each stroke the solver's soft labels come
back as a translucent overlay, with the hard mask, its energy and solve time.
Keys: ``1``-``9`` class, ``e`` eraser, ``u`` / Ctrl+Z undo, ``[`` / ``]``
stroke width (3 px by default), ``o`` overlay (soft / mask / none), ``s``
save, ``n`` / ArrowRight next, ``p`` / ArrowLeft previous. docs/annotate.md
has a screenshot.

Classes: ``--classes`` (one name a line), else ``OUT/classes.txt`` when it
exists, else ``--num_classes`` (2: background, foreground; otherwise
"class 0".."class K-1").

Solving: the options of :mod:`potts_jax.tools.segment` are flags here with
the same names and defaults (``--unary``, ``--lam``, ``--sigma_rgb``,
``--neighborhood``, ``--num_steps``, ...). Each photo is solved with the long
side reduced to ``--max_size`` (240 by default: under a second on 2 CPU
cores) and padded to ``max_size x max_size`` with padding labels, so the
one program compiled at start-up serves every photo; the mask is upsampled
nearest (:mod:`potts_jax.tools.annotate_workspace`).

Saving (key ``s``) writes, each file atomically (temporary file + rename,
one lock per photo), the layout read by :mod:`potts_jax.data.folder` and the
``folder`` builder (``python -m potts_jax.data.prepare --dataset=folder
--root=OUT``)::

  OUT/images/<name>.<ext>          the photo (hard link, else a copy)
  OUT/scribbles/<set>/<name>.png   'L': class ids, 255 unlabeled (--set)
  OUT/masks/<name>.png             'L': the solver's mask (--nowrite_masks:
                                   none; the builder then needs masks)
  OUT/classes.txt                  one class name a line
  OUT/index.tsv                    name, width, height, <set>_labeled: the
                                   saved photos (the builder's split train)

Reopening restores the saved strokes of ``OUT/scribbles/<set>/``.

JSON API (scribbles as in :mod:`potts_jax.tools.annotate_io`: ``{"width":
W, "height": H, "runs": [v, n, ...]}`` row-major runs, or ``{"png":
BASE64}`` single-channel PNG, always of the photo's full size, values
``0..K-1`` or 255):

- ``GET /api/images``: ``{"images": [{"name", "width", "height",
  "labelled"}], "total", "labelled", "classes", "colours", "set",
  "max_size", "skipped": {name: reason}, "options"}``.
- ``GET /api/image/<name>``: the photo's bytes (JPEG/PNG as stored; other
  formats converted to PNG).
- ``GET /api/scribbles/<name>``: ``{"name", "width", "height", "saved",
  "runs"}``, the saved strokes (all 255 when none).
- ``POST /api/solve`` ``{"name", "scribbles"}``: ``{"name", "energy",
  "seconds", "work_width", "work_height", "classes_in_mask", "soft", "mask"}``
  (``soft``: colours mixed by probability, ``mask``: palette PNG, both
  ``data:`` URLs at the working size).
- ``POST /api/save`` ``{"name", "scribbles"}``: ``{"name", "labelled",
  "total", "files": {"image", "scribbles", "mask"}}`` (paths under OUT).

Refusals, each ``{"error": MESSAGE, "field": FIELD}``: 400 malformed JSON,
missing or mistyped fields, names with a path component, ``..`` or a leading
dot; 404 unknown names and paths; 405 other methods; 409 a saved file that
does not fit; 411 no Content-Length; 413 bodies over ``--max_body_mb``; 415
non-JSON bodies and files of the folder that are not readable images; 422
scribbles of the wrong size, unknown class ids, nothing scribbled, bad PNGs.
The server listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app
from absl import flags

from potts_jax import xla_flags
from potts_jax.tools import annotate_server
from potts_jax.tools import annotate_workspace
from potts_jax.tools import segment


def read_class_names(classes: str | None, out: pathlib.Path,
                     num_classes: int) -> list[str]:
  """Class names: ``classes`` file, else ``out/classes.txt``, else defaults.

  Raises:
    ValueError: when ``classes`` and ``out/classes.txt`` disagree.
  """
  saved = out / "classes.txt"
  if classes:
    names = annotate_workspace.read_classes(pathlib.Path(classes))
    if saved.is_file() and annotate_workspace.read_classes(saved) != names:
      raise ValueError(f"--classes {classes} lists {names}, but {saved} "
                       f"lists {annotate_workspace.read_classes(saved)}; "
                       "expected the same classes")
    return names
  if saved.is_file():
    return annotate_workspace.read_classes(saved)
  if num_classes == 2:
    return list(annotate_workspace.DEFAULT_CLASSES)
  if not 1 <= num_classes <= segment.MAX_CLASSES:
    raise ValueError(f"--num_classes={num_classes}; expected 1.."
                     f"{segment.MAX_CLASSES}")
  return [f"class {k}" for k in range(num_classes)]


def _define_flags() -> None:
  """The command's flags (defined when run, never on import)."""
  f = flags
  f.DEFINE_string("images", None, "Folder of photos to annotate.")
  f.DEFINE_string("out", None, "Dataset folder written on save.")
  f.DEFINE_string("classes", None, "Class names, one a line.")
  f.DEFINE_integer("num_classes", 2, "K without --classes or OUT/classes.txt.")
  f.DEFINE_string("set", "set1", "Scribble set: OUT/scribbles/<set>/.")
  f.DEFINE_boolean("write_masks", True, "Write OUT/masks/<name>.png on save.")
  f.DEFINE_string("host", "127.0.0.1", "Address to listen on.")
  f.DEFINE_integer("port", 8000, "Port (0: any free one).")
  f.DEFINE_integer("max_size", 240, "Working size: long side solved (px).")
  f.DEFINE_float("max_body_mb", 16.0, "Largest request body (MiB).")
  f.DEFINE_boolean("warm_up", True, "Compile the solver before serving.")
  segment.define_option_flags()  # The solver options of segment.


def build_server(fv) -> annotate_server.AnnotateServer:
  """The server the flags describe (``fv``: parsed absl flags)."""
  out = pathlib.Path(fv.out)
  classes = read_class_names(fv.classes, out, fv.num_classes)
  options = segment.option_values()
  workspace = annotate_workspace.Workspace(
      fv.images, out, classes, scribble_set=fv.set,
      write_masks=fv.write_masks, max_size=fv.max_size, options=options)
  return annotate_server.AnnotateServer(
      workspace, fv.host, fv.port, max_body=int(fv.max_body_mb * 2**20))


def main(argv: list[str]) -> None:
  """Serves the page until interrupted."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  fv = flags.FLAGS
  if not fv.images or not fv.out:
    raise app.UsageError("give --images PHOTOS and --out DATASET")
  try:
    server = build_server(fv)
  except (ValueError, FileNotFoundError, OSError) as e:
    sys.exit(f"error: {e}")
  ws = server.workspace
  print(f"{ws.images}: {len(ws.photos)} photos ({len(ws.skipped)} unreadable"
        f" skipped), {ws.num_classes} classes {ws.classes}, saving to "
        f"{ws.out}", flush=True)
  if fv.warm_up:
    seconds = ws.warm_up()
    print(f"solver compiled for {fv.max_size}x{fv.max_size} in "
          f"{seconds:.1f} s", flush=True)
  print(f"annotate: open {server.url} (Ctrl+C stops)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


if __name__ == "__main__":
  xla_flags.prefer_threaded_cpu_loops()
  _define_flags()
  app.run(main)
