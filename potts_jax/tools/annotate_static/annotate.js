// The annotation page of potts_jax.tools.annotate: plain JS and a canvas.
//
// Strokes are kept as a raster of the photo's full size (Uint8Array, class
// ids, 255 unlabeled) built from the saved strokes (GET /api/scribbles) and
// the strokes drawn since, each stamped as discs of its width (no
// antialiasing, so every pixel holds one class id). 300 ms after a stroke the
// raster goes to POST /api/solve as a run-length code; the answer's soft
// labels and mask are drawn over the photo.
"use strict";

const UNLABELED = 255;
const SOLVE_DELAY_MS = 300;
const OVERLAYS = ["soft", "mask", "none"];

const $ = (id) => document.getElementById(id);
const view = $("view");
const ctx = view.getContext("2d");
const strokeCanvas = document.createElement("canvas");
const strokeCtx = strokeCanvas.getContext("2d");

const state = {
  images: [], classes: [], colours: [], index: -1, labelled: 0,
  cls: 0, erase: false, width: 3, overlay: "soft", opacity: 0.45,
  page: null,  // the photo on screen (see newPage)
  cache: new Map(),  // name -> page, so that moving on keeps unsaved strokes
  solveTimer: null, solveSeq: 0, shownSeq: 0, solves: 0, saves: 0,
  drawing: null, frame: 0,
};

function message(text, isError = false) {
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body)};
  const response = await fetch(path, init);
  const data = await response.json();
  if (!response.ok) throw new Error(`${response.status}: ${data.error || response.statusText}`);
  return data;
}

// --- rasters ----------------------------------------------------------------

function decodeRuns(runs, size) {
  const raster = new Uint8Array(size);
  let at = 0;
  for (let i = 0; i < runs.length; i += 2) {
    raster.fill(runs[i], at, at + runs[i + 1]);
    at += runs[i + 1];
  }
  return raster;
}

function encodeRuns(raster) {
  const runs = [];
  let value = raster[0], length = 0;
  for (let i = 0; i < raster.length; i++) {
    if (raster[i] === value) { length++; continue; }
    runs.push(value, length);
    [value, length] = [raster[i], 1];
  }
  runs.push(value, length);
  return runs;
}

// Sets the disc of diameter `width` around (cx, cy) (photo pixels) to value.
function stampDisc(page, cx, cy, width, value) {
  const r = width / 2, r2 = r * r;
  const x0 = Math.max(0, Math.floor(cx - r)), x1 = Math.min(page.W - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r)), y1 = Math.min(page.H - 1, Math.ceil(cy + r));
  const pixels = page.strokePixels.data, colour = state.colours[value];
  for (let y = y0; y <= y1; y++) {
    const dy = y + 0.5 - cy;
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - cx;
      if (dx * dx + dy * dy > r2) continue;
      const i = y * page.W + x;
      page.raster[i] = value;
      if (colour) pixels.set([colour[0], colour[1], colour[2], 255], 4 * i);
      else pixels[4 * i + 3] = 0;
    }
  }
}

function stampSegment(page, a, b, width, value) {
  const steps = Math.max(1, Math.ceil(Math.hypot(b[0] - a[0], b[1] - a[1]) * 2));
  for (let s = 1; s <= steps; s++) {
    const t = s / steps;
    stampDisc(page, a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]), width, value);
  }
}

function stampStroke(page, stroke, from = 0) {
  const p = stroke.points;
  if (from === 0) stampDisc(page, p[0][0], p[0][1], stroke.width, stroke.value);
  for (let i = Math.max(1, from); i < p.length; i++) {
    stampSegment(page, p[i - 1], p[i], stroke.width, stroke.value);
  }
}

// The raster from the saved strokes and the strokes drawn since.
function rebuild(page) {
  page.raster.set(page.base);
  page.strokePixels.data.fill(0);
  for (let i = 0; i < page.raster.length; i++) {
    const colour = state.colours[page.raster[i]];
    if (colour) page.strokePixels.data.set([colour[0], colour[1], colour[2], 255], 4 * i);
  }
  for (const stroke of page.strokes) stampStroke(page, stroke);
}

// --- drawing the page ------------------------------------------------------

function fitView(page) {
  const availH = Math.max(200, window.innerHeight - view.getBoundingClientRect().top - 16);
  const scale = Math.min($("stage").clientWidth / page.W, availH / page.H, 4);
  [view.style.width, view.style.height] = [`${page.W * scale}px`, `${page.H * scale}px`];
}

function render() {
  state.frame = 0;
  const page = state.page;
  if (!page) return;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(page.photo, 0, 0);
  const overlay = state.overlay === "soft" ? page.soft : state.overlay === "mask" ? page.mask : null;
  if (overlay) {
    [ctx.globalAlpha, ctx.imageSmoothingEnabled] = [state.opacity, state.overlay === "soft"];
    ctx.drawImage(overlay, 0, 0, page.W, page.H);
    ctx.globalAlpha = 1;
  }
  strokeCtx.putImageData(page.strokePixels, 0, 0);
  ctx.drawImage(strokeCanvas, 0, 0);
}

