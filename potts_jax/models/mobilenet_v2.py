"""MobileNetV2 in torchvision's layout (Flax NNX, NHWC), with atrous output stride.

Layout (``torchvision.models.mobilenet_v2``), NNX paths = torchvision keys:

* ``features.0``: ConvBNReLU6 3x3/2, 3 -> 32·w (``features.0.0`` conv,
  ``features.0.1`` BN).
* ``features.1`` .. ``features.17``: :class:`InvertedResidual` blocks, settings
  ``t, c, n, s`` = (1,16,1,1) (6,24,2,2) (6,32,3,2) (6,64,4,2) (6,96,3,1)
  (6,160,3,2) (6,320,1,1). ``features.i.conv`` is ``[expand ConvBNReLU6 1x1]``
  (only if t != 1), depthwise ConvBNReLU6 3x3, pointwise-linear conv, BN, so
  ``features.1.conv.{0.0, 0.1, 1, 2}`` and ``features.2.conv.{0.0, 0.1, 1.0,
  1.1, 2, 3}``.
* ``features.18``: ConvBNReLU6 1x1 to 1280·max(1, w); ``classifier.1``:
  Linear(1280, 1000) after ``classifier.0`` Dropout(0.2). Both exist only with
  ``include_top=True`` (the classification path, used to check converted
  weights); DeepLabV3+ builds the backbone without them.

Segmentation features (:meth:`MobileNetV2.__call__`), as in the PyTorch
DeepLabV3+ lineage (VainF/DeepLabV3Plus-Pytorch ``network/modeling.py``:
``low_level_features = features[:4]``, ``high_level_features = features[4:-1]``,
ASPP ``inplanes = 320``):

* low level = output of ``features[3]``: stride 4, 24·w channels;
* high level = output of ``features[17]``: 320·w channels, stride
  ``output_stride``. ``features[18]`` (1280) is not used for segmentation.

Output stride (VainF's rule, the DeepLab "atrous" backbone): walking the seven
stages with the accumulated stride ``s_acc`` (2 after the stem), a stage whose
``s_acc`` already equals ``output_stride`` gets stride 1 and multiplies the
dilation by its nominal stride; the first block of such a stage keeps the
previous dilation, its later blocks use the new one (torchvision ResNet's
``replace_stride_with_dilation`` rule). Depthwise convs pad ``dilation``.
``output_stride=32`` is torchvision's network.

Width multiplier: channels are ``make_divisible(c · width, 8)`` (torchvision's
rounding); the expansion is ``round(in · t)``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from potts_jax.models import layers
Array = jax.Array

#: ``(t, c, n, s)``: expansion, output channels, blocks, stride of each stage.
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
#: Index in ``features`` of the low-level (stride 4) and high-level outputs.
LOW_LEVEL_INDEX = 3
HIGH_LEVEL_INDEX = 17


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
  """torchvision's ``_make_divisible``: nearest multiple of ``divisor``, ≥ 90 % of v."""
  if min_value is None:
    min_value = divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def block_configs(width: float = 1.0, output_stride: int = 32) -> list[dict]:
  """The 17 inverted-residual blocks: ``in_ch, out_ch, stride, dilation, t``.

  Raises:
    ValueError: ``output_stride`` not in 8, 16, 32.
  """
  if output_stride not in (8, 16, 32):
    raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
  in_ch = make_divisible(32 * width)
  current_stride, dilation = 2, 1
  configs = []
  for t, c, n, s in SETTINGS:
    out_ch = make_divisible(c * width)
    previous_dilation = dilation
    if current_stride == output_stride:
      stride, dilation = 1, dilation * s
    else:
      stride, current_stride = s, current_stride * s
    for i in range(n):
      configs.append(dict(
          in_ch=in_ch, out_ch=out_ch, stride=stride if i == 0 else 1,
          dilation=previous_dilation if i == 0 else dilation, t=t))
      in_ch = out_ch
  return configs


