"""Segmentation networks in Flax NNX (NHWC): DeepLabV3+ on MobileNetV2 / ResNet.

``mobilenet_v2`` and ``resnet`` are torchvision's backbones (NNX paths spell
torchvision's state_dict keys, see their ``torchvision_keys``);
``deeplabv3plus`` the segmentation model and the backbone/head labels;
``layers`` the shared conv/BN blocks. (The factory ``mobilenet_v2()`` stays
in its module: exporting it here would shadow the submodule.)
"""

from potts_jax.models.deeplabv3plus import DeepLabV3Plus, param_labels
from potts_jax.models.layers import count_params, torch_keys, torch_to_flax
from potts_jax.models.mobilenet_v2 import MobileNetV2
from potts_jax.models.resnet import ResNet, resnet50, resnet101
__all__ = [
    "DeepLabV3Plus",
    "MobileNetV2",
    "ResNet",
    "count_params",
    "param_labels",
    "resnet50",
    "resnet101",
    "torch_keys",
    "torch_to_flax",
]
