"""DeepLabV3+ (Chen et al. 2018) in Flax NNX, NHWC, on MobileNetV2 or ResNet.

Follows the PyTorch lineage the paper's results are usually reproduced with
(VainF/DeepLabV3Plus-Pytorch, ``network/_deeplab.py``), attribute names
included (``classifier.aspp.convs.1.0.kernel`` = VainF's
``classifier.aspp.convs.1.0.weight``):

* ``backbone``: :class:`~potts_jax.models.mobilenet_v2.MobileNetV2` (low level
  ``features[3]``, 24 ch; high level ``features[17]``, 320 ch) or
  :class:`~potts_jax.models.resnet.ResNet` (``layer1``, 256 ch; ``layer4``,
  2048 ch), built without their ImageNet top.
* ``classifier.aspp`` (:class:`ASPP`) on the high-level feature: ``convs.0``
  1x1, ``convs.1..3`` 3x3 atrous at rates (6, 12, 18) for output stride 16 and
  (12, 24, 36) for 8, ``convs.4`` image pooling (global mean, 1x1, BN, ReLU,
  broadcast back), each ``channels`` wide with BN + ReLU; concat, ``project``
  = 1x1 conv + BN + ReLU + Dropout(0.1).
* decoder (:class:`DeepLabHeadV3Plus`): ``classifier.project`` = 1x1 conv to 48
  + BN + ReLU on the low-level feature; ASPP output bilinearly upsampled to the
  low-level size, concat, ``classifier.classifier`` = one 3x3 conv
  ``channels`` + BN + ReLU then a 1x1 conv (with bias) to K classes. VainF and
  torchvision's DeepLabV3 head use a single 3x3 conv; the paper's (and TF
  DeepLab's) decoder uses two separable 3x3 convs. We follow VainF.
* logits bilinearly upsampled to the input size: ``jax.image.resize``
  (half-pixel centres) = torch ``align_corners=False``, VainF's setting; TF
  DeepLab used ``align_corners=True`` (not reproduced).

Train / eval: ``model.train()`` (BN batch statistics, dropout on; dropout
draws from the ``rngs`` the model was built with) and ``model.eval()`` (running
statistics, dropout off). BatchNorm is synchronised over ``sync_bn_axis``
(e.g. ``'data'``) when the model runs under ``jax.shard_map`` / ``jax.pmap``
over that axis (see :func:`potts_jax.models.layers.batch_norm`). A model
built with ``sync_bn_axis`` runs in train mode only inside such a mapped
function (the axis name must be bound); eval mode runs anywhere. The default
is None so that the model also runs unmapped.

Backbone / head split for different learning rates (ASPP + decoder ×10)::

    tx = optax.multi_transform(
        {"backbone": optax.sgd(lr, momentum=0.9),
         "head": optax.sgd(10 * lr, momentum=0.9)},
        param_labels)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)   # stateful NNX way
    # or functionally:
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt_state = tx.init(params)            # params: an nnx.State (Variables or
    updates, opt_state = tx.update(grads, opt_state, params)   # pure arrays)

``param_labels`` is a callable (optax calls it on the params tree), so it also
works directly as ``param_labels(params)`` to inspect the labels.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from potts_jax.models import layers
from potts_jax.models import mobilenet_v2 as mobilenet_v2_lib
from potts_jax.models import resnet as resnet_lib
Array = jax.Array

BACKBONES = ("mobilenet_v2", "resnet50", "resnet101")
#: Atrous rates of the three 3x3 ASPP branches per output stride.
ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}


class ASPPPooling(layers.Seq):
  """Image pooling ``[B, h, w, C] -> [B, h, w, ch]``: mean, 1x1, BN, ReLU, broadcast.

  Element 0 is the (parameter-free) pooling, so the conv and BN sit at keys
  1 and 2 as in torch's ``ASPPPooling``. The bilinear upsampling of a 1x1 map
  is a broadcast.
  """

  def __init__(self, in_ch: int, ch: int, *, sync_bn_axis: Optional[str],
               rngs: nnx.Rngs):
    super().__init__([
        layers.global_avg_pool,
        layers.conv(in_ch, ch, 1, kernel_init=layers.KAIMING_FAN_IN, rngs=rngs),
        layers.batch_norm(ch, axis_name=sync_bn_axis, rngs=rngs),
        jax.nn.relu,
    ])

  def __call__(self, x: Array) -> Array:
    return jnp.broadcast_to(super().__call__(x), x.shape[:3] + (self[1].out_features,))


class ASPP(nnx.Module):
  """Atrous spatial pyramid pooling ``[B, h, w, in] -> [B, h, w, ch]``."""

  def __init__(self, in_ch: int, rates: tuple[int, int, int], ch: int = 256, *,
               sync_bn_axis: Optional[str] = None, dropout_rate: float = 0.1,
               rngs: nnx.Rngs):
    kw = dict(kernel_init=layers.KAIMING_FAN_IN, sync_bn_axis=sync_bn_axis, rngs=rngs)
    branches = [layers.ConvBNReLU(in_ch, ch, 1, **kw)]
    branches += [layers.ConvBNReLU(in_ch, ch, 3, dilation=r, **kw) for r in rates]
    branches.append(ASPPPooling(in_ch, ch, sync_bn_axis=sync_bn_axis, rngs=rngs))
    self.convs = nnx.List(branches)
    self.project = layers.Seq([
        layers.conv(5 * ch, ch, 1, kernel_init=layers.KAIMING_FAN_IN, rngs=rngs),
        layers.batch_norm(ch, axis_name=sync_bn_axis, rngs=rngs),
        jax.nn.relu,
        nnx.Dropout(dropout_rate, rngs=rngs),
    ])

  def __call__(self, x: Array) -> Array:
    return self.project(jnp.concatenate([branch(x) for branch in self.convs], -1))


class DeepLabHeadV3Plus(nnx.Module):
  """ASPP + decoder: ``(low [B, h4, w4, Cl], high [B, h, w, Ch]) -> [B, h4, w4, K]``."""

  def __init__(self, high_ch: int, low_ch: int, num_classes: int,
               rates: tuple[int, int, int], *, channels: int = 256,
               low_level_channels: int = 48, sync_bn_axis: Optional[str] = None,
               dropout_rate: float = 0.1, rngs: nnx.Rngs):
    kw = dict(kernel_init=layers.KAIMING_FAN_IN, sync_bn_axis=sync_bn_axis, rngs=rngs)
    self.project = layers.ConvBNReLU(low_ch, low_level_channels, 1, **kw)
    self.aspp = ASPP(high_ch, rates, channels, sync_bn_axis=sync_bn_axis,
                     dropout_rate=dropout_rate, rngs=rngs)
    self.classifier = layers.Seq([
        *layers.ConvBNReLU(low_level_channels + channels, channels, 3, **kw),
        layers.conv(channels, num_classes, 1, use_bias=True,
                    kernel_init=layers.KAIMING_FAN_IN, rngs=rngs),
    ])

  def __call__(self, low: Array, high: Array) -> Array:
    low = self.project(low)
    high = layers.resize_bilinear(self.aspp(high), low.shape[1:3])
    # torch.cat([low_level_feature, output_feature]): low-level channels first.
    return self.classifier(jnp.concatenate([low, high], axis=-1))


class DeepLabV3Plus(nnx.Module):
  """DeepLabV3+: ``[B, H, W, 3] -> logits [B, H, W, num_classes]``.

  Args:
    backbone: ``'mobilenet_v2'``, ``'resnet50'`` or ``'resnet101'``.
    num_classes: K.
    output_stride: 8 or 16 (backbone stride; picks the ASPP rates).
    width: MobileNetV2 width multiplier (ignored for ResNets).
    channels: ASPP and decoder width (256 in the paper; narrower is allowed).
    low_level_channels: width of the low-level projection (48).
    sync_bn_axis: mesh axis name (``'data'``) over which every BatchNorm
      averages its batch statistics, or None (per-device statistics).
    dropout_rate: of the ASPP projection's Dropout (0.1, as VainF).
    rngs: parameter initialisation and dropout streams.
  """

  def __init__(self, backbone: str = "mobilenet_v2", num_classes: int = 21, *,
               output_stride: int = 16, width: float = 1.0, channels: int = 256,
               low_level_channels: int = 48, sync_bn_axis: Optional[str] = None,
               dropout_rate: float = 0.1, rngs: nnx.Rngs):
    if output_stride not in ASPP_RATES:
      raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    kw = dict(output_stride=output_stride, include_top=False,
              sync_bn_axis=sync_bn_axis, rngs=rngs)
    if backbone == "mobilenet_v2":
      self.backbone = mobilenet_v2_lib.MobileNetV2(width=width, **kw)
    elif backbone in ("resnet50", "resnet101"):
      self.backbone = resnet_lib.ResNet(int(backbone[6:]), **kw)
    else:
      raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    self.backbone_name = backbone
    self.num_classes = num_classes
    self.output_stride = output_stride
    self.classifier = DeepLabHeadV3Plus(
        self.backbone.high_level_channels, self.backbone.low_level_channels,
        num_classes, ASPP_RATES[output_stride], channels=channels,
        low_level_channels=low_level_channels, sync_bn_axis=sync_bn_axis,
        dropout_rate=dropout_rate, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """Logits ``[B, H, W, K]`` of a normalised image ``[B, H, W, 3]``."""
    low, high = self.backbone(x)
    return layers.resize_bilinear(self.classifier(low, high), x.shape[1:3])


def _label(path) -> str:
  first = path[0]
  key = getattr(first, "key", getattr(first, "name", first))
  return "backbone" if key == "backbone" else "head"


def param_labels(params: Any) -> Any:
  """``'backbone'`` / ``'head'`` for every leaf of a DeepLabV3Plus state.

  Args:
    params: ``nnx.state(model, ...)`` or the ``nnx.split`` states of a
      :class:`DeepLabV3Plus` (``nnx.Variable`` leaves or pure arrays), or any
      pytree whose top-level keys are the model's attributes.

  Returns:
    The same structure with each variable replaced by ``'backbone'`` (under
    ``backbone``) or ``'head'`` (ASPP and decoder, ``classifier``). A valid
    ``param_labels`` for ``optax.multi_transform`` (see the module docstring).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: _label(path), params,
      is_leaf=lambda x: isinstance(x, nnx.Variable))


def torchvision_keys(model: DeepLabV3Plus) -> dict[str, tuple[tuple, str]]:
  """The backbone's torchvision keys mapped to paths under ``('backbone', ...)``.

  E.g. ``'layer1.0.conv1.weight': (('backbone', 'layer1', 0, 'conv1',
  'kernel'), 'conv')``; the torchvision top (``fc``/``features.18``/
  ``classifier``) is absent. ``layers.torch_keys(model)`` gives the whole model
  in VainF's naming (``backbone.``/``classifier.`` prefixes).
  """
  backbone = model.backbone
  lib = mobilenet_v2_lib if model.backbone_name == "mobilenet_v2" else resnet_lib
  return lib.torchvision_keys(backbone, prefix=("backbone",))
