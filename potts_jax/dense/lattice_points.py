"""Host-side lattice counts: how many lattice points a batch needs.

:func:`count_points` runs the key sort of
:func:`potts_jax.dense.lattice.build_lattice` without its neighbour search and
returns, per point set, the number of distinct lattice points, on the host.
The static capacity of a lattice is chosen from these counts
(:func:`potts_jax.dense.bilateral.choose_capacity`); the key-range check it
applies is :func:`potts_jax.dense.lattice.check_key_range`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from potts_jax.dense.lattice import check_features, check_key_range, sorted_keys

Array = jnp.ndarray


@jax.jit
def _count(features):
  def one(f):
    _, _, new, _, _, key_range = sorted_keys(f)
    return jnp.sum(new.astype(jnp.int32)), key_range
  return jax.vmap(one)(features)


def count_points(features: Array) -> np.ndarray:
  """``[B]`` lattice points each point set needs (no neighbour search).

  Runs the lattice's key sort only, so it is cheaper than
  :func:`potts_jax.dense.lattice.build_lattice` (benchmarks/RESULTS.md); call
  it on concrete arrays (it returns numpy).

  Args:
    features: ``[B, N, 5]`` positions in units of the kernel's std.

  Raises:
    ValueError: if the features span too wide a range
      (:func:`potts_jax.dense.lattice.check_key_range`).
  """
  points, key_range = _count(check_features(features))
  check_key_range(key_range)
  return np.asarray(points)
