"""The per-device train step under shard_map and pmap, and global-batch losses."""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import losses
from potts_jax import parallel
from potts_jax import steps
from potts_jax import train
from potts_jax.data import pipeline
from potts_jax.data import sources
from tests.conftest import REPO

sys.path.insert(0, str(REPO))
from configs import demo  # noqa: E402  pylint: disable=g-import-not-at-top


def _config(method):
  """The demo runlocal's stage 2 (``method``), no dropout."""
  c = demo.get_config(f"runlocal,method={method}")
  c = train.with_overrides(c, {**c.stages[1], "stages": ()})
  c.model.dropout_rate = 0.0
  return c


def _run(config, kind, num_devices, num_steps):
  data = sources.open_sources(config)
  batch = next(iter(pipeline.train_dataset(
      data.train, crop_size=config.input.crop_size,
      batch_size=config.input.batch_size,
      seed=0)))
  model = train.build_model(config, data.num_classes)
  tx = train.make_optimizer(config)
  model_def, state = train.create_state(model, tx, 0)
  par = parallel.DataParallel(kind, parallel.make_mesh(
      jax.devices()[:num_devices]))
  fn = par.step(functools.partial(train.train_step, graphdef=model_def,
                                  tx=tx, config=config),
                replicated=(True, False))
  state = par.replicate(state)
  for _ in range(num_steps):
    state, scalars = fn(state, par.put_batch(batch))
  return par.unreplicate(state), par.unreplicate(scalars)


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.slow
def test_soft_sl_step_on_four_devices_equals_one_device():
  """SyncBN, solver per device, global-batch loss: the same step (float32)."""
  config = _config("soft_sl")
  four, m4 = _run(config, "shard_map", 4, 1)
  one, m1 = _run(config, "shard_map", 1, 1)
  np.testing.assert_allclose(float(m4["loss"]), float(m1["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(m4["energy"]), float(m1["energy"]),
                             rtol=1e-5)
  # float32 rounding of the synchronised BatchNorm moments and of the
  # gradient sums in another order: measured 4.8e-6 / 8.3e-6 (params / stats)
  # on jax 0.10.2 and 1.2e-5 on params with jax 0.12, on values of size ~1.
  assert _max_diff(four["params"], one["params"]) <= 2e-5
  assert _max_diff(four["batch_stats"], one["batch_stats"]) <= 2e-5
  assert int(four["step"]) == 1


@pytest.mark.slow
def test_shard_map_and_pmap_agree_after_three_steps():
  config = _config("pce")
  a, _ = _run(config, "shard_map", 4, 3)
  b, _ = _run(config, "pmap", 4, 3)
  assert _max_diff(a["params"], b["params"]) <= 1e-6


def test_axis_name_means_are_global_batch_means():
  """psum of per-device losses = the loss of the whole batch, uneven scribbles."""
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 6, 6, 3)), jnp.float32)
  labels = rng.integers(0, 3, size=(4, 6, 6))
  labels[0] = 255  # device 0: no scribbles at all
  labels[1, :, 2:] = 255
  labels = jnp.asarray(labels, jnp.int32)
  mesh = parallel.make_mesh(jax.devices()[:4])
  par = parallel.DataParallel("shard_map", mesh)
  fn = par.step(lambda l, y: jax.lax.psum(losses.partial_cross_entropy(
      l, y, axis_name=parallel.AXIS), parallel.AXIS), replicated=(False, False))
  got = fn(par.put_batch({"l": np.asarray(logits)})["l"],
           par.put_batch({"y": np.asarray(labels)})["y"])
  # Independent: float64 numpy mean of -log softmax over all scribbled pixels.
  x = np.asarray(logits, np.float64)
  logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
  lab = np.asarray(labels)
  sel = lab < 3
  want = -np.mean(np.take_along_axis(logp, np.where(sel, lab, 0)[..., None],
                                     -1)[..., 0][sel])
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_bad_parallel_kind_and_batch():
  with pytest.raises(ValueError, match="parallel must be one of"):
    parallel.DataParallel("vmap")
  par = parallel.DataParallel("shard_map",
                              parallel.make_mesh(jax.devices()[:4]))
  with pytest.raises(ValueError, match="not a multiple"):
    par.put_batch({"image": np.zeros((3, 2, 2, 3), np.float32)})


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gd", "soft_sl"])
def test_lattice_capacity_reaches_the_step_and_an_overflow_stops_it(method):
  """config.energy.lattice_capacity is the lattice capacity of the GD loss
  and of the solver; too small, the jitted step fails instead of dropping
  points."""
  config = _config(method)
  config.energy.update(neighborhood="dense", relaxation="q",
                       lattice_capacity=4, scale_factor=0.5)
  config.solver.num_steps = 2
  steps.check_config(config)
  with pytest.raises(Exception,
                     match="overflow.*config.energy.lattice_capacity"):
    _run(config, "shard_map", 1, 1)
  config.energy.lattice_capacity = -1
  with pytest.raises(ValueError, match="config.energy.lattice_capacity.*-1"):
    steps.check_config(config)


@pytest.mark.slow
def test_solver_warm_start_reaches_the_step():
  """config.solver.warm_start="coarse" starts the step's solver from the
  pooled problem; bad values name the key."""
  config = _config("soft_sl")
  config.solver.num_steps = 3
  assert steps.energy_and_options(config)[1].warm_start == ""
  _, plain = _run(config, "shard_map", 1, 1)
  config.solver.update(warm_start="coarse", warm_start_steps=4)
  _, options = steps.energy_and_options(config)
  assert (options.warm_start, options.warm_start_steps) == ("coarse", 4)
  _, warm = _run(config, "shard_map", 1, 1)
  assert np.isfinite(float(warm["energy"]))
  # 4 coarse steps before the 3 fine ones reach a lower energy.
  assert float(warm["energy"]) < float(plain["energy"])
  for key, value, match in (
      ("solver.warm_start", "fine", "solver.warm_start: unknown warm_start"),
      ("energy.neighborhood", "dense", "solver.warm_start: .*nn4 and nn8"),
      ("solver.warm_start_steps", -1, "solver.warm_start_steps: .*int >= 0")):
    c = _config("soft_sl")
    c.solver.warm_start = "coarse"
    section, name = key.split(".")
    c[section][name] = value
    if name == "neighborhood":
      c.energy.relaxation = "q"
    with pytest.raises(ValueError, match="config." + match):
      steps.check_config(c)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["soft_sl", "hard_sl_gc"])
def test_energy_metric_of_the_step(method):
  """``energy``: the solver's E(y) of the soft y; of the hard methods' one-hot
  y, the discrete Potts energy (H_CE + P_BL), whatever the config's
  relaxation (the graph cut's y does not depend on it either)."""
  config = _config(method)
  config.solver.num_steps = 3
  _, metrics = _run(config, "shard_map", 1, 1)
  assert np.isfinite(float(metrics["energy"]))
  config.energy.relaxation = "q"  # Only soft_sl's energy depends on it.
  _, other = _run(config, "shard_map", 1, 1)
  if method == "soft_sl":
    assert float(other["energy"]) != float(metrics["energy"])
  else:
    np.testing.assert_allclose(float(other["energy"]),
                               float(metrics["energy"]), rtol=1e-6)