class InvertedResidual(nnx.Module):
  """torchvision's ``InvertedResidual``: ``[B, H, W, in] -> [B, H/s, W/s, out]``.

  ``conv`` = ``[ConvBNReLU6 1x1 expand (t != 1)], ConvBNReLU6 3x3 depthwise
  (stride, dilation), Conv 1x1 linear, BN``; residual iff stride 1 and
  ``in == out``.
  """

  def __init__(self, in_ch: int, out_ch: int, stride: int, dilation: int, t: int,
               *, sync_bn_axis: Optional[str] = None, rngs: nnx.Rngs):
    hidden = int(round(in_ch * t))
    kw = dict(activation=jax.nn.relu6, sync_bn_axis=sync_bn_axis, rngs=rngs)
    blocks = []
    if t != 1:
      blocks.append(layers.ConvBNReLU(in_ch, hidden, 1, **kw))
    blocks += [
        layers.ConvBNReLU(hidden, hidden, 3, stride=stride, dilation=dilation,
                          groups=hidden, **kw),
        layers.conv(hidden, out_ch, 1, rngs=rngs),
        layers.batch_norm(out_ch, axis_name=sync_bn_axis, rngs=rngs),
    ]
    self.conv = layers.Seq(blocks)
    self.use_res_connect = stride == 1 and in_ch == out_ch

  def __call__(self, x: Array) -> Array:
    y = self.conv(x)
    return x + y if self.use_res_connect else y


class MobileNetV2(nnx.Module):
  """MobileNetV2 (torchvision layout), see the module docstring.

  Attributes:
    features: :class:`~potts_jax.models.layers.Seq` of 18 (19 with the top)
      modules.
    classifier: ``Seq([Dropout(0.2), Linear])``, only with ``include_top``.
    low_level_channels / high_level_channels: channels of the two features.
  """

  def __init__(
      self,
      *,
      width: float = 1.0,
      output_stride: int = 32,
      include_top: bool = True,
      num_classes: int = 1000,
      dropout_rate: float = 0.2,
      sync_bn_axis: Optional[str] = None,
      rngs: nnx.Rngs,
  ):
    configs = block_configs(width, output_stride)
    kw = dict(sync_bn_axis=sync_bn_axis, rngs=rngs)
    features = [layers.ConvBNReLU(3, configs[0]["in_ch"], 3, stride=2,
                                  activation=jax.nn.relu6, **kw)]
    features += [InvertedResidual(**cfg, **kw) for cfg in configs]
    self.low_level_channels = configs[LOW_LEVEL_INDEX - 1]["out_ch"]
    self.high_level_channels = configs[-1]["out_ch"]
    self.output_stride = output_stride
    self.include_top = include_top
    last = make_divisible(1280 * max(1.0, width))
    if include_top:
      features.append(layers.ConvBNReLU(self.high_level_channels, last, 1,
                                        activation=jax.nn.relu6, **kw))
    self.features = layers.Seq(features)
    if include_top:
      self.classifier = layers.Seq([
          nnx.Dropout(dropout_rate, rngs=rngs),
          nnx.Linear(last, num_classes,
                     kernel_init=nnx.initializers.normal(0.01), rngs=rngs),
      ])

  def __call__(self, x: Array) -> tuple[Array, Array]:
    """Segmentation features.

    Args:
      x: ``[B, H, W, 3]`` normalised image.

    Returns:
      ``(low, high)``: ``[B, H/4, W/4, low_level_channels]`` (``features[3]``)
      and ``[B, H/os, W/os, high_level_channels]`` (``features[17]``), sizes
      rounded up as torch's ``floor((H - 1) / 2) + 1`` per stride.
    """
    for i in range(LOW_LEVEL_INDEX + 1):
      x = self.features[i](x)
    low = x
    for i in range(LOW_LEVEL_INDEX + 1, HIGH_LEVEL_INDEX + 1):
      x = self.features[i](x)
    return low, x

  def classify(self, x: Array) -> Array:
    """ImageNet logits ``[B, 1000]`` of ``[B, H, W, 3]`` (needs ``include_top``)."""
    if not self.include_top:
      raise ValueError("classify needs a model built with include_top=True")
    _, x = self(x)
    x = self.features[HIGH_LEVEL_INDEX + 1](x)
    return self.classifier(jnp.mean(x, axis=(1, 2)))


def mobilenet_v2(**kwargs) -> MobileNetV2:
  """``MobileNetV2(**kwargs)``; ``rngs`` defaults to ``nnx.Rngs(0)``."""
  kwargs.setdefault("rngs", nnx.Rngs(0))
  return MobileNetV2(**kwargs)


def torchvision_keys(model: MobileNetV2, prefix: tuple = ()) -> dict[str, tuple[tuple, str]]:
  """torchvision ``mobilenet_v2`` state_dict key -> (NNX state path, kind).

  Every key of ``torchvision.models.mobilenet_v2().state_dict()`` except
  ``num_batches_tracked`` (and except ``features.18.*`` / ``classifier.*`` when
  the model has no top), e.g. ``'features.0.0.weight': (('features', 0, 0,
  'kernel'), 'conv')``. See :func:`potts_jax.models.layers.torch_keys`.
  """
  return layers.torch_keys(model, prefix)
