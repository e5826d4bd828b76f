"""ImageNet backbones from torchvision's checkpoint files, without torch.

torchvision publishes the ImageNet weights of the paper's backbones as
``.pth`` files:

=================  ==========================================================
``--arch``         file (download it yourself; nothing here downloads)
=================  ==========================================================
``mobilenet_v2``   https://download.pytorch.org/models/mobilenet_v2-b0353104.pth
``resnet50``       https://download.pytorch.org/models/resnet50-0676ba61.pth
``resnet101``      https://download.pytorch.org/models/resnet101-63fe2227.pth
=================  ==========================================================

Convert one once, then point a training config at the directory::

  python -m potts_jax.models.pretrained convert --arch mobilenet_v2 \\
      --src mobilenet_v2-b0353104.pth --dst weights/mobilenet_v2
  python -m potts_jax.models.pretrained classify --weights weights/mobilenet_v2 \\
      --image cat.jpg

The file is read by :mod:`potts_jax.models.torch_checkpoint` (no torch, no code from
the file runs). Every tensor goes to the parameter at the same path
(``models.*.torchvision_keys``: conv OIHW -> HWIO, depthwise ``[C, 1, kh, kw]``
-> ``[kh, kw, 1, C]``, linear ``[out, in]`` -> ``[in, out]``, BN weight, bias,
running mean and variance); a missing, unexpected or mis-shaped key is an
error that names it. The output directory holds ``meta.json`` (architecture,
source file and its sha256) and an Orbax checkpoint ``params`` of the
classification network (backbone and torchvision's classifier);
:func:`load_backbone` copies the backbone part into a
:class:`~potts_jax.models.DeepLabV3Plus` (any output stride: dilation changes
no shape).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from potts_jax import checkpointing
from potts_jax.models import torch_checkpoint
from potts_jax.models import deeplabv3plus
from potts_jax.models import layers
from potts_jax.models import mobilenet_v2
from potts_jax.models import resnet
#: ``--arch`` -> (torchvision file name, its URL).
TORCHVISION_FILES = {
    "mobilenet_v2": "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
ARCHS = tuple(TORCHVISION_FILES)
#: torchvision's ImageNet normalisation (RGB in 0..1).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def classifier(arch: str, *, rngs: nnx.Rngs | None = None) -> nnx.Module:
  """The ImageNet classification network of ``arch`` (random weights)."""
  rngs = rngs or nnx.Rngs(0)
  if arch == "mobilenet_v2":
    return mobilenet_v2.MobileNetV2(include_top=True, rngs=rngs)
  if arch in ("resnet50", "resnet101"):
    return resnet.ResNet(int(arch[6:]), include_top=True, rngs=rngs)
  raise ValueError(f"unknown arch {arch!r}; expected one of {list(ARCHS)}")


def _keys(module: nnx.Module, prefix: tuple = ()) -> dict:
  lib = mobilenet_v2 if isinstance(module, mobilenet_v2.MobileNetV2) else resnet
  return lib.torchvision_keys(module, prefix)


def _variable(module: nnx.Module, path: tuple) -> nnx.Variable:
  node = module
  for p in path:
    node = node[p] if isinstance(p, int) else getattr(node, p)
  return node


def _assign(module: nnx.Module, table: dict, value_of: Callable[[str], Any],
            source: str) -> None:
  """Sets every variable named in ``table`` from ``value_of(torch_key)``."""
  for key, (path, kind) in table.items():
    var = _variable(module, path)
    value = np.asarray(value_of(key))
    current = var.get_value()
    if value.shape != current.shape:
      raise ValueError(
          f"{source}: {key} has shape {value.shape} in our layout ({kind}); "
          f"the model expects {current.shape} at {'.'.join(map(str, path))}")
    var.set_value(jnp.asarray(value, current.dtype))


def assign_state_dict(module: nnx.Module, state_dict: dict[str, np.ndarray],
                      source: str = "state_dict") -> None:
  """Copies a torchvision state_dict into a backbone built with its top.

  Raises:
    ValueError: naming missing, unexpected and mis-shaped keys (and
      ``source``), e.g. for a checkpoint of another architecture.
  """
  table = _keys(module)
  given = {k for k in state_dict if not k.endswith("num_batches_tracked")}
  missing, extra = sorted(set(table) - given), sorted(given - set(table))
  if missing or extra:
    raise ValueError(
        f"{source} does not match {type(module).__name__}: "
        f"{len(missing)} key(s) missing {missing[:5]}, "
        f"{len(extra)} unexpected {extra[:5]}")
  _assign(module, table,
          lambda k: layers.torch_to_flax(table[k][1], state_dict[k]), source)


def _tree(module: nnx.Module) -> dict:
  """The module's converted variables as nested ``dict[str, array]``."""
  tree: dict = {}
  for path, _ in _keys(module).values():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(str(p), {})
    node[str(path[-1])] = np.asarray(_variable(module, path).get_value())
  return tree


