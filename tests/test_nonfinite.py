"""A diverged step is not applied; the run stops and keeps finite checkpoints.

:func:`potts_jax.steps.guard_nonfinite` is checked against hand-made states
(a NaN loss, an infinite gradient norm, an overflowing parameter), and the
demo's ``runlocal`` config is trained with a learning rate that makes it
diverge: the run must stop within ``max_nonfinite_steps`` steps of the
divergence, name the steps and a non-finite term, and leave only finite
checkpoints behind.
"""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from potts_jax import checkpointing
from potts_jax import steps
from potts_jax import train


def _states(new_param=2.0):
  old = {"params": {"w": jnp.ones(3)}, "batch_stats": {"m": jnp.zeros(2)},
         "opt_state": (jnp.zeros(3),), "step": jnp.int32(4),
         "nonfinite_steps": jnp.int32(1), "rng": jnp.zeros(2, jnp.uint32)}
  new = dict(old, params={"w": jnp.full(3, new_param)},
             batch_stats={"m": jnp.ones(2)}, opt_state=(jnp.ones(3),))
  return old, new


def test_a_finite_step_is_applied_and_resets_the_count():
  old, new = _states()
  state, metrics = steps.guard_nonfinite(
      old, new, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(3.0)})
  np.testing.assert_array_equal(state["params"]["w"], 2.0)
  np.testing.assert_array_equal(state["opt_state"][0], 1.0)
  assert int(state["step"]) == 5 and int(state["nonfinite_steps"]) == 0
  assert int(metrics["nonfinite_steps"]) == 0


@pytest.mark.parametrize("metrics, new_param", [
    ({"loss": jnp.float32(np.nan), "grad_norm": jnp.float32(1.0)}, 2.0),
    ({"loss": jnp.float32(1.0), "grad_norm": jnp.float32(np.inf)}, 2.0),
    ({"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}, np.inf),
], ids=["nan_loss", "inf_gradient", "overflowing_parameter"])
def test_a_nonfinite_step_keeps_the_state_and_counts(metrics, new_param):
  old, new = _states(new_param)
  state, out = steps.guard_nonfinite(old, new, metrics)
  for key in ("params", "batch_stats", "opt_state"):
    for a, b in zip(_leaves(state[key]), _leaves(old[key])):
      np.testing.assert_array_equal(a, b)
  assert int(state["step"]) == 5  # The batch is consumed.
  assert int(state["nonfinite_steps"]) == 2 == int(out["nonfinite_steps"])


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


class _Checkpoints:
  directory = "/nowhere/checkpoints"

  def __init__(self, steps_=()):
    self._steps = list(steps_)

  def all_steps(self):
    return self._steps


def test_check_nonfinite_stops_after_the_limit_and_names_everything():
  c = demo.get_config("runlocal")
  c.max_nonfinite_steps = 3
  scalars = {"loss": float("nan"), "pce": 0.5, "nonfinite_steps": 2.0}
  steps.check_nonfinite(c, 7, dict(scalars), _Checkpoints([4]))  # 2 < 3.
  with pytest.raises(steps.NonFiniteError) as e:
    steps.check_nonfinite(c, 8, dict(scalars, nonfinite_steps=3.0),
                          _Checkpoints([4]))
  message = str(e.value)
  assert "steps 6-8" in message and "loss nan" in message
  assert "/nowhere/checkpoints/4" in message
  c.nonfinite = "skip"
  steps.check_nonfinite(c, 9, dict(scalars, nonfinite_steps=4.0),
                        _Checkpoints([4]))


def test_bad_policy_is_a_config_error():
  c = demo.get_config("runlocal")
  c.nonfinite = "ignore"
  with pytest.raises(ValueError, match="config.nonfinite"):
    steps.check_config(c)
  c.nonfinite = "stop"
  c.max_nonfinite_steps = 0
  with pytest.raises(ValueError, match="config.max_nonfinite_steps"):
    steps.check_config(c)


@pytest.mark.slow
def test_a_diverging_run_stops_and_leaves_finite_checkpoints(tmp_path):
  c = demo.get_config("runlocal")
  c.stages = ()
  c.total_steps = 12
  c.checkpoint_every = 1
  c.keep_checkpoints = 20
  c.optim.lr = 1e30  # The first update throws the parameters far away.
  with pytest.raises(steps.NonFiniteError) as e:
    train.train_and_evaluate(c, str(tmp_path))
  message = str(e.value)
  assert "non-finite" in message and "nan" in message.lower()
  first, last = (int(x) for x in
                 message.split("steps ", 1)[1].split(" ", 1)[0].split("-"))
  assert last - first + 1 == c.max_nonfinite_steps and last < c.total_steps
  saved = checkpointing.Checkpointer(tmp_path / "checkpoints").all_steps()
  assert saved and max(saved) < last
  for step in saved:
    with ocp.StandardCheckpointer() as checkpointer:
      arrays = checkpointer.restore(
          tmp_path / "checkpoints" / str(step) / checkpointing.STATE)
    for value in _leaves(arrays):
      if np.issubdtype(value.dtype, np.floating):
        assert np.all(np.isfinite(value)), step
