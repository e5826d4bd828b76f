"""Solver update options (``method=``, :mod:`potts_jax.solver.updates`) and the
coarse-to-fine warm start (``warm_start=``, :mod:`potts_jax.solver.warm_start`)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from potts_jax.baselines import quadratic
from potts_jax import solver
from potts_jax.solver import loop as solver_loop
from potts_jax.solver import objective as solver_objective
from potts_jax.solver import updates
from potts_jax.solver import warm_start
from potts_jax.data import folder
from potts_jax.data import synthetic
# Optimizer objects built once: a new object retraces.
ADAM = optax.adam(0.1)
NESTEROV = optax.sgd(0.075, momentum=0.9, nesterov=True)

# name -> solver keyword options of that update.
OPTIONS = {
    "gd": dict(method="gd"),
    "gd_xla": dict(method="gd", kernel="xla"),
    "optax_adam": dict(method="optax", optimizer=ADAM),
    "optax_nesterov": dict(method="optax", optimizer=NESTEROV),
    "mirror": dict(method="mirror"),
    "mirror_momentum": dict(method="mirror_momentum"),
    # K < native.MIN_CLASSES here, so "auto" is the XLA loop.
    "gd_native": dict(method="gd", kernel="native"),
    "adam_native": dict(method="adam", kernel="native"),
    "adam_xla": dict(method="adam", kernel="xla"),
    "adam_coarse": dict(method="adam", warm_start="coarse",
                        warm_start_steps=10),
    "gd_coarse_native": dict(method="gd", warm_start="coarse",
                             warm_start_steps=10, kernel="native"),
}
# Options whose step divides by the gradient's RMS, which amplifies rounding
# differences where the gradient is ~0 (scan vs fori_loop fusion, native vs
# XLA): compared through their energies.
RMS_SCALED = ("optax_adam", "adam_native", "adam_xla", "adam_coarse")
CASES = {"cce_cd": dict(cross_entropy="cce", relaxation="cd"),
         "q_q": dict(cross_entropy="q", relaxation="q")}


@functools.lru_cache(maxsize=None)
def _photos(root, b=2, side=48, std=2.0):
  """``b`` GrabCut photos at ``side`` px with their real set1 scribbles."""
  examples = [folder.load_example(root, name, long_side=side)
              for name in folder.names(root)[:b]]
  image, labels, _ = folder.pad_batch(examples, (side, side))
  logits = np.zeros((b, side, side, 2), np.float32)
  for i, e in enumerate(examples):
    h, w = e.scribbles.shape
    logits[i, :h, :w] = synthetic.smooth_logits(h, w, 2, seed=i, std=std)
  return logits, image, labels


def _random_problem(b=2, h=9, w=11, k=3, seed=0):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(b, h, w, k)).astype(np.float32) * 2
  image = rng.uniform(0, 255, size=(b, h, w, 3)).astype(np.float32)
  labels = np.full((b, h, w), 255, np.int32)
  labels[:, 2, 1:4] = 0
  labels[:, 6, 5:9] = 1
  labels[0, 0, 0] = 2
  labels[:, :, -1] = 254
  return logits, image, labels


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_real_photos_scribbles_kept_simplex_energy_down(shared_data, option,
                                                         case):
  logits, image, labels = _photos(shared_data / "grabcut")
  opts = dict(**OPTIONS[option], **CASES[case])
  y, energies = solver.solve_with_energies(logits, image, labels,
                                           num_steps=40, **opts)
  y, energies = np.asarray(y), np.asarray(energies)
  # The energy at the network's prediction (with the reset); a warm start's
  # energies[0] is that of its coarse solution.
  start = solver.solve(logits, image, labels, num_steps=0, **CASES[case])
  e_start = np.asarray(solver.energy(start, logits, image, labels,
                                     **CASES[case]))
  assert np.all(energies[-1] < 0.9 * e_start), (e_start, energies[-1])
  assert np.all(energies[-1] <= energies[0] * (1 + 1e-6)), energies[[0, -1]]
  assert np.all(y >= 0)
  np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
  scribbled = labels < 254
  np.testing.assert_array_equal(y[scribbled], np.eye(2)[labels[scribbled]])
  # solve() gives the recorded iterate (the native loop up to rounding).
  # Adam divides by the gradient's RMS, which amplifies rounding differences
  # where the gradient is ~0 (scan vs fori_loop fusion): compare energies.
  y_solve = solver.solve(logits, image, labels, num_steps=40,
                         **dict(OPTIONS[option], **CASES[case]))
  if option in RMS_SCALED:
    np.testing.assert_allclose(
        solver.energy(y_solve, logits, image, labels, **CASES[case]),
        energies[-1], rtol=2e-3)
  else:
    np.testing.assert_allclose(y_solve, y, atol=2e-4)
  np.testing.assert_allclose(
      solver.energy(y, logits, image, labels, **CASES[case]), energies[-1],
      rtol=1e-5)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_one_hot_inputs_stay_finite(option):
  logits, image, labels = _random_problem()
  # ±1e4 logits: σ a vertex; half the vertices disagree with their neighbours.
  hard = np.where(np.arange(3) == (np.indices(labels.shape).sum(0) % 3)[
      ..., None], 1e4, -1e4).astype(np.float32)
  for case in CASES.values():
    y, energies = solver.solve_with_energies(
        hard, image, labels, num_steps=15, **OPTIONS[option], **case)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(energies))
    np.testing.assert_allclose(np.sum(y, -1), 1.0, atol=1e-5)
  del logits


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_changing_values_does_not_retrace(option):
  logits, image, labels = _random_problem()
  opts = OPTIONS[option]
  solver.solve(logits, image, labels, num_steps=3, **opts)
  size = solver_loop.solve_batch._cache_size()
  for eta, lam, t, mt, beta, at, decay in (
      (0.1, 1.0, 0.01, 0.02, 0.5, 0.05, 1.0),
      (0.9, 3.0, 0.2, 0.07, 0.95, 0.3, 0.01)):
    solver.solve(logits * 2, image + 1, labels, num_steps=3, eta=eta, lam=lam,
                 sigma_rgb=5.0, step_size=t, mirror_step_size=mt,
                 momentum=beta, adam_step_size=at, adam_decay=decay, **opts)
  assert solver_loop.solve_batch._cache_size() == size


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_inside_shard_map_each_device_equals_single_device(option):
  devices = np.array(jax.devices()[:4])
  assert len(devices) == 4, "conftest.py sets 4 fake CPU devices"
  mesh = jax.sharding.Mesh(devices, ("data",))
  spec = jax.sharding.PartitionSpec("data")
  logits, image, labels = _random_problem(b=4)
  fn = functools.partial(solver.solve, num_steps=8, **OPTIONS[option])
  shard_map = getattr(jax, "shard_map", None)
  if shard_map is None:  # jax < 0.7 kept it in experimental.
    from jax.experimental.shard_map import shard_map
  sharded = jax.jit(shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec),
                              out_specs=spec))(logits, image, labels)
  for d in range(4):  # device d holds image d; solve it alone.
    single = fn(logits[d:d + 1], image[d:d + 1], labels[d:d + 1])
    chex.assert_trees_all_close(sharded[d:d + 1], single, atol=1e-6)


def _prob(logits, image, labels, eta=0.3, lam=6.0):
  return solver_objective.build_problem(jnp.asarray(logits), image, labels, "nn4",
                               9.0, eta, lam)


@pytest.mark.parametrize("cross_entropy", updates.MIRROR_CROSS_ENTROPIES)
@pytest.mark.parametrize("relaxation", ["cd", "q", "bl", "cce"])
def test_mirror_direction_is_centred_autodiff_gradient(relaxation,
                                                       cross_entropy):
  logits, image, labels = _random_problem()
  prob = _prob(logits, image, labels)
  y = np.asarray(jnp.where(prob.labeled, prob.onehot, prob.sigma))
  v = y * np.random.default_rng(1).uniform(0.5, 2.0, size=y.shape[:-1] + (1,))
  d, r = updates.mirror_direction(jnp.asarray(v, jnp.float32), prob,
                                  relaxation, cross_entropy)
  g = jax.grad(lambda y: jnp.sum(solver.energy(
      y, logits, image, labels, relaxation=relaxation,
      cross_entropy=cross_entropy)))(jnp.asarray(y))
  g = np.asarray(g, np.float64)
  want = g - np.sum(y * g, -1, keepdims=True)
  want = want * (labels == 255)[..., None]  # scribbles and padding fixed.
  np.testing.assert_allclose(r, 1 / v.sum(-1), rtol=1e-6)
  np.testing.assert_allclose(d, want, rtol=2e-4, atol=2e-4)


def _energy_y(y, logits, image, labels, case):
  return solver.energy(y, logits, image, labels, **case)


def test_mirror_iterates_match_an_independent_recurrence():
  logits, image, labels = _random_problem()
  case = CASES["cce_cd"]
  scribbled = (labels < 254)
  onehot = np.eye(3)[np.where(scribbled, labels, 0)] * scribbled[..., None]
  free = (labels == 255)[..., None]
  grad = jax.grad(lambda y: jnp.sum(_energy_y(y, logits, image, labels, case)))
  t, beta = 0.04, 0.7
  for method in ("mirror", "mirror_momentum"):
    y = np.where(scribbled[..., None], onehot,
                 jax.nn.softmax(logits.astype(np.float64)))
    m = np.zeros_like(y)
    for _ in range(4):
      g = np.asarray(grad(jnp.asarray(y, jnp.float32)), np.float64)
      d = (g - np.sum(y * g, -1, keepdims=True)) * free
      m = (beta * m if method == "mirror_momentum" else 0) + d
      y = y * np.exp(-t * m)
      y = y / y.sum(-1, keepdims=True)
    got = solver.solve(logits, image, labels, num_steps=4, method=method,
                       mirror_step_size=t, momentum=beta, **case)
    np.testing.assert_allclose(got, y, atol=2e-5)


def test_optax_option_matches_an_autodiff_loop():
  # Nesterov SGD is linear in the gradients, so the match is tight (Adam's
  # division by the RMS amplifies rounding where the gradient is ~0).
  logits, image, labels = _random_problem()
  case = CASES["q_q"]
  scribbled = jnp.asarray(labels < 254)[..., None]
  onehot = jax.nn.one_hot(jnp.where(labels < 254, labels, 0), 3)

  def to_y(l):
    return jnp.where(scribbled, onehot, jax.nn.softmax(l))

  loss = lambda l: jnp.sum(_energy_y(to_y(l), logits, image, labels, case))
  l, state = jnp.asarray(logits), NESTEROV.init(jnp.asarray(logits))
  for _ in range(6):
    updates_, state = NESTEROV.update(jax.grad(loss)(l), state, l)
    l = optax.apply_updates(l, updates_)
  got = solver.solve(logits, image, labels, num_steps=6, method="optax",
                     optimizer=NESTEROV, **case)
  np.testing.assert_allclose(got, to_y(l), atol=2e-5)


def test_mirror_momentum_reaches_the_exact_quadratic_optimum(shared_data):
  logits, image, labels = _photos(shared_data / "grabcut")
  exact = quadratic.solve_exact(logits, image, labels, eta=0.3, lam=6.0)
  free = labels == 255
  gd = solver.solve(logits, image, labels, num_steps=200, **CASES["q_q"])
  fast = solver.solve(logits, image, labels, num_steps=200,
                      method="mirror_momentum", **CASES["q_q"])
  jac_gd = quadratic.soft_jaccard(gd, exact, free)
  jac_fast = quadratic.soft_jaccard(fast, exact, free)
  # Measured: 0.989 vs 0.947 (48 px, logit std 2, default t 0.03, β 0.8).
  assert jac_fast > 0.985 and jac_fast > jac_gd + 0.03, (jac_fast, jac_gd)


def test_default_is_the_papers_plain_descent():
  logits, image, labels = _random_problem()
  plain = solver.solve(logits, image, labels, num_steps=7, kernel="xla")
  explicit = solver.solve(logits, image, labels, num_steps=7, method="gd",
                          step_size=0.075, kernel="xla")
  np.testing.assert_array_equal(plain, explicit)
  sgd = solver.solve(logits, image, labels, num_steps=7,
                     optimizer=optax.sgd(0.075))  # optimizer alone: optax.
  np.testing.assert_allclose(sgd, plain, atol=2e-6)


@pytest.mark.parametrize("options, match", [
    (dict(method="newton"), "unknown method"),
    (dict(method="optax"), "needs an optax optimizer"),
    (dict(method="mirror", optimizer=ADAM), "takes no optimizer"),
    (dict(method="mirror", cross_entropy="rce"), "supports cross_entropy"),
    (dict(method="mirror_momentum", neighborhood="dense", relaxation="bl"),
     "grid neighbourhoods"),
    (dict(method="adam", optimizer=ADAM), "takes no optimizer"),
    (dict(warm_start="fine"), "unknown warm_start"),
    (dict(warm_start="coarse", neighborhood="dense", relaxation="bl"),
     "grid neighbourhoods"),
    (dict(warm_start="coarse", warm_start_steps=-1), "warm_start_steps"),
    (dict(warm_start="coarse", warm_start_steps=2.5), "warm_start_steps"),
])
def test_bad_method_options_name_the_problem(options, match):
  logits, image, labels = _random_problem()
  with pytest.raises(ValueError, match=match):
    solver.solve(logits, image, labels, num_steps=2, **options)


def _smooth_problem(b=2, h=9, w=11, k=3):
  # A smooth image: every pair has a sizeable affinity, so that no gradient
  # is ~0 at the start (where Adam's first step, g / |g|, is rounding noise).
  logits, image, labels = _random_problem(b, h, w, k)
  return logits, image * 0.1, labels


@pytest.mark.parametrize("case", sorted(CASES))
def test_adam_matches_optax_adam_on_the_logits(case):
  logits, image, labels = _smooth_problem()
  for kernel in ("native", "xla"):  # the native loop and the XLA loop
    got = solver.solve(logits, image, labels, num_steps=20, method="adam",
                       kernel=kernel, **CASES[case])
    want = solver.solve(logits, image, labels, num_steps=20, method="optax",
                        optimizer=ADAM, **CASES[case])
    np.testing.assert_allclose(got, want, atol=5e-5)


def test_adam_decay_is_the_geometric_step_schedule():
  logits, image, labels = _smooth_problem()
  n, t, decay = 12, 0.2, 0.05
  schedule = optax.adam(lambda c: t * decay ** (c / (n - 1)))
  for kernel in ("native", "xla"):
    got = solver.solve(logits, image, labels, num_steps=n, method="adam",
                       adam_step_size=t, adam_decay=decay, kernel=kernel)
    want = solver.solve(logits, image, labels, num_steps=n, method="optax",
                        optimizer=schedule)
    np.testing.assert_allclose(got, want, atol=5e-5)


def test_adam_reaches_200_gd_steps_in_50_and_the_exact_optimum(shared_data):
  # The options' goal on two real photos (48 px, so weaker than the benchmark).
  logits, image, labels = _photos(shared_data / "grabcut")
  for case in CASES.values():
    gd = solver.solve(logits, image, labels, num_steps=200, **case)
    fast = solver.solve(logits, image, labels, num_steps=50, method="adam",
                        **case)
    e_gd, e_fast = (np.asarray(solver.energy(y, logits, image, labels,
                                             **case)) for y in (gd, fast))
    assert np.all(e_fast <= e_gd), (e_fast, e_gd)
  exact = quadratic.solve_exact(logits, image, labels, eta=0.3, lam=6.0)
  y = solver.solve(logits, image, labels, num_steps=200, method="adam",
                   **CASES["q_q"])
  assert quadratic.soft_jaccard(y, exact, labels == 255) > 0.99


def test_coarse_inputs_pool_blocks():
  k = 3
  labels = np.full((1, 3, 5), 255, np.int32)
  labels[0, 0, 0] = 1  # block (0, 0): one scribble -> class 1
  labels[0, 0, 2:4] = [2, 2]  # block (0, 1): 2, 2 and 0 -> the majority 2
  labels[0, 1, 2] = 0
  labels[0, 2, :] = 254  # row 2 (the padded block row): all padding
  labels[0, 2, 4] = 255  # ... but for one valid pixel
  labels[0, 0:2, 4] = 254  # block (0, 2): padding only (with pad column)
  image = np.arange(15, dtype=np.float32).reshape(1, 3, 5, 1) * np.ones(3)
  sigma = jax.nn.softmax(np.random.default_rng(0).normal(size=(1, 3, 5, k)))
  logits_c, image_c, labels_c = warm_start.coarse_inputs(sigma, image, labels)
  chex.assert_shape([logits_c, image_c, labels_c],
                    [(1, 2, 3, k), (1, 2, 3, 3), (1, 2, 3)])
  np.testing.assert_array_equal(labels_c[0], [[1, 2, 254], [254, 254, 255]])
  # Image and σ: means over the valid pixels of each block.
  np.testing.assert_allclose(image_c[0, 0, 0], [3.0] * 3)  # (0 + 1 + 5 + 6)/4
  np.testing.assert_allclose(image_c[0, 1, 2], [14.0] * 3)  # the one valid
  np.testing.assert_allclose(jax.nn.softmax(logits_c)[0, 0, 1],
                             np.mean(sigma[0, :2, 2:4], axis=(0, 1)),
                             rtol=1e-5)
  np.testing.assert_allclose(jax.nn.softmax(logits_c)[0, 0, 2], 1 / k,
                             rtol=1e-5)


def test_coarse_warm_start_lowers_the_energy_of_few_fine_steps(shared_data):
  logits, image, labels = _photos(shared_data / "grabcut")
  case = CASES["cce_cd"]
  energy = lambda y: np.asarray(solver.energy(y, logits, image, labels,
                                              **case))
  plain = solver.solve(logits, image, labels, num_steps=10, method="adam",
                       **case)
  warm = solver.solve(logits, image, labels, num_steps=10, method="adam",
                      warm_start="coarse", warm_start_steps=25, **case)
  assert np.all(energy(warm) < energy(plain)), (energy(warm), energy(plain))
  # Zero coarse steps: the start is the upsampled pooled prediction.
  zero = solver.solve(logits, image, labels, num_steps=0,
                      warm_start="coarse", warm_start_steps=0, **case)
  np.testing.assert_allclose(np.sum(zero, -1), 1.0, atol=1e-5)
