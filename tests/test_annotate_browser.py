"""The annotation page in a real headless browser (Debian's chromium).

Playwright drives the system ``chromium`` (no browser download): a
foreground and a background stroke are drawn along the real set-1 scribbles
of a GrabCut photo, the overlay comes back, ``s`` saves, and the saved
strokes and mask are checked against the drawing and against
:func:`potts_jax.tools.segment.segment` on the same saved strokes.

Without chromium or Playwright the test is skipped, except when ``CI`` or
``POTTS_JAX_REQUIRE_BROWSER=1`` is set (``make test`` sets it): then it
fails. ``POTTS_JAX_ANNOTATE_SCREENSHOT=PATH`` also writes a screenshot of
the page (docs/images/annotate.png is one).
"""

import importlib.util
import os
import shutil

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
from skimage import morphology

from potts_jax.data import folder
from potts_jax.tools import annotate_server
from potts_jax.tools import annotate_workspace
from potts_jax.tools import segment
from potts_jax.tools import segment_benchmark

NAME = "124084"
MAX_SIZE = 240
# Two strokes on the background, far from the real strokes: undone, erased.
STRAY = ([(x, 300) for x in range(380, 441, 4)],
         [(x, 280) for x in range(380, 441, 4)])


def _browser_required() -> bool:
  ci = os.environ.get("CI", "").strip().lower()
  return (ci not in ("", "0", "false", "no")
          or os.environ.get("POTTS_JAX_REQUIRE_BROWSER") == "1")


def _chromium() -> str:
  """The system chromium; skips, or fails where the browser is required."""
  path = shutil.which("chromium") or shutil.which("chromium-browser")
  problem = None
  if path is None:
    problem = ("no chromium on PATH (`apt-get install -y --no-install-"
               "recommends chromium`, as `make test` does)")
  elif importlib.util.find_spec("playwright") is None:
    problem = "playwright is not installed (pip install -e '.[dev]')"
  if problem:
    if _browser_required():
      pytest.fail(f"browser test required (CI / POTTS_JAX_REQUIRE_BROWSER) "
                  f"but {problem}")
    pytest.skip(problem)
  return path


def _strokes(scribbles: np.ndarray, value: int, step: int = 2
             ) -> list[list[tuple[int, int]]]:
  """Paths ``[(x, y), ...]`` along the skeleton of the pixels of ``value``:
  a greedy nearest-neighbour walk, a new path at every gap over 3 px."""
  points = np.argwhere(morphology.skeletonize(scribbles == value))[:, ::-1]
  left = np.ones(len(points), bool)
  paths, current = [], [0]
  left[0] = False
  while left.any():
    d = np.abs(points - points[current[-1]]).max(-1).astype(float)
    d[~left] = np.inf
    nxt = int(d.argmin())
    if d[nxt] > 3:
      paths.append(current)
      current = []
    current.append(nxt)
    left[nxt] = False
  paths.append(current)
  return [[tuple(points[i]) for i in path[::step] + path[-1:]]
          for path in paths if len(path) >= 4]


def _draw(page, paths, scale_box):
  left, top, scale = scale_box
  for path in paths:
    xs = [(left + (x + 0.5) * scale, top + (y + 0.5) * scale) for x, y in path]
    page.mouse.move(*xs[0])
    page.mouse.down()
    for point in xs[1:]:
      page.mouse.move(*point)
    page.mouse.up()


def _settled(page, solves: int) -> None:
  page.wait_for_function(
      f"document.body.dataset.solves >= {solves} && "
      "document.body.dataset.pending === '0' && "
      "document.body.dataset.busy === '0'", timeout=30_000)


