"""Loss normalisation (pixel mean vs the lineage's pixel mean / batch size)
and the regularised loss of eq. 4 on the solver's sum convention."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import losses
from potts_jax import parallel
from potts_jax import solver
from potts_jax.data import synthetic
from tests import references
from tests.conftest import REPO
from tests.test_steps import _config
from tests.test_steps import _max_diff
from tests.test_steps import _run

sys.path.insert(0, str(REPO))
# pylint: disable=g-import-not-at-top,g-bad-import-order
from configs import ade20k  # noqa: E402
from configs import camvid  # noqa: E402
from configs import camvid_small  # noqa: E402
from configs import cityscapes  # noqa: E402
from configs import demo  # noqa: E402
from configs import voc  # noqa: E402
from configs import voc_r101  # noqa: E402

def _gd(logits, image, labels, axis_name=None, **energy):
  """:func:`losses.regularized_loss` with ``energy``'s fields as keywords."""
  return losses.regularized_loss(logits, image, labels,
                                 solver.EnergyParams(**energy),
                                 axis_name=axis_name)



def test_normalization_scale():
  assert losses.normalization_scale("pixel_mean", 12) == 1.0
  assert losses.normalization_scale("batch_mean", 12) == 1.0 / 12
  with pytest.raises(ValueError, match="'lineage'"):
    losses.normalization_scale("lineage", 12)
  with pytest.raises(ValueError, match="batch_size"):
    losses.normalization_scale("batch_mean", 0)


def test_paper_configs_use_the_lineage_normalization():
  """The lineage's lr are for its loss; the CPU configs keep pixel means."""
  for module in (voc, voc_r101, cityscapes, ade20k):
    assert module.get_config().loss.normalization == "batch_mean", module
  for module in (demo, camvid, camvid_small):
    assert module.get_config().loss.normalization == "pixel_mean", module


def _numpy_pce(logits, labels):
  """float64 mean over the scribbled pixels of -ln softmax at the label."""
  x = np.asarray(logits, np.float64)
  logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
  sel = labels < logits.shape[-1]
  picked = np.take_along_axis(logp, np.where(sel, labels, 0)[..., None], -1)
  return -np.mean(picked[..., 0][sel])


def test_batch_mean_is_the_global_pixel_mean_over_b_on_four_devices():
  """psum over 4 devices of scale · pCE = numpy pixel mean / B (B = 4)."""
  logits, _, labels = synthetic.grid_problem(b=4, seed=3)
  labels[0] = 255  # device 0 holds no scribble: the counts are global.
  par = parallel.DataParallel("shard_map",
                              parallel.make_mesh(jax.devices()[:4]))

  def per_device(l, y):
    scale = losses.normalization_scale(
        "batch_mean", l.shape[0] * jax.lax.axis_size(parallel.AXIS))
    return jax.lax.psum(scale * losses.partial_cross_entropy(
        l, y, axis_name=parallel.AXIS), parallel.AXIS)

  fn = par.step(per_device, replicated=(False, False))
  got = fn(par.put_batch({"l": logits})["l"], par.put_batch({"y": labels})["y"])
  np.testing.assert_allclose(float(got), _numpy_pce(logits, labels) / 4,
                             rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pce", "gd", "soft_sl"])
def test_step_loss_under_batch_mean_is_the_pixel_mean_over_b(method):
  """Same state and batch: the loss the step optimises is divided by B."""
  config = _config(method)
  config.solver.num_steps = 3
  _, pixel = _run(config, "shard_map", 1, 1)
  config.loss.normalization = "batch_mean"
  _, batch = _run(config, "shard_map", 1, 1)
  b = config.input.batch_size
  np.testing.assert_allclose(float(batch["loss"]), float(pixel["loss"]) / b,
                             rtol=1e-5)
  # The pCE metric stays a pixel mean.
  np.testing.assert_allclose(float(batch["pce"]), float(pixel["pce"]),
                             rtol=1e-5)


@pytest.mark.slow
def test_one_sgd_step_at_lr_equals_a_pixel_mean_step_at_lr_over_b():
  """The real optimiser (momentum, weight decay, head lr x10, poly).

  Under batch_mean the gradient is ``g / B`` (g the pixel-mean gradient) and
  the decayed gradient ``g / B + wd · p``; SGD moves by ``-lr · m · (g / B +
  wd · p)`` (m the head multiplier). A pixel_mean step at lr ``lr / B`` with
  weight decay ``B · wd`` moves by ``-(lr / B) · m · (g + B · wd · p)``, the
  same. Momentum and the poly schedule are linear in these, so every later
  step agrees too (two steps here).
  """
  config = _config("pce")
  b = config.input.batch_size
  lr, wd = 0.05, 5e-3  # A visible step and decay.
  config.loss.normalization = "batch_mean"
  config.optim.update(lr=lr, weight_decay=wd)
  lineage, _ = _run(config, "shard_map", 1, 2)
  config.loss.normalization = "pixel_mean"
  config.optim.update(lr=lr / b, weight_decay=b * wd)
  pixel, _ = _run(config, "shard_map", 1, 2)
  assert _max_diff(lineage["params"], pixel["params"]) <= 1e-6
  # Not a vacuous check: at the same lr and decay the two differ.
  config.optim.update(lr=lr, weight_decay=wd)
  same_lr, _ = _run(config, "shard_map", 1, 2)
  assert _max_diff(lineage["params"], same_lr["params"]) > 1e-4


@pytest.mark.slow
def test_batch_mean_step_on_four_devices_equals_one_device():
  """The scale uses the global batch size: 4 devices x 1 image = 1 x 4."""
  config = _config("gd")
  config.loss.normalization = "batch_mean"
  four, m4 = _run(config, "shard_map", 4, 1)
  one, m1 = _run(config, "shard_map", 1, 1)
  np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-5)
  assert _max_diff(four["params"], one["params"]) <= 2e-5