function scheduleRender() {
  if (!state.frame) state.frame = requestAnimationFrame(render);
}

function showMask(page) {
  const canvas = $("maskview");
  [canvas.width, canvas.height] = page.mask ? [page.mask.width, page.mask.height] : [1, 1];
  if (page.mask) canvas.getContext("2d").drawImage(page.mask, 0, 0);
}

function showHeader() {
  const page = state.page, n = state.images.length;
  $("position").textContent = `image ${state.index + 1} / ${n}`;
  $("count").textContent = `labelled ${state.labelled} / ${n}`;
  $("name").textContent = page ? `${page.name} (${page.W}x${page.H})` : "-";
  const st = $("state");
  st.textContent = !page ? "-" : page.dirty ? "unsaved" : page.saved ? "saved" : "not saved yet";
  st.className = page && page.dirty ? "dirty" : page && page.saved ? "saved" : "";
  document.body.dataset.dirty = page && page.dirty ? "1" : "0";
}

function showTools() {
  for (const button of $("palette").children) {
    button.classList.toggle("active", !state.erase && Number(button.dataset.cls) === state.cls);
  }
  $("eraser").classList.toggle("active", state.erase);
  $("width").value = state.width;
  $("width-value").textContent = state.width;
  $("overlay").value = state.overlay;
}

// --- solving and saving ----------------------------------------------------

function scheduleSolve() {
  clearTimeout(state.solveTimer);
  document.body.dataset.pending = "1";
  state.solveTimer = setTimeout(solve, SOLVE_DELAY_MS);
}

function scribbleBody(page) {
  return {name: page.name, scribbles: {width: page.W, height: page.H, runs: encodeRuns(page.raster)}};
}

async function solve() {
  const page = state.page;
  document.body.dataset.pending = "0";
  if (!page) return;
  if (!page.raster.some((v) => v !== UNLABELED)) {
    page.soft = page.mask = null;
    showMask(page);
    scheduleRender();
    message("no strokes: draw one to see the solver's labels");
    return;
  }
  const seq = ++state.solveSeq;
  const start = performance.now();
  document.body.dataset.busy = "1";
  try {
    const r = await api("/api/solve", scribbleBody(page));
    const [soft, mask] = await Promise.all([loadImage(r.soft), loadImage(r.mask)]);
    if (seq < state.shownSeq) return;
    state.shownSeq = seq;
    [page.soft, page.mask] = [soft, mask];
    const total = (performance.now() - start) / 1000;
    $("energy").textContent = `energy ${r.energy.toFixed(1)}`;
    $("timing").textContent = `solve ${r.seconds.toFixed(2)} s at ${r.work_width}x${r.work_height} (round trip ${total.toFixed(2)} s)`;
    if (state.page === page) { showMask(page); scheduleRender(); message(""); }
    document.body.dataset.solves = String(++state.solves);
  } catch (e) {
    message(`solve failed: ${e.message}`, true);
  } finally {
    if (seq === state.solveSeq) document.body.dataset.busy = "0";
  }
}

async function save() {
  const page = state.page;
  if (!page) return;
  try {
    const r = await api("/api/save", scribbleBody(page));
    [page.dirty, page.saved] = [false, true];
    state.images[state.index].labelled = true;
    state.labelled = r.labelled;
    document.body.dataset.saves = String(++state.saves);
    message(`saved ${Object.values(r.files).join(", ")}`);
  } catch (e) {
    message(`save failed: ${e.message}`, true);
  }
  showHeader();
}

// --- photos ----------------------------------------------------------------

async function loadImage(src) {
  const img = new Image();
  img.src = src;
  await img.decode();
  return img;
}

async function newPage(info) {
  const name = encodeURIComponent(info.name);
  const [photo, saved] = await Promise.all([
    loadImage(`/api/image/${name}`), api(`/api/scribbles/${name}`)]);
  const W = saved.width, H = saved.height;
  const page = {name: info.name, W, H, photo, strokes: [], soft: null, mask: null,
                dirty: false, saved: saved.saved,
                base: decodeRuns(saved.runs, W * H), raster: new Uint8Array(W * H),
                strokePixels: new ImageData(W, H)};
  rebuild(page);
  return page;
}

async function go(index) {
  if (index < 0 || index >= state.images.length || index === state.index) return;
  const info = state.images[index];
  state.index = index;
  let page = state.cache.get(info.name);
  try {
    if (!page) state.cache.set(info.name, page = await newPage(info));
  } catch (e) {
    message(`cannot open ${info.name}: ${e.message}`, true);
    return;
  }
  if (state.index !== index) return;  // moved on meanwhile.
  state.page = page;
  history.replaceState(null, "", `#${encodeURIComponent(info.name)}`);
  [view.width, view.height] = [strokeCanvas.width, strokeCanvas.height] = [page.W, page.H];
  fitView(page);
  showMask(page);
  showHeader();
  render();
  [$("energy").textContent, $("timing").textContent] = ["energy -", "solve -"];
  if (!page.soft && page.raster.some((v) => v !== UNLABELED)) solve();
}