def _lookup(tree: dict, path: tuple, source: str) -> Any:
  node = tree
  for p in path:
    if str(p) not in node:
      raise ValueError(f"{source} has no {'.'.join(map(str, path))}")
    node = node[str(p)]
  return node


def convert(arch: str, src: str, dst: str) -> str:
  """Converts torchvision file ``src`` of ``arch`` into directory ``dst``.

  Returns:
    ``dst``, holding ``meta.json`` and the Orbax checkpoint ``params``.
  """
  model = classifier(arch)
  state_dict = torch_checkpoint.load(src)
  assign_state_dict(model, state_dict, source=src)
  with open(src, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  os.makedirs(dst, exist_ok=False)
  checkpointing.save_arrays(os.path.join(dst, "params"), _tree(model))
  with open(os.path.join(dst, "meta.json"), "w") as f:
    json.dump(dict(arch=arch, source=os.path.abspath(src), sha256=digest,
                   url=TORCHVISION_FILES[arch]), f, indent=1)
  return dst


def _read(directory: str) -> tuple[dict, dict]:
  meta_path = os.path.join(directory, "meta.json")
  if not os.path.isfile(meta_path):
    raise FileNotFoundError(
        f"{directory} is not a converted backbone (no meta.json); write one "
        "with `python -m potts_jax.models.pretrained convert`")
  with open(meta_path) as f:
    meta = json.load(f)
  return meta, checkpointing.restore_arrays(os.path.join(directory, "params"))


def load_classifier(directory: str) -> nnx.Module:
  """The classification network saved by :func:`convert`, in eval mode."""
  meta, tree = _read(directory)
  model = classifier(meta["arch"])
  table = _keys(model)
  _assign(model, table, lambda k: _lookup(tree, table[k][0], directory),
          directory)
  model.eval()
  return model


def load_backbone(model: deeplabv3plus.DeepLabV3Plus, directory: str) -> None:
  """Copies converted ImageNet weights into ``model.backbone`` in place.

  Raises:
    ValueError: when the directory holds another architecture or lacks a
      parameter the backbone needs (named).
  """
  meta, tree = _read(directory)
  if meta["arch"] != model.backbone_name:
    raise ValueError(
        f"{directory} holds {meta['arch']} weights; the model's backbone is "
        f"{model.backbone_name}")
  table = deeplabv3plus.torchvision_keys(model)  # paths under ('backbone',)
  _assign(model, table, lambda k: _lookup(tree, table[k][0][1:], directory),
          directory)


def imagenet_input(image: np.ndarray) -> np.ndarray:
  """torchvision's eval preprocessing: ``[H, W, 3]`` uint8 -> ``[224, 224, 3]``.

  Resize the shorter side to 256 (bilinear, PIL), centre crop 224, scale to
  0..1 and normalise with :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`.

  Raises:
    ValueError: for anything but an RGB ``[H, W, 3]`` image.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an RGB image [H, W, 3]; got shape {image.shape}")
  pil = Image.fromarray(image.astype(np.uint8))
  w, h = pil.size
  scale = 256 / min(w, h)
  size = (max(256, round(w * scale)), max(256, round(h * scale)))
  pil = pil.resize(size, Image.BILINEAR)
  left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
  x = np.asarray(pil.crop((left, top, left + 224, top + 224)), np.float32)
  return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def classify(model: nnx.Module, image: np.ndarray) -> np.ndarray:
  """ImageNet class probabilities ``[1000]`` of one RGB photo ``[H, W, 3]``."""
  logits = model.classify(jnp.asarray(imagenet_input(image))[None])
  return np.asarray(jax.nn.softmax(logits[0]))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m potts_jax.models.pretrained", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  conv = sub.add_parser("convert", help="torchvision .pth -> our checkpoint")
  conv.add_argument("--arch", required=True, choices=ARCHS)
  conv.add_argument("--src", required=True, help="torchvision .pth file")
  conv.add_argument("--dst", required=True, help="new output directory")
  cls = sub.add_parser("classify", help="top-5 ImageNet classes of a photo")
  cls.add_argument("--weights", required=True, help="a converted directory")
  cls.add_argument("--image", required=True, help="an RGB photo")
  args = parser.parse_args(argv)
  if args.command == "convert":
    print(convert(args.arch, args.src, args.dst))
    return 0
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(Image.open(args.image).convert("RGB"))
  probs = classify(load_classifier(args.weights), image)
  for c in np.argsort(-probs)[:5]:
    print(f"{c:4d} {probs[c]:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
