"""Tests of potts_jax.models.pretrained: torchvision checkpoints into our backbones.

* MobileNetV2: torchvision's real ImageNet file, converted and run on two
  photos bundled with scikit-image, must name the right ImageNet classes.
* ResNet-101: no real file is available offline, so a file with torchvision's
  exact keys and shapes (written here from the architecture, random values)
  is converted, and the stem and one bottleneck block are compared with a
  float64 numpy computation written out below.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from flax import nnx

from potts_jax.models import pretrained
from potts_jax.models import DeepLabV3Plus
from tests.test_torch_checkpoint import contiguous
from tests.test_torch_checkpoint import mobilenet_v2_path  # noqa: F401 (fixture)
from tests.test_torch_checkpoint import write_zip


@pytest.fixture(scope="module")
def mobilenet_dir(mobilenet_v2_path, tmp_path_factory):  # noqa: F811
  dst = tmp_path_factory.mktemp("weights") / "mobilenet_v2"
  pretrained.convert("mobilenet_v2", str(mobilenet_v2_path), str(dst))
  return dst


@pytest.mark.parametrize("photo, expected", [("chelsea", 285), ("coffee", 967)])
def test_real_mobilenet_v2_weights_name_the_photo(mobilenet_dir, photo,
                                                  expected):
  # 285: Egyptian cat; 967: espresso. torchvision gives about 0.71 and 0.99.
  model = pretrained.load_classifier(str(mobilenet_dir))
  probs = pretrained.classify(model, getattr(skimage.data, photo)())
  top = int(np.argmax(probs))
  print(f"{photo}: top-1 {top} p={probs[top]:.4f}, p[{expected}]="
        f"{probs[expected]:.4f}")
  assert top == expected
  assert probs[expected] > 0.5


def test_meta_records_the_source(mobilenet_dir, mobilenet_v2_path):  # noqa: F811
  meta = json.loads((mobilenet_dir / "meta.json").read_text())
  assert meta["arch"] == "mobilenet_v2"
  assert meta["sha256"].startswith("b0353104")  # torchvision's file name


def test_load_backbone_into_deeplab(mobilenet_dir, mobilenet_v2_path):  # noqa: F811
  from potts_jax.models import torch_checkpoint  # pylint: disable=g-import-not-at-top
  model = DeepLabV3Plus("mobilenet_v2", 3, output_stride=8, rngs=nnx.Rngs(1))
  pretrained.load_backbone(model, str(mobilenet_dir))
  state = torch_checkpoint.load(mobilenet_v2_path)
  np.testing.assert_array_equal(
      np.asarray(model.backbone.features[2].conv[1][0].kernel.get_value()),
      state["features.2.conv.1.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(
      np.asarray(model.backbone.features[17].conv[3].var.get_value()),
      state["features.17.conv.3.running_var"])
  with pytest.raises(ValueError, match="holds mobilenet_v2 weights.*resnet50"):
    pretrained.load_backbone(
        DeepLabV3Plus("resnet50", 3, rngs=nnx.Rngs(0)), str(mobilenet_dir))


def test_command_line(mobilenet_v2_path, tmp_path, capsys):  # noqa: F811
  from PIL import Image  # pylint: disable=g-import-not-at-top
  photo = tmp_path / "coffee.png"
  Image.fromarray(skimage.data.coffee()).save(photo)
  dst = tmp_path / "w"
  assert pretrained.main(["convert", "--arch", "mobilenet_v2", "--src",
                          str(mobilenet_v2_path), "--dst", str(dst)]) == 0
  assert pretrained.main(["classify", "--weights", str(dst), "--image",
                          str(photo)]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-5].split()[0] == "967"


# ---------------------------------------------------------------------------
# ResNet-101 in torchvision's format, written from the architecture.

def _resnet101_shapes() -> dict[str, tuple]:
  """torchvision resnet101 state_dict keys and shapes (v1.5 Bottleneck)."""
  shapes = {"conv1.weight": (64, 3, 7, 7)}

  def bn(name, c):
    for p in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.{p}"] = (c,)
    shapes[f"{name}.num_batches_tracked"] = ()

  bn("bn1", 64)
  inplanes = 64
  for layer, (planes, blocks) in enumerate(
      zip((64, 128, 256, 512), (3, 4, 23, 3)), start=1):
    for i in range(blocks):
      p = f"layer{layer}.{i}"
      shapes[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
      bn(f"{p}.bn1", planes)
      shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
      bn(f"{p}.bn2", planes)
      shapes[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
      bn(f"{p}.bn3", planes * 4)
      if i == 0:
        shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
        bn(f"{p}.downsample.1", planes * 4)
      inplanes = planes * 4
  shapes["fc.weight"] = (1000, 2048)
  shapes["fc.bias"] = (1000,)
  return shapes


@pytest.fixture(scope="module")
def resnet101_file(tmp_path_factory):
  rng = np.random.default_rng(0)
  state = {}
  for key, shape in _resnet101_shapes().items():
    if key.endswith("num_batches_tracked"):
      value = np.array(7, np.int64)
    elif key.endswith("running_var"):
      value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      value = (rng.normal(size=shape) * 0.1).astype(np.float32)
    state[key] = value
  path = tmp_path_factory.mktemp("rn") / "resnet101-random.pth"
  write_zip(path, {k: contiguous(v) for k, v in state.items()})
  return path, state


def _conv(x, w, stride=1, pad=0):
  """float64 conv of ``[H, W, Cin]`` by torch ``[O, I, kh, kw]``, by sums."""
  o, _, kh, kw = w.shape
  xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  h = (xp.shape[0] - kh) // stride + 1
  wd = (xp.shape[1] - kw) // stride + 1
  out = np.zeros((h, wd, o))
  for i in range(kh):
    for j in range(kw):
      patch = xp[i:i + stride * h:stride, j:j + stride * wd:stride]
      out += patch @ w[:, :, i, j].T
  return out


def _bn(x, state, name):
  g, b, m, v = (state[f"{name}.{p}"].astype(np.float64) for p in
                ("weight", "bias", "running_mean", "running_var"))
  return (x - m) / np.sqrt(v + 1e-5) * g + b


def _maxpool3x3s2(x):
  xp = np.pad(x, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  h, w = (x.shape[0] - 1) // 2 + 1, (x.shape[1] - 1) // 2 + 1
  return np.max([xp[i:i + 2 * h:2, j:j + 2 * w:2] for i in range(3)
                 for j in range(3)], axis=0)


def test_resnet101_conversion_uses_every_key_and_computes_like_torch(
    resnet101_file, tmp_path):
  path, state = resnet101_file
  dst = tmp_path / "rn101"
  pretrained.convert("resnet101", str(path), str(dst))
  model = pretrained.load_classifier(str(dst))
  table = pretrained._keys(model)  # pylint: disable=protected-access
  expected = {k for k in state if not k.endswith("num_batches_tracked")}
  assert set(table) == expected
  paths = [p for p, _ in table.values()]
  assert len(set(paths)) == len(paths)  # every key to its own variable
  n_vars = len(jax.tree.leaves(nnx.state(model, nnx.Param, nnx.BatchStat)))
  assert n_vars == len(expected)  # and every variable from a key

  x = np.random.default_rng(1).normal(size=(1, 16, 16, 3))
  relu = lambda t: np.maximum(t, 0)
  ref = _maxpool3x3s2(relu(_bn(_conv(x[0], state["conv1.weight"], 2, 3),
                              state, "bn1")))
  got = nnx.max_pool(
      jax.nn.relu(model.bn1(model.conv1(jnp.asarray(x, jnp.float32)))),
      (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
  np.testing.assert_allclose(np.asarray(got[0]), ref, rtol=1e-4, atol=1e-4)

  s = lambda k: state[f"layer1.0.{k}"].astype(np.float64)
  h = relu(_bn(_conv(ref, s("conv1.weight")), state, "layer1.0.bn1"))
  h = relu(_bn(_conv(h, s("conv2.weight"), 1, 1), state, "layer1.0.bn2"))
  h = _bn(_conv(h, s("conv3.weight")), state, "layer1.0.bn3")
  skip = _bn(_conv(ref, s("downsample.0.weight")), state,
             "layer1.0.downsample.1")
  ref_block = relu(h + skip)
  got_block = model.layer1[0](jnp.asarray(ref[None], jnp.float32))
  np.testing.assert_allclose(np.asarray(got_block[0]), ref_block, rtol=1e-4,
                             atol=1e-3)


# ---------------------------------------------------------------------------
# Bad input.

def test_another_architecture_is_refused(mobilenet_v2_path, tmp_path):  # noqa: F811
  with pytest.raises(ValueError, match="does not match ResNet.*missing.*"
                     "conv1.weight.*unexpected.*features"):
    pretrained.convert("resnet50", str(mobilenet_v2_path), str(tmp_path / "x"))


def test_truncated_file_is_refused(mobilenet_v2_path, tmp_path):  # noqa: F811
  cut = tmp_path / "cut.pth"
  cut.write_bytes(mobilenet_v2_path.read_bytes()[:1_000_000])
  with pytest.raises(ValueError, match="cut.pth.*truncated"):
    pretrained.convert("mobilenet_v2", str(cut), str(tmp_path / "x"))


def test_not_a_converted_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="no meta.json"):
    pretrained.load_classifier(str(tmp_path))


def test_unknown_arch():
  with pytest.raises(ValueError, match="'vgg'.*mobilenet_v2"):
    pretrained.classifier("vgg")


@pytest.mark.parametrize("shape", [(32, 32), (32, 32, 4), (3, 32, 32)])
def test_non_rgb_image_is_refused(shape):
  with pytest.raises(ValueError, match="RGB image"):
    pretrained.imagenet_input(np.zeros(shape, np.uint8))


def test_mis_shaped_tensor_is_named(mobilenet_v2_path):  # noqa: F811
  from potts_jax.models import torch_checkpoint  # pylint: disable=g-import-not-at-top
  state = torch_checkpoint.load(mobilenet_v2_path)
  state["features.5.conv.2.weight"] = state["features.5.conv.2.weight"][:16]
  with pytest.raises(ValueError, match=r"bad.pth: features.5.conv.2.weight "
                     r"has shape \(1, 1, 192, 16\).*expects \(1, 1, 192, 32\)"):
    pretrained.assign_state_dict(pretrained.classifier("mobilenet_v2"), state,
                                 source="bad.pth")
