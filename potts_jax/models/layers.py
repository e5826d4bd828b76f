"""Building blocks shared by the backbones and DeepLabV3+ (Flax NNX, NHWC).

* :class:`Seq`: an ``nnx.List`` that applies its elements in order, the
  counterpart of ``torch.nn.Sequential``. Its elements appear in ``nnx.state``
  paths under integer keys (``('features', 3, 'conv', 1, 0, 'kernel')``), so
  that attribute paths spell torchvision's ``state_dict`` keys
  (``features.3.conv.1.0.weight``). Parameter-free elements (``jax.nn.relu``)
  keep their index, as in torch, and hold no state.
* :func:`conv` / :func:`batch_norm`: ``nnx.Conv`` with PyTorch's symmetric
  padding and ``nnx.BatchNorm`` with PyTorch's BN constants.
* :func:`torch_keys`: the table torch ``state_dict`` key -> (NNX state path,
  kind) for every Conv, Linear and BatchNorm of a module; :func:`torch_to_flax`
  turns a torch tensor of a given kind into our layout.

Padding: every conv pads ``dilation * (k - 1) // 2`` on each side, exactly as
torchvision (``padding=dilation`` for 3x3, 3 for the 7x7 stem), never
``'SAME'``: for stride 2 on an even size, ``'SAME'`` pads (0, 1) where torch
pads (1, 1), which would shift every pretrained feature by one pixel.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from potts_jax import platforms

Array = jax.Array
Path = tuple  # an nnx.state path: str attribute names and int list indices

#: PyTorch BN ``momentum=0.1`` updates ``r = 0.9 r + 0.1 batch``; flax writes
#: the same update as ``r = momentum r + (1 - momentum) batch``.
BN_MOMENTUM = 0.9
#: PyTorch's BN epsilon.
BN_EPSILON = 1e-5

#: torchvision's conv init (``kaiming_normal_(mode='fan_out')``, untruncated).
KAIMING_FAN_OUT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
#: ``nn.init.kaiming_normal_`` with its defaults (fan_in), used by DeepLabV3+
#: heads of the PyTorch lineage.
KAIMING_FAN_IN = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")

#: Kinds of :func:`torch_keys` entries -> what :func:`torch_to_flax` does.
KINDS = {
    "conv": "OIHW -> HWIO (transpose 2, 3, 1, 0)",
    "depthwise": "[C, 1, kh, kw] -> [kh, kw, 1, C] (transpose 2, 3, 1, 0)",
    "linear": "[out, in] -> [in, out]",
    "bias": "conv/linear bias, as is",
    "bn_scale": "BN weight -> scale",
    "bn_bias": "BN bias -> bias",
    "bn_mean": "BN running_mean -> mean",
    "bn_var": "BN running_var -> var",
}


class Seq(nnx.List):
  """``torch.nn.Sequential`` in NNX: ``Seq([f0, f1, ...])(x) = ... f1(f0(x))``.

  Subclasses override ``__init__`` to build their layers and pass them to
  ``super().__init__``; element ``i`` sits at state path key ``i`` (an int).
  """

  def __call__(self, x: Array) -> Array:
    for layer in self:
      x = layer(x)
    return x


def conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    groups: int = 1,
    use_bias: bool = False,
    kernel_init: Callable = KAIMING_FAN_OUT,
    rngs: nnx.Rngs,
) -> nnx.Conv:
  """A ``kernel x kernel`` conv with torch's padding ``dilation (k - 1) // 2``.

  ``groups == in_ch`` is a depthwise conv: kernel ``[k, k, 1, in_ch]``.
  Maps ``[B, H, W, in_ch] -> [B, H', W', out_ch]`` with
  ``H' = floor((H + 2p - dilation (k - 1) - 1) / stride) + 1``.
  """
  pad = dilation * (kernel - 1) // 2
  cls = DepthwiseConv if groups == in_ch == out_ch and groups > 1 else nnx.Conv
  return cls(
      in_ch,
      out_ch,
      (kernel, kernel),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      kernel_dilation=(dilation, dilation),
      feature_group_count=groups,
      use_bias=use_bias,
      kernel_init=kernel_init,
      rngs=rngs,
  )


class DepthwiseConv(nnx.Conv):
  """A depthwise ``nnx.Conv`` that runs as a sum of shifted products on CPU.

  Same parameters, state paths and result as ``nnx.Conv`` with
  ``feature_group_count == in_features`` (tests/test_models.py). XLA:CPU's
  grouped convolution, and above all its gradient, is several times slower
  than ``sum_{dy, dx} w[dy, dx] * x[.. + dy, .. + dx]`` written out (9
  strided slices for 3x3, fused elementwise), which is what this computes
  where the program runs on the CPU; other platforms keep the library
  convolution. The choice is made when the program is lowered
  (:func:`potts_jax.platforms.on_cpu`), so the compiled program holds only
  the chosen form.
  """

  def __call__(self, inputs: Array) -> Array:
    if inputs.ndim != 4:  # unbatched [H, W, C]: the library convolution
      return super().__call__(inputs)
    return platforms.on_cpu(self._shifted, super().__call__, inputs)

  def _shifted(self, inputs: Array) -> Array:
    """The CPU form: ``[B, H, W, C] -> [B, H', W', C]`` by shifted products."""
    out = shifted_depthwise(inputs, jnp.asarray(self.kernel[...], inputs.dtype),
                            strides=self.strides, padding=self.padding,
                            dilation=self.kernel_dilation)
    if self.bias is not None:
      out = out + jnp.asarray(self.bias[...], out.dtype)
    return out


def shifted_depthwise(inputs: Array, kernel: Array, *, strides, padding,
                      dilation) -> Array:
  """Depthwise convolution as a sum of strided, shifted products.

  Args:
    inputs: ``[B, H, W, C]``.
    kernel: ``[kh, kw, 1, C]``.
    strides, dilation: ``(sh, sw)``, ``(dh, dw)``.
    padding: ``((top, bottom), (left, right))`` zeros.

  Returns:
    ``[B, H', W', C]``, ``H' = (H + top + bottom - dh (kh - 1) - 1) // sh + 1``.
  """
  (top, bottom), (left, right) = padding
  x = jnp.pad(inputs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  kh, kw = kernel.shape[:2]
  (sh, sw), (dh, dw) = strides, dilation
  batch, height, width, channels = x.shape
  out_h = (height - dh * (kh - 1) - 1) // sh + 1
  out_w = (width - dw * (kw - 1) - 1) // sw + 1
  out = None
  for i in range(kh):
    for j in range(kw):
      window = jax.lax.slice(
          x, (0, i * dh, j * dw, 0),
          (batch, i * dh + (out_h - 1) * sh + 1, j * dw + (out_w - 1) * sw + 1,
           channels), (1, sh, sw, 1))
      term = window * kernel[i, j, 0]
      out = term if out is None else out + term
  return out


def batch_norm(
    ch: int, *, axis_name: Optional[str] = None, rngs: nnx.Rngs
) -> nnx.BatchNorm:
  """``nnx.BatchNorm`` with torch's constants, synchronised over ``axis_name``.

  With ``axis_name`` set (e.g. ``'data'``) and the module called in train mode
  inside ``jax.shard_map`` / ``jax.pmap`` over that axis, the batch mean and
  variance are ``lax.pmean``-ed over it: every device normalises with, and
  accumulates into its running statistics, the statistics of the global batch
  (equal per-device batch sizes). ``use_fast_variance=False``: the variance is
  the two-pass ``E[(x - E x)²]`` (one more all-reduce, no float32 cancellation).

  Difference from torch: the running variance accumulates the biased batch
  variance; torch accumulates the unbiased one (factor ``n / (n - 1)``, with
  ``n`` = B·H·W, negligible for segmentation batches). Normalisation in
  training uses the biased variance in both.
  """
  return nnx.BatchNorm(
      ch,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      axis_name=axis_name,
      use_fast_variance=False,
      rngs=rngs,
  )


class ConvBNReLU(Seq):
  """``Seq([conv, BN, act])``: torch ``Conv2d + BatchNorm2d + ReLU`` (keys 0, 1)."""

  def __init__(
      self,
      in_ch: int,
      out_ch: int,
      kernel: int = 3,
      *,
      stride: int = 1,
      dilation: int = 1,
      groups: int = 1,
      activation: Callable[[Array], Array] = jax.nn.relu,
      kernel_init: Callable = KAIMING_FAN_OUT,
      sync_bn_axis: Optional[str] = None,
      rngs: nnx.Rngs,
  ):
    super().__init__([
        conv(in_ch, out_ch, kernel, stride=stride, dilation=dilation,
             groups=groups, kernel_init=kernel_init, rngs=rngs),
        batch_norm(out_ch, axis_name=sync_bn_axis, rngs=rngs),
        activation,
    ])


def resize_bilinear(x: Array, size: tuple[int, int]) -> Array:
  """Bilinear resize ``[B, H, W, C] -> [B, h, w, C]`` (upsampling).

  ``jax.image.resize`` samples at half-pixel centres, i.e. PyTorch's
  ``F.interpolate(..., mode='bilinear', align_corners=False)`` with an explicit
  ``size`` (scale ``H / h``), which is what torchvision's and VainF's
  DeepLabV3+ use. It is *not* ``align_corners=True`` (the original TF DeepLab
  resize). For downsampling jax antialiases by default and torch does not; the
  models only upsample.
  """
  b, _, _, c = x.shape
  return jax.image.resize(x, (b, size[0], size[1], c), "bilinear")


def torch_keys(module: nnx.Module, prefix: Path = ()) -> dict[str, tuple[Path, str]]:
  """torch ``state_dict`` key -> (NNX state path, kind) for ``module``.

  The torch key is the module's attribute path joined by ``'.'`` plus the torch
  parameter name (``weight``/``bias``/``running_mean``/``running_var``);
  ``num_batches_tracked`` has no counterpart and is not listed. The NNX path is
  ``prefix + module path + (leaf,)`` with ``leaf`` in ``kernel, bias, scale,
  mean, var``; ``kind`` is a key of :data:`KINDS`. Order: unspecified.

  Args:
    module: any NNX module built from ``nnx.Conv``, ``nnx.Linear`` and
      ``nnx.BatchNorm`` leaves.
    prefix: prepended to the NNX paths (not to the torch keys).

  Returns:
    ``{torch_key: (nnx_path, kind)}``.
  """
  table: dict[str, tuple[Path, str]] = {}

  def add(path, torch_name, leaf, kind):
    key = ".".join(str(p) for p in path + (torch_name,))
    table[key] = (tuple(prefix) + tuple(path) + (leaf,), kind)

  for path, node in nnx.iter_graph(module):
    path = tuple(path)
    if isinstance(node, nnx.Conv):
      groups = node.feature_group_count
      if groups not in (1, node.in_features):
        raise ValueError(f"grouped conv at {path} is neither plain nor depthwise")
      add(path, "weight", "kernel", "conv" if groups == 1 else "depthwise")
      if node.bias is not None:
        add(path, "bias", "bias", "bias")
    elif isinstance(node, nnx.Linear):
      add(path, "weight", "kernel", "linear")
      if node.bias is not None:
        add(path, "bias", "bias", "bias")
    elif isinstance(node, nnx.BatchNorm):
      add(path, "weight", "scale", "bn_scale")
      add(path, "bias", "bias", "bn_bias")
      add(path, "running_mean", "mean", "bn_mean")
      add(path, "running_var", "var", "bn_var")
  return table


def torch_to_flax(kind: str, tensor: np.ndarray) -> np.ndarray:
  """A torch tensor of :func:`torch_keys` kind ``kind`` in our layout."""
  tensor = np.asarray(tensor)
  if kind in ("conv", "depthwise"):
    return tensor.transpose(2, 3, 1, 0)
  if kind == "linear":
    return tensor.T
  if kind in KINDS:
    return tensor
  raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(KINDS)}")


def count_params(model: nnx.Module) -> int:
  """Number of trainable scalars (``nnx.Param``: conv/linear/BN scale+bias).

  Running statistics (``nnx.BatchStat``) are not counted, as in torch's
  ``sum(p.numel() for p in model.parameters())``. Works on abstract models
  from ``nnx.eval_shape``.
  """
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return int(sum(np.prod(leaf.shape) for leaf in leaves))


def global_avg_pool(x: Array) -> Array:
  """``[B, H, W, C] -> [B, 1, 1, C]`` mean (torch ``AdaptiveAvgPool2d(1)``)."""
  return jnp.mean(x, axis=(1, 2), keepdims=True)