def test_draw_solve_save_in_chromium(shared_data, tmp_path):
  chromium = _chromium()
  from playwright.sync_api import sync_playwright  # pylint: disable=g-import-not-at-top
  root = shared_data / "grabcut"
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in (NAME, "153077"):
    src = folder.image_path(root, name)
    shutil.copyfile(src, photos / src.name)
  out = tmp_path / "out"
  ws = annotate_workspace.Workspace(photos, out, max_size=MAX_SIZE)
  ws.warm_up()
  server = annotate_server.AnnotateServer(ws, "127.0.0.1", 0, quiet=True)
  server.serve_in_thread()
  reference = np.asarray(
      Image.open(root / "scribbles" / "set1" / f"{NAME}.png"))
  fg, bg = _strokes(reference, 1), _strokes(reference, 0)
  assert fg and bg
  try:
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=chromium, headless=True,
                                  args=["--no-sandbox"])
      page = browser.new_page(viewport={"width": 1100, "height": 560})
      page.goto(f"{server.url}#{NAME}")
      page.wait_for_function("document.body.dataset.ready === '1'")
      assert page.text_content("#count") == "labelled 0 / 2"
      box = page.locator("#view").bounding_box()
      scale = box["width"] / reference.shape[1]
      page.keyboard.press("2")  # foreground
      _draw(page, fg, (box["x"], box["y"], scale))
      page.keyboard.press("1")  # background
      _draw(page, bg, (box["x"], box["y"], scale))
      _settled(page, 1)
      assert page.text_content("#energy").startswith("energy ")
      assert "solve " in page.text_content("#timing")
      if os.environ.get("POTTS_JAX_ANNOTATE_SCREENSHOT"):
        page.screenshot(path=os.environ["POTTS_JAX_ANNOTATE_SCREENSHOT"])
      # A stray stroke undone, another erased (eraser 3 px wider).
      page.keyboard.press("2")
      _draw(page, [STRAY[0]], (box["x"], box["y"], scale))
      page.keyboard.press("u")
      _draw(page, [STRAY[1]], (box["x"], box["y"], scale))
      page.keyboard.press("e")
      for _ in range(3):
        page.keyboard.press("]")
      _draw(page, [STRAY[1]], (box["x"], box["y"], scale))
      _settled(page, 2)
      assert page.text_content("#state") == "unsaved"
      page.keyboard.press("s")
      page.wait_for_function("document.body.dataset.saves === '1'")
      assert page.text_content("#count") == "labelled 1 / 2"
      assert page.text_content("#state") == "saved"
      # Reloaded, the page restores the saved strokes and solves them.
      page.reload()
      page.wait_for_function("document.body.dataset.ready === '1'")
      _settled(page, 1)
      assert page.text_content("#name").startswith(NAME)
      assert page.text_content("#count") == "labelled 1 / 2"
      browser.close()
  finally:
    server.shutdown()
    server.server_close()

  saved = np.asarray(Image.open(out / "scribbles" / "set1" / f"{NAME}.png"))
  assert saved.shape == reference.shape
  assert (saved[270:310, 370:450] == 255).all()  # undone and erased
  assert set(np.unique(saved).tolist()) == {0, 1, 255}
  for value, paths in ((1, fg), (0, bg)):
    for x, y in (pt for path in paths for pt in path):
      assert saved[y, x] == value, (x, y, value)
  # The drawn strokes lie on the reference strokes, widened by a pixel.
  near = ndimage.binary_dilation(reference != 255, np.ones((5, 5), bool))
  assert (near[saved != 255]).mean() > 0.99

  truth = np.asarray(Image.open(root / "masks" / f"{NAME}.png"), np.int32)
  mask = np.asarray(Image.open(out / "masks" / f"{NAME}.png"), np.int32)
  err_page, _ = segment_benchmark.error_and_iou(mask, truth)
  ex = folder.load_example(out, NAME, scribble_set="set1", long_side=MAX_SIZE)
  pred = segment.segment(ex.image, ex.scribbles, 2)[1]
  pred = np.asarray(Image.fromarray(pred.astype(np.uint8)).resize(
      mask.shape[::-1], Image.NEAREST), np.int32)
  err_segment, _ = segment_benchmark.error_and_iou(pred, truth)
  assert abs(err_page - err_segment) <= 2.0, (err_page, err_segment)
  assert err_page < 15.0
