"""Confusion matrix, mIoU and metrics.json against independent numpy loops."""

import json
import math

import chex
import jax
import numpy as np

from potts_jax import metrics
def _reference(pred, gt, k):
  """float64 loops: IoU per class over classes in GT or prediction."""
  cm = np.zeros((k, k), np.float64)
  for p, g in zip(pred.reshape(-1), gt.reshape(-1)):
    if 0 <= g < k:
      cm[g, p] += 1
  ious = []
  for c in range(k):
    union = cm[c, :].sum() + cm[:, c].sum() - cm[c, c]
    if union > 0:
      ious.append(cm[c, c] / union)
  return cm, float(np.mean(ious)), float(np.trace(cm) / cm.sum())


class ConfusionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_numpy_and_ignores_255_and_254(self):
    rng = np.random.default_rng(0)
    k = 5
    gt = rng.integers(0, k, size=(3, 17, 13))
    gt[rng.random(gt.shape) < 0.2] = 255
    gt[:, -2:] = 254
    pred = rng.integers(0, k, size=gt.shape)
    pred[gt == 2] = 2  # class 2 well predicted; class 4 never in GT:
    gt[gt == 4] = 255
    fn = self.variant(lambda p, g: metrics.confusion_matrix(p, g, k))
    cm = np.asarray(fn(pred, gt))
    want_cm, want_miou, want_acc = _reference(pred, gt, k)
    np.testing.assert_array_equal(cm, want_cm)
    got = metrics.summarize(cm)
    self.assertAlmostEqual(got["miou"], want_miou, places=10)
    self.assertAlmostEqual(got["pixel_accuracy"], want_acc, places=10)


def test_accumulation_equals_the_concatenation():
  rng = np.random.default_rng(1)
  k = 4
  gt = rng.integers(0, k + 1, size=(6, 8, 8))
  gt[gt == k] = 255
  pred = rng.integers(0, k, size=gt.shape)
  acc = metrics.ConfusionMatrix(k)
  for i in range(0, 6, 2):
    acc.update(np.asarray(jax.jit(metrics.confusion_matrix, static_argnums=2)(
        pred[i:i + 2], gt[i:i + 2], k)))
  np.testing.assert_array_equal(acc.matrix, _reference(pred, gt, k)[0])


def test_metrics_json_round_trip_with_nan(tmp_path):
  path = tmp_path / "metrics.json"
  metrics.write_metrics_json(path, {"step": 3, "miou": 0.5,
                                    "iou": {"a": math.nan}, "protocol": "p"})
  text = json.loads(path.read_text())
  assert text["iou"]["a"] is None and text["step"] == 3