// --- input -----------------------------------------------------------------

function photoPoint(event) {
  const rect = view.getBoundingClientRect();
  return [(event.clientX - rect.left) * state.page.W / rect.width,
          (event.clientY - rect.top) * state.page.H / rect.height];
}

view.addEventListener("pointerdown", (event) => {
  if (!state.page || event.button !== 0) return;
  view.setPointerCapture(event.pointerId);
  const stroke = {value: state.erase ? UNLABELED : state.cls, width: state.width,
                  points: [photoPoint(event)]};
  state.drawing = stroke;
  clearTimeout(state.solveTimer);
  stampStroke(state.page, stroke);
  scheduleRender();
});

view.addEventListener("pointermove", (event) => {
  const stroke = state.drawing;
  if (!stroke) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  const from = stroke.points.length;
  for (const e of (events.length ? events : [event])) stroke.points.push(photoPoint(e));
  stampStroke(state.page, stroke, from);
  scheduleRender();
});

function endStroke() {
  if (!state.drawing) return;
  state.page.strokes.push(state.drawing);
  state.drawing = null;
  state.page.dirty = true;
  showHeader();
  scheduleSolve();
}
view.addEventListener("pointerup", endStroke);
view.addEventListener("pointercancel", endStroke);

function undo() {
  const page = state.page;
  if (!page || !page.strokes.length) return;
  page.strokes.pop();
  rebuild(page);
  page.dirty = true;
  showHeader();
  scheduleRender();
  scheduleSolve();
}

function setClass(cls) {
  if (cls < state.classes.length) { state.cls = cls; state.erase = false; showTools(); }
}
function setWidth(width) { state.width = Math.max(1, Math.min(40, width)); showTools(); }
function toggleEraser() { state.erase = !state.erase; showTools(); }

window.addEventListener("keydown", (event) => {
  if (event.target.tagName === "SELECT" || event.altKey) return;
  const key = event.key;
  if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "z") { undo(); }
  else if ((event.ctrlKey || event.metaKey) && key.toLowerCase() === "s") { save(); }
  else if (event.ctrlKey || event.metaKey) { return; }
  else if (/^[1-9]$/.test(key)) { setClass(Number(key) - 1); }
  else if (key === "e") { toggleEraser(); }
  else if (key === "u") { undo(); }
  else if (key === "s") { save(); }
  else if (key === "n" || key === "ArrowRight") { go(state.index + 1); }
  else if (key === "p" || key === "ArrowLeft") { go(state.index - 1); }
  else if (key === "[") { setWidth(state.width - 1); }
  else if (key === "]") { setWidth(state.width + 1); }
  else if (key === "o") {
    state.overlay = OVERLAYS[(OVERLAYS.indexOf(state.overlay) + 1) % OVERLAYS.length];
    showTools(); scheduleRender();
  } else { return; }
  event.preventDefault();
});

function buildControls() {
  const palette = $("palette");
  state.classes.forEach((name, k) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.cls = String(k);
    const [r, g, b] = state.colours[k];
    button.innerHTML = `<span class="swatch" style="background: rgb(${r},${g},${b})"></span>`;
    button.append(`${k < 9 ? k + 1 : "-"} ${name}`);
    button.addEventListener("click", () => setClass(k));
    palette.append(button);
  });
  $("eraser").addEventListener("click", toggleEraser);
  $("width").addEventListener("input", (e) => { setWidth(Number(e.target.value)); e.target.blur(); });
  $("overlay").addEventListener("change", (e) => { state.overlay = e.target.value; e.target.blur(); scheduleRender(); });
  $("opacity").addEventListener("input", (e) => { state.opacity = Number(e.target.value) / 100; scheduleRender(); });
  $("prev").addEventListener("click", () => go(state.index - 1));
  $("next").addEventListener("click", () => go(state.index + 1));
  $("undo").addEventListener("click", undo);
  $("save").addEventListener("click", save);
  window.addEventListener("resize", () => state.page && fitView(state.page));
  window.addEventListener("beforeunload", (event) => {
    if ([...state.cache.values()].some((p) => p.dirty)) event.preventDefault();
  });
}

async function start() {
  try {
    const listing = await api("/api/images");
    Object.assign(state, {images: listing.images, classes: listing.classes,
                          colours: listing.colours, labelled: listing.labelled});
    buildControls();
    showTools();
    if (!state.images.length) { message("no photos in the folder", true); return; }
    const wanted = decodeURIComponent(location.hash.slice(1));
    let index = state.images.findIndex((im) => im.name === wanted);
    if (index < 0) index = Math.max(0, state.images.findIndex((im) => !im.labelled));
    await go(index);
    document.body.dataset.ready = "1";
  } catch (e) {
    message(`cannot start: ${e.message}`, true);
  }
}

start();
