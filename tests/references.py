"""Shared float64 numpy references and random inputs of the test suite.

Every reference below is written straight from the paper's formulas
(docs/architecture.md) and never calls potts_jax to compute an expected value (it only reads the
documented constant ``potts.EPS`` for :data:`CAP`):

  Relaxations P(p, q): bl 1 - pᵀq · q ½‖p - q‖² · nq 1 - pᵀq/(‖p‖‖q‖) ·
  cce -ln pᵀq · cd -ln(pᵀq/(‖p‖‖q‖)) · lq -ln(1 - ½‖p - q‖²).

  Cross-entropies H(σ, y): ce -Σ y ln σ · rce -Σ σ ln y · cce -ln σᵀy ·
  q ½‖σ - y‖².

  Grid pairs: the 4- or 8-neighbours among all pairs of pixels of each image
  (explicit loops), ``w_ij = exp(-‖I_i - I_j‖² / (2 σ²))``, diagonals divided
  by √2, pairs touching a padding pixel (label 254) dropped.

The last section is the library-side harness the tests share (padding to
:data:`ROWS` rows, one jitted call per family of functions): it evaluates the
functions its caller passes and computes no expected value.

A helper module, not a test module: it defines no ``test_`` functions.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from potts_jax import potts
RELAXATIONS = ("bl", "q", "nq", "cce", "cd", "lq")
# The relaxations that are infinite at orthogonal one-hots.
LOG_RELAXATIONS = ("cce", "cd", "lq")
CROSS_ENTROPIES = ("ce", "rce", "cce", "q")
UNLABELED = 255
PADDING = 254
# The documented ``[B, H, W, D]`` layout: pair {i, j} sits at pixel i, slot d,
# where j = i + OFFSETS[neighborhood][d].
OFFSETS = {
    "nn4": ((0, 1), (1, 0)),
    "nn8": ((0, 1), (1, 0), (1, 1), (1, -1)),
}
# The documented finite value of an infinite relaxation or log, -ln EPS.
CAP = float(-np.log(potts.EPS))
# Rows of every padded ``[N, K]`` evaluation (see :class:`RowBatch`).
ROWS = 512


# ----------------------------------------------------------------------------
# Relaxations and cross-entropies.


def relaxation(name, p, q):
  """float64 Potts relaxation P(p, q) over the last axis.

  Args:
    name: one of :data:`RELAXATIONS`.
    p: ``[..., K]`` points of the simplex.
    q: ``[..., K]``, broadcastable against ``p``.

  Returns:
    float64 ``[...]``; +inf where a log relaxation is infinite.
  """
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  dot = np.sum(p * q, axis=-1)
  norms = np.linalg.norm(p, axis=-1) * np.linalg.norm(q, axis=-1)
  sq_dist = np.sum((p - q) ** 2, axis=-1)
  with np.errstate(divide="ignore"):
    if name == "bl":
      return 1.0 - dot
    if name == "q":
      return 0.5 * sq_dist
    if name == "nq":
      return 1.0 - dot / norms
    if name == "cce":
      return -np.log(dot)
    if name == "cd":
      return -np.log(dot / norms)
    if name == "lq":
      return -np.log(1.0 - 0.5 * sq_dist)
  raise ValueError(f"unknown relaxation {name!r}")


def cross_entropy(name, sigma, y):
  """float64 cross-entropy H(σ, y) over the last axis (σ first).

  Args:
    name: one of :data:`CROSS_ENTROPIES`.
    sigma: ``[..., K]`` points of the simplex.
    y: ``[..., K]``, broadcastable against ``sigma``.

  Returns:
    float64 ``[...]``.
  """
  sigma = np.asarray(sigma, np.float64)
  y = np.asarray(y, np.float64)
  with np.errstate(divide="ignore"):
    if name == "ce":
      return -np.sum(y * np.log(sigma), axis=-1)
    if name == "rce":
      return -np.sum(sigma * np.log(y), axis=-1)
    if name == "cce":
      return -np.log(np.sum(sigma * y, axis=-1))
    if name == "q":
      return 0.5 * np.sum((sigma - y) ** 2, axis=-1)
  raise ValueError(f"unknown cross-entropy {name!r}")


def central_differences(fn, x, y, rel_step=1e-5):
  """Central differences of ``sum(fn(x, y))`` w.r.t. ``x`` and ``y``.

  ``fn`` maps ``[N, K]`` rows to ``[N]`` independently, so coordinate ``k`` of
  every row is perturbed at once. Each coordinate is stepped by ``rel_step``
  times itself (all are > 0 inside the simplex), which keeps the stencil valid
  for tiny entries.

  Args:
    fn: float64 function of two ``[N, K]`` arrays, one value a row.
    x: ``[N, K]``.
    y: ``[N, K]``.
    rel_step: the relative step.

  Returns:
    ``(d/dx, d/dy)``, float64 arrays shaped like ``x`` and ``y``.
  """
  args = [np.asarray(x, np.float64), np.asarray(y, np.float64)]
  grads = []
  for which in (0, 1):
    grad = np.zeros_like(args[which])
    for k in range(args[which].shape[-1]):
      plus, minus = list(args), list(args)
      step = np.zeros_like(args[which])
      step[..., k] = rel_step * args[which][..., k]
      plus[which] = args[which] + step
      minus[which] = args[which] - step
      grad[..., k] = (fn(*plus) - fn(*minus)) / (2 * step[..., k])
    grads.append(grad)
  return tuple(grads)


def softmax(logits):
  """float64 softmax over the last axis."""
  logits = np.asarray(logits, np.float64)
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits):
  """float64 log-softmax over the last axis."""
  logits = np.asarray(logits, np.float64)
  z = logits - logits.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------
# Grid pairs and the losses.


def grid_pairs(image, labels, neighborhood, sigma_rgb):
  """Every unordered pair of neighbouring pixels, by brute force.

  Explicit double loop over all pixel pairs of each image.

  Args:
    image: ``[B, H, W, C]`` colours (any dtype; differences are float64).
    labels: ``[B, H, W]``; pairs touching a padding pixel (254) are dropped.
    neighborhood: ``"nn4"`` or ``"nn8"``.
    sigma_rgb: the colour scale σ of the weights.

  Returns:
    ``{(b, i, j): w_ij}`` with pixels ``i = (r, c)`` before ``j`` in raster
    order, in raster order of ``(b, i, j)``.
  """
  if neighborhood not in OFFSETS:
    raise ValueError(f"unknown neighborhood {neighborhood!r}")
  batch, height, width = labels.shape
  pixels = [(r, c) for r in range(height) for c in range(width)]
  pairs = {}
  for b in range(batch):
    for a, i in enumerate(pixels):
      for j in pixels[a + 1 :]:
        dr, dc = abs(j[0] - i[0]), abs(j[1] - i[1])
        step = dr + dc if neighborhood == "nn4" else max(dr, dc)
        if step != 1:
          continue
        if PADDING in (labels[(b, *i)], labels[(b, *j)]):
          continue
        diff = np.asarray(image[(b, *i)], np.float64) - image[(b, *j)]
        w = math.exp(-float(diff @ diff) / (2.0 * sigma_rgb**2))
        if dr == 1 and dc == 1:
          w /= math.sqrt(2.0)
        pairs[(b, i, j)] = w
  return pairs


def _slot(i, j, offsets):
  """Where the documented layout stores the pair {i, j}: ``(pixel, d)``."""
  for d, (dy, dx) in enumerate(offsets):
    if (i[0] + dy, i[1] + dx) == j:
      return i, d
    if (j[0] + dy, j[1] + dx) == i:
      return j, d
  raise AssertionError((i, j))


def grid_weights(image, labels, neighborhood, sigma_rgb):
  """:func:`grid_pairs` laid out as float64 ``[B, H, W, D]`` (see OFFSETS).

  Slots without a pair (padding, outside the image) hold 0.
  """
  offsets = OFFSETS[neighborhood]
  out = np.zeros(labels.shape + (len(offsets),))
  pairs = grid_pairs(image, labels, neighborhood, sigma_rgb)
  for (b, i, j), w in pairs.items():
    (r, c), d = _slot(i, j, offsets)
    assert out[b, r, c, d] == 0.0, "two pairs in one slot"
    out[b, r, c, d] = w
  return out


def pair_energy(y, pairs, name):
  """``[B]``: Σ over ``pairs`` (see :func:`grid_pairs`) of w_ij P(y_i, y_j)."""
  energy = np.zeros(y.shape[0])
  for (b, i, j), w in pairs.items():
    energy[b] += w * relaxation(name, y[(b, *i)], y[(b, *j)])
  return energy


def partial_cross_entropy(logits, labels):
  """Mean over scribbled pixels of -ln softmax at the label; 0 if none."""
  log_sigma = log_softmax(logits)
  total, count = 0.0, 0
  for b, r, c in np.ndindex(*labels.shape):
    label = int(labels[b, r, c])
    if label in (UNLABELED, PADDING):
      continue
    total -= log_sigma[b, r, c, label]
    count += 1
  return total / count if count else 0.0


def unlabeled_mean(values, labels):
  """Mean of ``values[b, r, c]`` over the unlabeled (255) pixels; 0 if none."""
  picked = [
      values[idx]
      for idx in np.ndindex(*labels.shape)
      if labels[idx] == UNLABELED
  ]
  return float(np.mean(picked)) if picked else 0.0


def self_labeling_loss(logits, y, labels, name, eta):
  """Partial cross-entropy + η · mean over 255 pixels of H(softmax, y)."""
  h = cross_entropy(name, softmax(logits), y)
  return partial_cross_entropy(logits, labels) + eta * unlabeled_mean(h, labels)


def regularized_loss(
    logits, image, labels, name, neighborhood, eta, lam, sigma_rgb
):
  """The regularised loss (paper eq. 4) with relaxation ``name``.

  Partial cross-entropy + (η · Σ entropy over the 255 pixels + λ · Σ over the
  grid pairs of w_ij P(σ_i, σ_j)) / the number of 255 pixels.
  """
  sigma = softmax(logits)
  entropy = -np.sum(sigma * log_softmax(logits), axis=-1)
  pairs = grid_pairs(image, labels, neighborhood, sigma_rgb)
  potts_sum = float(np.sum(pair_energy(sigma, pairs, name)))
  num_unlabeled = max(int(np.sum(labels == UNLABELED)), 1)
  return (
      partial_cross_entropy(logits, labels)
      + eta * unlabeled_mean(entropy, labels)
      + lam * potts_sum / num_unlabeled
  )


# ----------------------------------------------------------------------------
# Random inputs.


def simplex(rng, shape, k, alpha=1.0):
  """float32 Dirichlet(α) points of the simplex, ``[*shape, k]``."""
  return rng.dirichlet(np.full(k, alpha), size=shape).astype(np.float32)


def near_vertex(rng, n, k, vertex, eps, spread="uniform"):
  """``[n, k]`` float32 points ``(1-ε) e_vertex + ε r``, r on the simplex.

  Args:
    rng: a numpy Generator.
    n: the number of points.
    k: the number of classes.
    vertex: the index of the vertex.
    eps: ε.
    spread: ``"uniform"``: r uniform over the other classes, the point
      (.., 1-ε, ε/(K-1), ..), no draw; ``"random"``: r from a flat Dirichlet;
      ``"mixed"``: as ``"random"``, then the first row uniform.

  Returns:
    ``[n, k]`` float32.
  """
  if spread == "uniform":
    r = np.full((n, k), 1.0 / (k - 1))
    r[:, vertex] = 0.0
  else:
    r = rng.dirichlet(np.ones(k), size=n)
    if spread == "mixed":
      r[0] = 1.0 / (k - 1)
      r[0, vertex] = 0.0
  return ((1.0 - eps) * np.eye(k)[vertex] + eps * r).astype(np.float32)


def floor_simplex(x, lo=1e-4):
  """Moves simplex points away from the boundary: every entry >= ~lo."""
  x = np.maximum(np.asarray(x, np.float64), lo)
  return (x / x.sum(axis=-1, keepdims=True)).astype(np.float32)


def one_hot_pairs(k):
  """All ``k*k`` pairs of vertices ``(e_i, e_j)``, i major.

  Returns:
    ``(p, q, equal)``: float32 ``[k*k, k]`` one-hots and the bool ``[k*k]``
    mask of the equal pairs (the others are orthogonal).
  """
  eye = np.eye(k, dtype=np.float32)
  i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
  return eye[i.ravel()], eye[j.ravel()], (i == j).ravel()


def saturated_logits(rng, shape, k, scale=1e4):
  """float32 ``±scale`` logits, +scale at a random class: softmax one-hots."""
  one_hot = np.eye(k, dtype=np.float32)[rng.integers(0, k, shape)]
  return scale * (2 * one_hot - 1)


def random_labels(rng, shape, k, p_scribble=0.3, p_padding=0.15):
  """int32 labels: classes ``0..k-1``, 255 (unlabeled) and 254 (padding)."""
  u = rng.random(shape)
  labels = np.full(shape, UNLABELED, np.int32)
  labels[u < p_scribble] = rng.integers(0, k, shape)[u < p_scribble]
  labels[u > 1.0 - p_padding] = PADDING
  return labels


def add_padding(labels, pixel):
  """Pads ``[B >= 2, H, W]`` labels in place, as crops do; returns them.

  A two-column band on the right of image 0, the last row of image 1, and
  the single pixel ``(1, *pixel)``.
  """
  labels[0, :, -2:] = PADDING
  labels[1, -1, :] = PADDING
  labels[(1, *pixel)] = PADDING
  return labels


def smooth_image(
    rng, shape, noise, left=0, right=0, flat_patch=False, dtype=np.float32
):
  """RGB in 0..255 with small neighbour differences, so weights are not ~0.

  Args:
    rng: a numpy Generator.
    shape: ``(B, H, W)``.
    noise: the per-pixel noise is uniform in ``-noise..noise``.
    left: added to the left half of the columns (an edge).
    right: added to the right half of the columns (an edge).
    flat_patch: copies pixel (0, 0) to the 2×3 top-left corner (w = 1).
    dtype: the dtype of the result.

  Returns:
    ``[B, H, W, 3]`` of ``dtype``.
  """
  base = rng.integers(40, 200, (shape[0], 1, 1, 3))
  image = base + rng.integers(-noise, noise + 1, shape + (3,))
  image[:, :, : shape[2] // 2] += left
  image[:, :, shape[2] // 2 :] += right
  if flat_patch:
    image[:, :2, :3] = image[:, :1, :1]
  return np.clip(image, 0, 255).astype(dtype)


# ----------------------------------------------------------------------------
# Library-side harness (evaluates what the caller passes).


def pad_rows(x, fill=None):
  """``[N, K]`` to ``[ROWS, K]`` float32: appends rows of ``fill``.

  ``fill`` defaults to 1/K (a simplex point); pass 0.0 for logits.
  """
  x = np.asarray(x, np.float32)
  assert x.ndim == 2 and x.shape[0] <= ROWS, x.shape
  fill = 1.0 / x.shape[1] if fill is None else fill
  rows = np.full((ROWS - x.shape[0], x.shape[1]), fill, np.float32)
  return jnp.asarray(np.concatenate([x, rows]))


def sum_grads(fn, x, y):
  """Gradients of ``sum(fn(x, y))`` w.r.t. ``x`` and ``y``."""
  return jax.grad(lambda x, y: jnp.sum(fn(x, y)), argnums=(0, 1))(x, y)


def logit_grads(fn, lx, ly):
  """``sum fn(softmax lx, softmax ly)`` and its gradients w.r.t. the logits."""

  def total(lx, ly):
    return jnp.sum(fn(jax.nn.softmax(lx, axis=-1), jax.nn.softmax(ly, axis=-1)))

  return jax.value_and_grad(total, argnums=(0, 1))(lx, ly)


class RowBatch:
  """``[N, K]`` evaluations of a named family of functions of two inputs.

  All members run in one jitted call on inputs padded to :data:`ROWS` rows:
  one compilation per K instead of one per function, shape and primitive.
  Rows are independent, so padding changes no value or gradient of the kept
  rows. The ``all_*`` attributes take padded inputs and give every member.
  """

  def __init__(self, make, names):
    """Builds the jitted evaluations.

    Args:
      make: maps a name to its function of two ``[..., K]`` arrays.
      names: the names of the family.
    """
    self.names = tuple(names)
    self.all_values = jax.jit(
        lambda x, y: jnp.stack([make(n)(x, y) for n in self.names])
    )
    self.all_grads = jax.jit(
        lambda x, y: [sum_grads(make(n), x, y) for n in self.names]
    )
    self.all_logit_grads = jax.jit(
        lambda lx, ly: [logit_grads(make(n), lx, ly) for n in self.names]
    )

  def values(self, name, x, y):
    """``name(x, y)`` for ``[N, K]`` inputs, as numpy ``[N]``."""
    out = self.all_values(pad_rows(x), pad_rows(y))[self.names.index(name)]
    return np.asarray(out)[: len(x)]

  def grads(self, name, x, y):
    """Gradients of ``sum name(x, y)`` w.r.t. ``[N, K]`` x and y (numpy)."""
    gx, gy = self.all_grads(pad_rows(x), pad_rows(y))[self.names.index(name)]
    return np.asarray(gx)[: len(x)], np.asarray(gy)[: len(y)]

  def logit_grads(self, name, lx, ly):
    """``sum name(softmax lx, softmax ly)`` and its logit gradients (numpy).

    The value sums over the padding rows too (zero logits: uniform points).
    """
    value, (glx, gly) = self.all_logit_grads(
        pad_rows(lx, 0.0), pad_rows(ly, 0.0)
    )[self.names.index(name)]
    return value, np.asarray(glx)[: len(lx)], np.asarray(gly)[: len(ly)]
