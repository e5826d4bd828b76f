"""The training system end to end: demo runlocal, exact resume, preemption.

One uninterrupted two-stage run (in this process, 4 fake devices) is the
reference; runs interrupted by SIGKILL and SIGTERM in a subprocess
(``python -m potts_jax.main``, same devices) and then resumed in the same
workdir must end with the same parameters and metrics.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import functools
import threading

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from potts_jax import checkpointing
from potts_jax import evaluation
from potts_jax import parallel
from potts_jax import steps
from potts_jax import train
from tests.conftest import REPO

sys.path.insert(0, str(REPO))
from configs import demo  # noqa: E402  pylint: disable=g-import-not-at-top

# Stage 1: 5 pCE steps, checkpoints every 2; stage 2: 2 soft-SL steps.
OVERRIDES = ("--config.total_steps=5", "--config.checkpoint_every=2")


def _config():
  c = demo.get_config("runlocal")
  c.total_steps = 5
  c.checkpoint_every = 2
  return c


def _start(workdir: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "potts_jax.main",
       "--config=configs/demo.py:runlocal", f"--workdir={workdir}",
       *OVERRIDES],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=dict(os.environ, PYTHONUNBUFFERED="1"))


class _Signaller(threading.Thread):
  """Reads a process's output as it comes; sends ``sig`` at the first line
  matching ``pattern`` (reading as it comes, so that the signal arrives while
  the run is at that step, not after it has run on into a full pipe)."""

  def __init__(self, process: subprocess.Popen, pattern: str, sig: int):
    super().__init__(daemon=True)
    self.process, self.pattern, self.sig = process, pattern, sig
    self.lines, self.sent = [], False
    self.start()

  def run(self):
    for line in self.process.stdout:
      self.lines.append(line)
      if not self.sent and re.search(self.pattern, line):
        self.process.send_signal(self.sig)
        self.sent = True

  def finish(self, timeout: float) -> str:
    self.process.wait(timeout=timeout)
    self.join(timeout=30)
    text = "".join(self.lines)
    assert self.sent, f"the run ended before {self.pattern!r}:\n{text[-3000:]}"
    return text


def _final_state(stage_dir: pathlib.Path):
  step_dir = checkpointing.find_checkpoint(stage_dir)
  tree = checkpointing.restore_arrays(step_dir / checkpointing.STATE)
  return int(step_dir.name), tree


def _assert_same_run(a: pathlib.Path, b: pathlib.Path) -> None:
  for stage in ("stage1", "stage2"):
    step_a, state_a = _final_state(a / stage)
    step_b, state_b = _final_state(b / stage)
    assert step_a == step_b
    for key in ("params", "batch_stats", "opt_state"):
      leaves_a = jax.tree.leaves(state_a[key])
      leaves_b = jax.tree.leaves(state_b[key])
      assert len(leaves_a) == len(leaves_b) > 0
      diff = max(float(np.max(np.abs(np.asarray(x, np.float64)
                                     - np.asarray(y, np.float64))))
                 for x, y in zip(leaves_a, leaves_b))
      assert diff <= 1e-6, (stage, key, diff)
  ma = json.loads((a / "metrics.json").read_text())
  mb = json.loads((b / "metrics.json").read_text())
  assert ma["step"] == mb["step"]
  for stage in ("stage1", "stage2"):
    np.testing.assert_allclose(mb["stages"][stage]["miou"],
                               ma["stages"][stage]["miou"], atol=1e-6)
    assert mb["stages"][stage]["iou"] == pytest.approx(
        ma["stages"][stage]["iou"], abs=1e-6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  assert jax.device_count() == 4
  record = train.train_and_evaluate(_config(), str(workdir))
  return workdir, record


@pytest.mark.slow
def test_demo_runlocal_trains_both_stages(reference):
  workdir, record = reference
  assert set(record["stages"]) == {"stage1", "stage2"}
  for stage, steps in (("stage1", 5), ("stage2", 2)):
    d = workdir / stage
    assert checkpointing.find_checkpoint(d).name == str(steps)
    assert list(d.glob("events.out.tfevents.*")), f"no TensorBoard in {d}"
    assert (d / "figure.png").stat().st_size > 1000
    m = json.loads((d / "metrics.json").read_text())
    assert m["step"] == steps and 0.0 <= m["miou"] <= 1.0
    assert "full image, single scale" in m["protocol"]
    assert json.loads((d / "config.json").read_text())["loss"]["method"] == (
        "pce" if stage == "stage1" else "soft_sl")
  # keep_checkpoints=3 of stage 1's saves at 2, 4, 5.
  assert sorted(int(p.name) for p in (workdir / "stage1/checkpoints")
                .iterdir() if p.name.isdigit()) == [2, 4, 5]
  # The run's metrics.json is the last stage's, with every stage's record.
  top = json.loads((workdir / "metrics.json").read_text())
  assert top["miou"] == top["stages"]["stage2"]["miou"]


@pytest.mark.slow
def test_sigkill_and_sigterm_runs_resume_exactly(reference, tmp_path):
  ref_dir, _ = reference
  killed, stopped = tmp_path / "killed", tmp_path / "stopped"
  p_kill, p_term = _start(killed), _start(stopped)
  try:
    # SIGKILL after step 3 of stage 1 (checkpoint 2 written, 3 perhaps not);
    # SIGTERM after step 3: the run saves the step it is at and stops.
    kill = _Signaller(p_kill, r"step 3/5", signal.SIGKILL)
    term = _Signaller(p_term, r"step 3/5", signal.SIGTERM)
    kill.finish(timeout=300)
    out = term.finish(timeout=300)
  finally:
    for p in (p_kill, p_term):
      if p.poll() is None:
        p.kill()
  assert p_kill.returncode == -signal.SIGKILL
  assert p_term.returncode == 0, out[-3000:]
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["preempted"] is True
  saved = checkpointing.find_checkpoint(stopped / "stage1")
  assert int(saved.name) == summary["step"] >= 3
  assert not (stopped / "stage2").exists()
  assert checkpointing.find_checkpoint(killed / "stage1").name in ("2", "3")
  for workdir in (killed, stopped):
    train.train_and_evaluate(_config(), str(workdir))
    _assert_same_run(ref_dir, workdir)


def test_unreadable_newest_checkpoint_falls_back(tmp_path, caplog):
  import grain  # pylint: disable=g-import-not-at-top
  source = list(range(10))
  iterator = iter(grain.MapDataset.source(source).to_iter_dataset())
  state = {"w": np.arange(6, dtype=np.float32), "step": np.int32(0)}
  with checkpointing.Checkpointer(tmp_path, keep=3, save_every=1) as ckpt:
    for step in (1, 2):
      next(iterator)
      ckpt.save(step, dict(state, w=state["w"] + step, step=np.int32(step)),
                iterator)
  # Truncate every data file of the newest state.
  for f in (tmp_path / "2" / "state").rglob("*"):
    if f.is_file() and "ocdbt" in str(f.relative_to(tmp_path)):
      f.write_bytes(f.read_bytes()[:3])
  fresh = iter(grain.MapDataset.source(source).to_iter_dataset())
  with checkpointing.Checkpointer(tmp_path, keep=3, save_every=1) as ckpt:
    restored = ckpt.restore_latest(state, fresh)
  assert int(restored["step"]) == 1
  np.testing.assert_array_equal(restored["w"], state["w"] + 1)
  assert next(fresh) == 1  # The iterator is at checkpoint 1's position.
  assert (tmp_path / "2.unreadable").is_dir()
  assert "cannot be read" in caplog.text


def test_empty_directory_restores_nothing_and_bad_init_from(tmp_path):
  state = {"w": np.zeros(3, np.float32), "step": np.int32(0)}
  with checkpointing.Checkpointer(tmp_path / "c") as ckpt:
    assert ckpt.restore_latest(state, iter([])) is None
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
    checkpointing.find_checkpoint(tmp_path / "nothing")
  c = _config()
  c.stages = ()
  c.init_from = str(tmp_path / "nothing")
  with pytest.raises(FileNotFoundError, match="init_from=.*holds no checkpoint"):
    train.train_and_evaluate(c, str(tmp_path / "run"))


@pytest.mark.slow
def test_restore_model_names_a_mismatched_parameter(reference):
  workdir, _ = reference
  c = _config()
  model = train.build_model(c, num_classes=7)  # The demo has 3 classes.
  with pytest.raises(ValueError, match="classifier.*has shape"):
    checkpointing.restore_model(workdir / "stage1", model)


# Evaluation protocols.

SIZES = [(37, 50), (50, 37), (37, 50), (29, 29), (40, 47)]


def _sized_source(sizes, num_classes=3, seed=0):
  """Smooth random photos of the given ``(h, w)`` sizes, named by index."""
  rng = np.random.default_rng(seed)
  source = []
  for i, (h, w) in enumerate(sizes):
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3))
    image = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:h, :w]
    image = np.clip(image + rng.integers(-20, 21, (h, w, 3)), 0, 255)
    source.append({"image": image.astype(np.uint8),
                   "mask": rng.integers(0, num_classes, (h, w), np.uint8),
                   "scribbles": np.full((h, w), 255, np.uint8),
                   "name": str(i)})
  return source


@pytest.fixture(scope="module")
def small_net():
  """The demo runlocal DeepLabV3+, random weights: ``(config, def, state)``."""
  c = _config()
  model = train.build_model(c, num_classes=3)
  graphdef, state = train.create_state(model, train.make_optimizer(c), c.seed)
  return c, graphdef, state


def _alone(graphdef, state, image):
  """Eval-mode logits ``[h, w, K]`` of one unpadded image, at batch 1."""
  def logits(state, x):
    model = graphdef.merge(state["params"], state["batch_stats"])
    model.eval()
    return model(steps.normalize(x))[0]
  return np.asarray(jax.jit(logits)(state, jnp.asarray(image[None],
                                                       jnp.float32)))


def test_full_protocol_equals_each_image_alone(small_net):
  c, graphdef, state = small_net
  c = ml_collections.ConfigDict(c.to_dict())
  c.eval.protocol = "full"
  source = _sized_source(SIZES)
  alone = [_alone(graphdef, state, e["image"]) for e in source]
  # The eval path's batches (several sizes in one call), through the network.
  model_logits = jax.jit(lambda s, x: _model_logits(graphdef, s, x))
  seen = 0
  for batch in evaluation.eval_dataset(source, c, batch_size=4, process_index=0,
                                  process_count=1):
    logits = np.asarray(model_logits(state, jnp.asarray(batch["image"])))
    for b in np.flatnonzero(batch["valid"]):
      i = int(batch["name"][b])
      h, w = batch["size"][b]
      assert (h, w) == SIZES[i]
      np.testing.assert_allclose(logits[b, :h, :w], alone[i], atol=1e-4)
      seen += 1
  assert seen == len(source)
  # predictions(): the same, as probabilities.
  got = {n: p for n, p, _ in evaluation.predictions(graphdef, state, source, c)}
  for i, logits in enumerate(alone):
    np.testing.assert_allclose(got[str(i)], jax.nn.softmax(logits, -1),
                               atol=1e-5)
  # The padded protocol is not exact: its padding enters the network.
  c.eval.protocol, c.eval.pad_to = "padded", (64, 64)
  padded = {n: p for n, p, _ in evaluation.predictions(graphdef, state, source, c)}
  gap = max(float(np.abs(padded[str(i)] - jax.nn.softmax(a, -1)).max())
            for i, a in enumerate(alone))
  assert gap > 1e-3


def _model_logits(graphdef, state, x):
  model = graphdef.merge(state["params"], state["batch_stats"])
  model.eval()
  return model(steps.normalize(x))


def test_full_protocol_confusion_matrix_of_the_eval_step(small_net):
  c, graphdef, state = small_net
  c = ml_collections.ConfigDict(c.to_dict())
  c.eval.protocol, c.eval.batch_size = "full", 4
  source = _sized_source(SIZES)
  par = parallel.DataParallel("shard_map")
  eval_fn = par.step(functools.partial(
      steps.eval_step, graphdef=graphdef, num_classes=3),
      replicated=(True, False))
  cm = evaluation.evaluate(par, eval_fn, par.replicate(state), source, c, 3,
                      cache={})
  want = np.zeros((3, 3), np.int64)
  for e in source:
    pred = _alone(graphdef, state, e["image"]).argmax(-1)
    np.add.at(want, (e["mask"].astype(int), pred), 1)
  np.testing.assert_array_equal(cm, want)


def test_center_crop_protocol_equals_crop_then_predict(small_net):
  c, graphdef, state = small_net
  c = ml_collections.ConfigDict(c.to_dict())
  c.eval.protocol, c.eval.crop_size = "center_crop", 32
  source = _sized_source(SIZES)
  # Independently: rloss's FixScaleCrop(32) by hand, (oh, ow) and (y1, x1).
  crops = {(37, 50): ((32, 43), (0, 6)), (50, 37): ((43, 32), (6, 0)),
           (29, 29): ((32, 32), (0, 0)), (40, 47): ((32, 37), (0, 2))}
  got = {n: (p, m) for n, p, m in evaluation.predictions(graphdef, state, source,
                                                     c)}
  for i, e in enumerate(source):
    (oh, ow), (y1, x1) = crops[e["mask"].shape]
    image = np.asarray(Image.fromarray(e["image"]).resize(
        (ow, oh), Image.BILINEAR))[y1:y1 + 32, x1:x1 + 32]
    mask = np.asarray(Image.fromarray(e["mask"]).resize(
        (ow, oh), Image.NEAREST))[y1:y1 + 32, x1:x1 + 32]
    probs, got_mask = got[str(i)]
    np.testing.assert_array_equal(got_mask, mask)
    np.testing.assert_allclose(
        probs, jax.nn.softmax(_alone(graphdef, state, image), -1), atol=1e-5)


def test_protocol_names_the_protocol():
  c = _config()
  c.eval.protocol = "full"
  text = evaluation.protocol(c, "demo")
  assert "full image, single scale (each image at its own size, unpadded" \
         in text
  c.eval.protocol, c.eval.crop_size = "center_crop", 513
  assert ("rloss centre crop, single scale (FixScaleCrop 513: short side "
          "resized to 513") in evaluation.protocol(c, "demo")
  c.eval.protocol, c.eval.pad_to = "padded", (512, 512)
  c.eval.flip = True
  text = evaluation.protocol(c, "demo")
  assert ("padded, single scale, flip (each image at the top left of a "
          "512x512 zero canvas") in text
  assert "the padding enters the network" in text
  c.eval.pad_to = ()
  assert "largest image of its batch of 4" in evaluation.protocol(c, "demo")
  c.eval.protocol = "tiled"
  with pytest.raises(ValueError, match="config.eval.protocol"):
    evaluation.protocol(c, "demo")


def test_with_best_keeps_the_final_and_adds_the_best():
  history = [{"step": 2, "miou": 0.3, "pixel_accuracy": 0.5},
             {"step": 4, "miou": 0.6, "pixel_accuracy": 0.7},
             {"step": 6, "miou": 0.6, "pixel_accuracy": 0.8},
             {"step": 4, "miou": 0.61, "pixel_accuracy": 0.71},  # Re-run.
             {"step": 5, "miou": None, "pixel_accuracy": 0.1}]
  final = {"step": 8, "miou": 0.5, "pixel_accuracy": 0.6, "protocol": "p"}
  record = evaluation.with_best(final, history)
  assert record["miou"] == record["final_miou"] == 0.5
  assert (record["best_miou"], record["best_step"],
          record["best_pixel_accuracy"]) == (0.61, 4, 0.71)
  assert [e["step"] for e in record["evaluations"]] == [2, 4, 5, 6, 8]
  assert record["protocol"] == "p"


@pytest.mark.slow
def test_eval_every_reports_final_and_best(tmp_path, caplog):
  c = _config()
  c.stages = ()
  c.total_steps, c.eval.every, c.checkpoint_every = 2, 1, 2
  c.image_every, c.figure = 0, False
  caplog.set_level("INFO")
  record = train.train_and_evaluate(c, str(tmp_path))
  m = json.loads((tmp_path / "metrics.json").read_text())
  lines = [json.loads(x) for x in
           (tmp_path / "evaluations.jsonl").read_text().splitlines()]
  assert [e["step"] for e in lines] == [1, 2]
  assert m["final_miou"] == m["miou"] == lines[1]["miou"]
  best = max(lines, key=lambda e: e["miou"])
  assert (m["best_miou"], m["best_step"]) == (best["miou"], best["step"])
  assert [e["step"] for e in m["evaluations"]] == [1, 2]
  assert record["best_miou"] == m["best_miou"]
  assert re.search(r"final val mIoU [\d.]+ \(step 2\); best val mIoU [\d.]+ "
                   r"\(step [12]\), the best of 2 evaluations every 1 steps",
                   caplog.text)
