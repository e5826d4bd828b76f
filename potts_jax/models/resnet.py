"""ResNet-50/101 in torchvision's layout (Flax NNX, NHWC), with atrous output stride.

Layout (``torchvision.models.resnet50`` / ``resnet101``, "v1.5": the stride
sits on the 3x3 conv), NNX paths = torchvision keys:

* ``conv1`` 7x7/2 (3 -> 64, pad 3), ``bn1``, ReLU, max-pool 3x3/2 pad 1;
* ``layer1`` .. ``layer4``: (3, 4, 6, 3) resp. (3, 4, 23, 3) :class:`Bottleneck`
  blocks of widths 64, 128, 256, 512 (outputs ×4): ``layerL.i.conv1`` 1x1,
  ``bn1``, ``conv2`` 3x3 (stride, dilation), ``bn2``, ``conv3`` 1x1, ``bn3``,
  and in the first block of each layer ``downsample.0`` conv 1x1 (stride) +
  ``downsample.1`` BN;
* ``fc``: Linear(2048, 1000) after global average pooling, only with
  ``include_top=True`` (the classification path, used to check converted
  weights).

Segmentation features (:meth:`ResNet.__call__`), as in torchvision's and
VainF's DeepLabV3+: low level = ``layer1`` (stride 4, 256 ch), high level =
``layer4`` (2048 ch, stride ``output_stride``).

Output stride: torchvision's ``replace_stride_with_dilation`` = (F, F, F) for
32, (F, F, T) for 16, (F, T, T) for 8 over layer2..layer4. A dilated layer gets
stride 1 and multiplies the running dilation by 2; its first block uses the
dilation before the multiplication, its other blocks the new one; 3x3 convs pad
``dilation``.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from potts_jax.models import layers
Array = jax.Array

#: Blocks per layer.
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
#: ``replace_stride_with_dilation`` for layer2, layer3, layer4.
REPLACE_STRIDE_WITH_DILATION = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}
EXPANSION = 4


class Bottleneck(nnx.Module):
  """torchvision's ``Bottleneck``: ``[B, H, W, in] -> [B, H/s, W/s, 4 planes]``."""

  def __init__(self, in_ch: int, planes: int, *, stride: int = 1, dilation: int = 1,
               downsample: bool = False, sync_bn_axis: Optional[str] = None,
               rngs: nnx.Rngs):
    out_ch = planes * EXPANSION
    bn = lambda ch: layers.batch_norm(ch, axis_name=sync_bn_axis, rngs=rngs)
    self.conv1 = layers.conv(in_ch, planes, 1, rngs=rngs)
    self.bn1 = bn(planes)
    self.conv2 = layers.conv(planes, planes, 3, stride=stride, dilation=dilation,
                             rngs=rngs)
    self.bn2 = bn(planes)
    self.conv3 = layers.conv(planes, out_ch, 1, rngs=rngs)
    self.bn3 = bn(out_ch)
    # nnx.data: the attribute holds a module in some blocks and None in others.
    self.downsample = nnx.data(None)
    if downsample:
      self.downsample = layers.Seq([
          layers.conv(in_ch, out_ch, 1, stride=stride, rngs=rngs), bn(out_ch)])

  def __call__(self, x: Array) -> Array:
    y = jax.nn.relu(self.bn1(self.conv1(x)))
    y = jax.nn.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    identity = x if self.downsample is None else self.downsample(x)
    return jax.nn.relu(y + identity)


class ResNet(nnx.Module):
  """Bottleneck ResNet (torchvision layout), see the module docstring.

  Attributes:
    conv1, bn1, layer1..layer4, fc (only with ``include_top``).
    low_level_channels / high_level_channels: 256 and 2048.
  """

  def __init__(
      self,
      depth: int = 50,
      *,
      output_stride: int = 32,
      include_top: bool = True,
      num_classes: int = 1000,
      sync_bn_axis: Optional[str] = None,
      rngs: nnx.Rngs,
  ):
    if depth not in DEPTHS:
      raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth}")
    if output_stride not in REPLACE_STRIDE_WITH_DILATION:
      raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    kw = dict(sync_bn_axis=sync_bn_axis, rngs=rngs)
    self.conv1 = layers.conv(3, 64, 7, stride=2, rngs=rngs)
    self.bn1 = layers.batch_norm(64, axis_name=sync_bn_axis, rngs=rngs)
    dilate = (False,) + REPLACE_STRIDE_WITH_DILATION[output_stride]
    in_ch, dilation = 64, 1
    for index, (blocks, planes) in enumerate(zip(DEPTHS[depth], (64, 128, 256, 512))):
      stride = 1 if index == 0 else 2
      previous_dilation = dilation
      if dilate[index]:
        dilation, stride = dilation * stride, 1
      out_ch = planes * EXPANSION
      layer = [Bottleneck(in_ch, planes, stride=stride, dilation=previous_dilation,
                          downsample=stride != 1 or in_ch != out_ch, **kw)]
      layer += [Bottleneck(out_ch, planes, dilation=dilation, **kw)
                for _ in range(1, blocks)]
      setattr(self, f"layer{index + 1}", layers.Seq(layer))
      in_ch = out_ch
    self.depth = depth
    self.output_stride = output_stride
    self.include_top = include_top
    self.low_level_channels = 64 * EXPANSION
    self.high_level_channels = 512 * EXPANSION
    if include_top:
      self.fc = nnx.Linear(self.high_level_channels, num_classes, rngs=rngs)

  def __call__(self, x: Array) -> tuple[Array, Array]:
    """Segmentation features.

    Args:
      x: ``[B, H, W, 3]`` normalised image.

    Returns:
      ``(low, high)``: ``layer1`` ``[B, H/4, W/4, 256]`` and ``layer4``
      ``[B, H/os, W/os, 2048]`` (sizes rounded up as torch's per stride).
    """
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    low = self.layer1(x)
    high = self.layer4(self.layer3(self.layer2(low)))
    return low, high

  def classify(self, x: Array) -> Array:
    """ImageNet logits ``[B, 1000]`` of ``[B, H, W, 3]`` (needs ``include_top``)."""
    if not self.include_top:
      raise ValueError("classify needs a model built with include_top=True")
    _, x = self(x)
    return self.fc(jnp.mean(x, axis=(1, 2)))


def resnet50(**kwargs) -> ResNet:
  """``ResNet(50, **kwargs)``; ``rngs`` defaults to ``nnx.Rngs(0)``."""
  kwargs.setdefault("rngs", nnx.Rngs(0))
  return ResNet(50, **kwargs)


def resnet101(**kwargs) -> ResNet:
  """``ResNet(101, **kwargs)``; ``rngs`` defaults to ``nnx.Rngs(0)``."""
  kwargs.setdefault("rngs", nnx.Rngs(0))
  return ResNet(101, **kwargs)


def torchvision_keys(model: ResNet, prefix: tuple = ()) -> dict[str, tuple[tuple, str]]:
  """torchvision ``resnet50/101`` state_dict key -> (NNX state path, kind).

  Every key of ``torchvision.models.resnetNN().state_dict()`` except
  ``num_batches_tracked`` (and ``fc.*`` when the model has no top), e.g.
  ``'layer1.0.downsample.0.weight': (('layer1', 0, 'downsample', 0, 'kernel'),
  'conv')``. See :func:`potts_jax.models.layers.torch_keys`.
  """
  return layers.torch_keys(model, prefix)