# ----------------------------------------------------------------------------
# The regularised loss (eq. 4) against the solver's E(y) at y = σ.


def _unlabeled(labels):
  return max(int(np.sum(labels == 255)), 1)


@pytest.mark.parametrize("neighborhood", ["nn4", "nn8"])
@pytest.mark.parametrize("relaxation", ["bl", "q", "cd", "lq"])
def test_regularized_loss_potts_is_the_solvers_potts_over_unlabeled(
    relaxation, neighborhood):
  """``loss - pCE = Σ_b E(σ)_b / |U|`` (η = 0: the Potts terms alone), also
  against a float64 brute-force sum over the grid pairs."""
  logits, image, labels = synthetic.grid_problem(seed=5)
  options = dict(relaxation=relaxation, neighborhood=neighborhood,
                 lam=2.5, sigma_rgb=7.0)
  loss = _gd(logits, image, labels, eta=0.0, **options)
  potts_part = float(loss) - _numpy_pce(logits, labels)
  sigma = jax.nn.softmax(jnp.asarray(logits))
  energy = solver.energy(sigma, logits, image, labels, eta=0.0, **options)
  u = _unlabeled(labels)
  np.testing.assert_allclose(potts_part, float(jnp.sum(energy)) / u,
                             rtol=2e-5, atol=1e-6)
  pairs = references.grid_pairs(image, labels, neighborhood, 7.0)
  brute = 2.5 * np.sum(references.pair_energy(
      references.softmax(logits), pairs, relaxation))
  np.testing.assert_allclose(potts_part, brute / u, rtol=2e-5, atol=1e-6)


def test_regularized_loss_is_pce_plus_the_solver_energy_over_unlabeled():
  """With H_CE, ``E(σ)`` has ``η Σ_U H(σ, σ) = η Σ_U H(σ)``: the whole loss is
  ``pCE + Σ_b E(σ)_b / |U|``."""
  logits, image, labels = synthetic.grid_problem(seed=6)
  options = dict(relaxation="cd", neighborhood="nn4", eta=0.4, lam=2.5,
                 sigma_rgb=7.0)
  loss = _gd(logits, image, labels, **options)
  sigma = jax.nn.softmax(jnp.asarray(logits))
  energy = solver.energy(sigma, logits, image, labels, cross_entropy="ce",
                         **options)
  np.testing.assert_allclose(
      float(loss),
      _numpy_pce(logits, labels) + float(jnp.sum(energy)) / _unlabeled(labels),
      rtol=2e-5)
  # And the float64 reference of the whole loss.
  np.testing.assert_allclose(float(loss), references.regularized_loss(
      logits, image, labels, "cd", "nn4", eta=0.4, lam=2.5, sigma_rgb=7.0),
                             rtol=2e-5)


@pytest.mark.parametrize("relaxation", ["bl", "q"])
def test_dense_regularized_loss_potts_is_the_solvers_over_unlabeled(
    relaxation):
  """The dense path: the same factor ``1 / |U|`` against ``solver.energy``
  (both use :func:`potts_jax.dense.bilateral.dense_energy`'s pair convention)."""
  logits, image, labels = synthetic.grid_problem(h=8, w=10, seed=7)
  options = dict(relaxation=relaxation, neighborhood="dense", lam=0.5,
                 sigma_rgb=20.0, sigma_xy=5.0)
  loss = _gd(logits, image, labels, eta=0.0, **options)
  sigma = jax.nn.softmax(jnp.asarray(logits))
  energy = solver.energy(sigma, logits, image, labels, eta=0.0, **options)
  np.testing.assert_allclose(
      float(loss) - _numpy_pce(logits, labels),
      float(jnp.sum(energy)) / _unlabeled(labels), rtol=1e-4, atol=1e-6)
