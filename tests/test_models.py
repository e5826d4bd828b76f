"""Tests of potts_jax.models: MobileNetV2, ResNet-50/101, DeepLabV3+ (Flax NNX).

Speed: real ``nnx`` initialisation dispatches hundreds of small random ops
(10-20 s per network on a loaded 2-core CPU), so the tests build networks
abstractly with ``nnx.eval_shape`` and, where values are needed, fill the
abstract state from numpy (:func:`_materialize`). Shapes of the full-size
networks come from ``jax.eval_shape`` (tracing, no compilation); one small
MobileNetV2 DeepLabV3+ and one full ResNet-50 DeepLabV3+ run for real.

References: torchvision's parameter counts (``sum(p.numel() for p in
model.parameters())``), state_dict keys and tensor shapes, written out below;
float64 numpy for the dilated convolutions and the BatchNorm statistics.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from potts_jax.models import deeplabv3plus, layers, mobilenet_v2, resnet
shard_map = getattr(jax, "shard_map", None)
if shard_map is None:  # older jax
  from jax.experimental.shard_map import shard_map  # pylint: disable=g-import-not-at-top

# torchvision: sum(p.numel() for p in model.parameters()).
TORCHVISION_PARAMS = {"mobilenet_v2": 3_504_872, "resnet50": 25_557_032,
                      "resnet101": 44_549_160}
# len(state_dict()) minus the num_batches_tracked buffers (one per BN).
TORCHVISION_KEYS = {"mobilenet_v2": 314 - 52, "resnet50": 320 - 53,
                    "resnet101": 626 - 104}
# A few torchvision state_dict entries and their torch shapes.
TORCH_SHAPES = {
    "mobilenet_v2": {
        "features.0.0.weight": ((32, 3, 3, 3), "conv"),
        "features.1.conv.0.0.weight": ((32, 1, 3, 3), "depthwise"),
        "features.1.conv.1.weight": ((16, 32, 1, 1), "conv"),
        "features.1.conv.2.running_var": ((16,), "bn_var"),
        "features.2.conv.0.0.weight": ((96, 16, 1, 1), "conv"),
        "features.2.conv.1.0.weight": ((96, 1, 3, 3), "depthwise"),
        "features.2.conv.1.1.weight": ((96,), "bn_scale"),
        "features.17.conv.2.weight": ((320, 960, 1, 1), "conv"),
        "features.18.0.weight": ((1280, 320, 1, 1), "conv"),
        "features.18.1.running_mean": ((1280,), "bn_mean"),
        "classifier.1.weight": ((1000, 1280), "linear"),
        "classifier.1.bias": ((1000,), "bias"),
    },
    "resnet50": {
        "conv1.weight": ((64, 3, 7, 7), "conv"),
        "bn1.bias": ((64,), "bn_bias"),
        "layer1.0.conv2.weight": ((64, 64, 3, 3), "conv"),
        "layer1.0.downsample.0.weight": ((256, 64, 1, 1), "conv"),
        "layer1.0.downsample.1.running_var": ((256,), "bn_var"),
        "layer2.0.conv2.weight": ((128, 128, 3, 3), "conv"),
        "layer4.2.bn3.running_var": ((2048,), "bn_var"),
        "fc.weight": ((1000, 2048), "linear"),
        "fc.bias": ((1000,), "bias"),
    },
    "resnet101": {
        "layer3.22.conv3.weight": ((1024, 256, 1, 1), "conv"),
        "layer3.22.bn3.weight": ((1024,), "bn_scale"),
        "layer4.0.downsample.0.weight": ((2048, 1024, 1, 1), "conv"),
    },
}


@functools.lru_cache(maxsize=None)
def _backbone(name, output_stride=32, include_top=True, width=1.0):
  """An abstract (``nnx.eval_shape``) backbone, built once per configuration.

  Shared between tests: never mutate it (copy with ``nnx.merge(*nnx.split(m))``).
  """
  kw = dict(output_stride=output_stride, include_top=include_top)
  if name == "mobilenet_v2":
    return nnx.eval_shape(lambda: mobilenet_v2.MobileNetV2(
        width=width, rngs=nnx.Rngs(0), **kw))
  return nnx.eval_shape(lambda: resnet.ResNet(int(name[6:]), rngs=nnx.Rngs(0), **kw))


@functools.lru_cache(maxsize=None)
def _deeplab(backbone, output_stride):
  """An abstract full-width DeepLabV3+ with 7 classes, built once."""
  return nnx.eval_shape(lambda: deeplabv3plus.DeepLabV3Plus(
      backbone, 7, output_stride=output_stride, rngs=nnx.Rngs(0)))


def _is_variable(x):
  return isinstance(x, nnx.Variable)


def _materialize(make, seed=0):
  """``make()`` with values from numpy: He-normal kernels, BN identity, zero biases."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  rng = np.random.default_rng(seed)

  def fill(path, var):
    shape, leaf = var.shape, path[-1].key
    if isinstance(var, nnx.RngKey):
      return var.replace(jax.random.key(seed))
    if isinstance(var, nnx.RngCount):
      return var.replace(jnp.zeros(shape, jnp.uint32))
    if leaf == "kernel":
      fan_in = np.prod(shape[:-1])
      value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif leaf in ("scale", "var"):
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    return var.replace(jnp.asarray(value, jnp.float32))

  state = jax.tree_util.tree_map_with_path(fill, state, is_leaf=_is_variable)
  return nnx.merge(graphdef, state)


def _abstract_call(model, shape, method="__call__"):
  """``jax.eval_shape`` of ``getattr(model, method)(x)`` for ``x`` of ``shape``."""
  graphdef, state = nnx.split(model)
  fn = lambda s, x: getattr(nnx.merge(graphdef, s), method)(x)
  return jax.eval_shape(fn, state, jax.ShapeDtypeStruct(shape, jnp.float32))


def _torch_size(size, stride):
  """Spatial size after ``log2(stride)`` torch stride-2 convs (k3 p1 / k1 p0)."""
  while stride > 1:
    size, stride = (size - 1) // 2 + 1, stride // 2
  return size


# ----------------------------------------------------------------------------
# Parameter counts and torchvision keys.


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_param_count_matches_torchvision(name):
  count = layers.count_params(_backbone(name))
  print(f"{name}: {count:,} parameters (torchvision {TORCHVISION_PARAMS[name]:,})")
  assert count == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_torchvision_keys_cover_state_with_torch_shapes(name):
  model = _backbone(name)
  lib = mobilenet_v2 if name == "mobilenet_v2" else resnet
  table = lib.torchvision_keys(model)
  assert len(table) == TORCHVISION_KEYS[name]
  leaves = {tuple(path): var.get_value() for path, var in
            nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}
  # A bijection between the torch keys and every Param / BatchStat of the model.
  assert sorted(path for path, _ in table.values()) == sorted(leaves)
  for key, (path, kind) in table.items():
    assert kind in layers.KINDS, key
    assert ".".join(map(str, path[:-1])) == key.rsplit(".", 1)[0]
  for key, (torch_shape, kind) in TORCH_SHAPES[name].items():
    path, got_kind = table[key]
    assert got_kind == kind, key
    converted = layers.torch_to_flax(kind, np.zeros(torch_shape, np.float32))
    assert converted.shape == leaves[path].shape, key


def test_torchvision_keys_examples():
  mnv2 = mobilenet_v2.torchvision_keys(_backbone("mobilenet_v2"))
  assert mnv2["features.0.0.weight"] == (("features", 0, 0, "kernel"), "conv")
  assert mnv2["features.2.conv.1.0.weight"] == (
      ("features", 2, "conv", 1, 0, "kernel"), "depthwise")
  assert mnv2["features.1.conv.2.running_mean"] == (
      ("features", 1, "conv", 2, "mean"), "bn_mean")
  r50 = resnet.torchvision_keys(_backbone("resnet50"))
  assert r50["layer1.0.downsample.1.weight"] == (
      ("layer1", 0, "downsample", 1, "scale"), "bn_scale")
  assert r50["fc.weight"] == (("fc", "kernel"), "linear")
  table = deeplabv3plus.torchvision_keys(_deeplab("resnet101", 16))
  assert table["layer4.2.conv2.weight"] == (
      ("backbone", "layer4", 2, "conv2", "kernel"), "conv")
  assert not any(key.startswith("fc.") for key in table)
  assert len(table) == TORCHVISION_KEYS["resnet101"] - 2


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet50"])
def test_classify_returns_imagenet_logits(name):
  model = _backbone(name)
  model.eval()
  assert _abstract_call(model, (2, 64, 48, 3), "classify").shape == (2, 1000)
  with pytest.raises(ValueError, match="include_top"):
    _abstract_call(_backbone(name, 8, include_top=False), (1, 32, 32, 3), "classify")


def test_torch_to_flax_layouts():
  w = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # OIHW
  np.testing.assert_array_equal(layers.torch_to_flax("conv", w)[3, 4, 2, 1],
                                w[1, 2, 3, 4])
  np.testing.assert_array_equal(layers.torch_to_flax("linear", w[0, 0]), w[0, 0].T)
  with pytest.raises(ValueError):
    layers.torch_to_flax("nope", w)


def test_make_divisible_matches_torchvision():
  assert [mobilenet_v2.make_divisible(c * 0.35) for c in (32, 16, 24, 320)] == [
      16, 8, 8, 112]
  assert mobilenet_v2.make_divisible(1280 * 1.4) == 1792


# ----------------------------------------------------------------------------
# Output stride and dilation.

MNV2_STRIDES = {
    32: [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1],
    16: [1, 2, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    8: [1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
}
MNV2_DILATIONS = {
    32: [1] * 17,
    16: [1] * 14 + [2, 2, 2],
    8: [1] * 7 + [2] * 7 + [4, 4, 4],
}
# (layer3, layer4) first-block and later-block dilations of the 3x3 convs.
RESNET_DILATIONS = {32: ((1, 1), (1, 1)), 16: ((1, 1), (1, 2)), 8: ((1, 2), (2, 4))}


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_backbone_output_stride(output_stride):
  mnv2 = _backbone("mobilenet_v2", output_stride, include_top=False, width=0.5)
  blocks = [mnv2.features[i].conv[-3][0] for i in range(1, 18)]
  assert [b.strides[0] for b in blocks] == MNV2_STRIDES[output_stride]
  assert [b.kernel_dilation[0] for b in blocks] == MNV2_DILATIONS[output_stride]
  assert all(b.padding == ((d, d),) * 2 for b, d in
             zip(blocks, MNV2_DILATIONS[output_stride]))
  r50 = _backbone("resnet50", output_stride, include_top=False)
  for layer, (first, later) in zip((r50.layer3, r50.layer4),
                                   RESNET_DILATIONS[output_stride]):
    assert layer[0].conv2.kernel_dilation[0] == first
    assert layer[1].conv2.kernel_dilation[0] == later
  for model, channels in ((mnv2, (16, 160)), (r50, (256, 2048))):
    low, high = _abstract_call(model, (1, 64, 64, 3))
    assert low.shape == (1, 16, 16, channels[0])
    assert high.shape == (1, 64 // output_stride, 64 // output_stride, channels[1])
    if output_stride == 8:  # odd sizes round up as in torch (one case suffices)
      low, high = _abstract_call(model, (1, 129, 97, 3))
      assert low.shape[1:3] == (_torch_size(129, 4), _torch_size(97, 4))
      assert high.shape[1:3] == (_torch_size(129, 8), _torch_size(97, 8))


def _dilated_conv_reference(x, kernel, dilation, groups):
  """float64 ``[B, H, W, Cin] * [3, 3, Cin/groups, Cout]``, stride 1, pad dilation."""
  x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
  d, (_, h, w, _) = dilation, x.shape
  xp = np.pad(x, ((0, 0), (d, d), (d, d), (0, 0)))
  out = 0.0
  for u in range(3):
    for v in range(3):
      patch = xp[:, u * d:u * d + h, v * d:v * d + w]
      if groups == 1:
        out = out + np.einsum("bhwi,io->bhwo", patch, kernel[u, v])
      else:  # depthwise
        out = out + patch * kernel[u, v, 0]
  return out


@pytest.mark.parametrize("which", ["mobilenet_v2 depthwise", "resnet50"])
def test_dilated_backbone_conv_matches_float64_reference(which):
  if which == "resnet50":
    conv = _backbone("resnet50", 8, include_top=False).layer4[1].conv2
    dilation, groups = 4, 1
  else:
    model = _backbone("mobilenet_v2", 8, include_top=False, width=0.5)
    conv = model.features[15].conv[1][0]
    dilation, groups = 4, conv.in_features
  conv = nnx.merge(*nnx.split(conv))  # a copy: the cached model stays abstract
  assert conv.kernel_dilation == (dilation, dilation)
  assert conv.feature_group_count == groups
  rng = np.random.default_rng(0)
  kernel = rng.standard_normal(conv.kernel.shape).astype(np.float32)
  conv.kernel.set_value(jnp.asarray(kernel))
  x = rng.standard_normal((1, 9, 7, conv.in_features)).astype(np.float32)
  expected = _dilated_conv_reference(x, kernel, dilation, groups)
  actual = np.asarray(conv(jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(actual, expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


# ----------------------------------------------------------------------------
# DeepLabV3+.

@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet101"])
def test_deeplab_logit_shape(backbone, output_stride, train):
  model = _deeplab(backbone, output_stride)
  model.train() if train else model.eval()
  out = _abstract_call(model, (2, 129, 97, 3))
  assert out.shape == (2, 129, 97, 7) and out.dtype == jnp.float32


def _bn_means(model):
  return [var.get_value() for path, var in
          nnx.to_flat_state(nnx.state(model, nnx.BatchStat)) if path[-1] == "mean"]


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet50"])
def test_deeplab_runs_in_train_and_eval_mode(backbone):
  """A real forward pass at odd sizes (mobilenet narrow, resnet50 full width)."""
  kw = dict(width=0.35, channels=32) if backbone == "mobilenet_v2" else {}
  output_stride = 16 if backbone == "mobilenet_v2" else 8
  model = _materialize(lambda: deeplabv3plus.DeepLabV3Plus(
      backbone, 5, output_stride=output_stride, rngs=nnx.Rngs(0), **kw))
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 129, 97, 3)),
                  jnp.float32)
  forward = nnx.jit(lambda m, x: m(x))
  if backbone == "mobilenet_v2":
    model.train()
    logits = forward(model, x)
    chex.assert_shape(logits, (2, 129, 97, 5))
    chex.assert_tree_all_finite(logits)
    # Batch statistics were accumulated: every BN's running mean moved off 0.
    assert all(np.any(np.asarray(mean) != 0) for mean in _bn_means(model))
  model.eval()
  before = _bn_means(model)
  logits = forward(model, x)
  chex.assert_shape(logits, (2, 129, 97, 5))
  chex.assert_tree_all_finite(logits)
  chex.assert_trees_all_equal(before, _bn_means(model))
  if backbone == "mobilenet_v2":  # deterministic in eval mode
    chex.assert_trees_all_equal(logits, forward(model, x))


def test_bad_options_raise():
  with pytest.raises(ValueError, match="output_stride"):
    deeplabv3plus.DeepLabV3Plus(output_stride=32, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="backbone"):
    nnx.eval_shape(lambda: deeplabv3plus.DeepLabV3Plus("vgg", rngs=nnx.Rngs(0)))


# ----------------------------------------------------------------------------
# Head / backbone labels.


def test_param_labels_and_multi_transform():
  model = _materialize(lambda: deeplabv3plus.DeepLabV3Plus(
      "mobilenet_v2", 3, width=0.35, channels=16, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  labels = deeplabv3plus.param_labels(params)
  flat = dict(nnx.to_flat_state(labels))
  assert set(flat.values()) == {"backbone", "head"}
  for path, label in flat.items():
    assert label == ("backbone" if path[0] == "backbone" else "head"), path
    assert path[0] in ("backbone", "classifier")
  assert flat[("classifier", "aspp", "convs", 1, 0, "kernel")] == "head"
  assert flat[("classifier", "project", 0, "kernel")] == "head"
  assert flat[("backbone", "features", 3, "conv", 1, 0, "kernel")] == "backbone"

  tx = optax.multi_transform({"backbone": optax.sgd(0.1), "head": optax.sgd(1.0)},
                             deeplabv3plus.param_labels)
  before = jax.tree.map(np.asarray, nnx.as_pure(params))
  # Gradients as nnx.grad returns them: a State of Params.
  grads = jax.tree.map(jnp.ones_like, params)
  # Functional: pure arrays.
  pure = nnx.as_pure(params)
  updates, _ = jax.jit(tx.update)(nnx.as_pure(grads), tx.init(pure), pure)
  lr = {"backbone": -0.1, "head": -1.0}
  for path, update in nnx.to_flat_state(updates):
    np.testing.assert_allclose(update, lr[flat[path]], err_msg=str(path))
  # Stateful: nnx.Optimizer over the Params.
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  nnx.jit(lambda opt, m, g: opt.update(m, g))(optimizer, model, grads)
  after = dict(nnx.to_flat_state(nnx.as_pure(nnx.state(model, nnx.Param))))
  for path, value in nnx.to_flat_state(before):
    np.testing.assert_allclose(after[path], value + lr[flat[path]], rtol=1e-6,
                               atol=1e-6, err_msg=str(path))


# ----------------------------------------------------------------------------
# Synchronised BatchNorm.


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "per_device"])
def test_sync_batch_norm_uses_global_batch_statistics(sync):
  devices = 4
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("data",))
  bn = layers.batch_norm(3, axis_name="data" if sync else None, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(bn)

  def step(state, x):
    module = nnx.merge(graphdef, state)
    y = module(x)
    return y, module.mean[...][None], module.var[...][None]

  step = jax.jit(shard_map(step, mesh=mesh, in_specs=(P(), P("data")),
                           out_specs=(P("data"),) * 3))
  # Device d's slice is N(10 d, (d + 1)²): per-device and global statistics
  # differ a lot. The float64 reference sees the float32-rounded inputs.
  d = np.arange(devices)[:, None, None, None, None]
  x = np.random.default_rng(0).standard_normal((devices, 2, 3, 2, 3)) * (d + 1)
  x = (x + 10.0 * d).astype(np.float32).astype(np.float64)
  y, mean, var = jax.device_get(step(state, jnp.asarray(x.reshape(8, 3, 2, 3),
                                                        jnp.float32)))
  if sync:
    mu = np.broadcast_to(x.mean((0, 1, 2, 3)), (devices, 3))
    sigma2 = np.broadcast_to(x.var((0, 1, 2, 3)), (devices, 3))
  else:
    mu, sigma2 = x.mean((1, 2, 3)), x.var((1, 2, 3))
  expected_y = (x - mu[:, None, None, None]) / np.sqrt(
      sigma2[:, None, None, None] + layers.BN_EPSILON)
  np.testing.assert_allclose(y.reshape(x.shape), expected_y, rtol=1e-4, atol=1e-4)
  # torch momentum 0.1: r = 0.9 r + 0.1 batch (initial mean 0, var 1).
  np.testing.assert_allclose(mean, 0.1 * mu, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(var, 0.9 + 0.1 * sigma2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride,dilation,hw", [(1, 1, (17, 14)),
                                                (2, 1, (17, 14)),
                                                (2, 1, (16, 12)),
                                                (1, 2, (9, 11)),
                                                (1, 4, (13, 13))])
def test_depthwise_conv_matches_grouped_convolution(stride, dilation, hw):
  # The CPU path (shifted products) against XLA's grouped convolution, in
  # value and in both gradients, at torch's padding.
  conv = layers.conv(6, 6, 3, stride=stride, dilation=dilation, groups=6,
                     rngs=nnx.Rngs(0))
  assert isinstance(conv, layers.DepthwiseConv)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, *hw, 6))
  kernel = conv.kernel[...]

  def reference(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((dilation, dilation),) * 2,
        rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6,
        precision=jax.lax.Precision.HIGHEST)

  def ours(x, kernel):
    return layers.shifted_depthwise(x, kernel, strides=conv.strides,
                                    padding=conv.padding,
                                    dilation=conv.kernel_dilation)

  weights = jax.random.normal(jax.random.PRNGKey(2), reference(x, kernel).shape)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)) * weights)
  np.testing.assert_allclose(conv(x), reference(x, kernel),
                             rtol=1e-5, atol=1e-5)
  got = jax.grad(loss(ours), argnums=(0, 1))(x, kernel)
  want = jax.grad(loss(reference), argnums=(0, 1))(x, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_only_depthwise_convs_take_the_shifted_path():
  rngs = nnx.Rngs(0)
  assert type(layers.conv(8, 8, 3, rngs=rngs)) is nnx.Conv
  assert type(layers.conv(8, 16, 3, groups=8, rngs=rngs)) is nnx.Conv
  assert type(layers.conv(8, 8, 3, groups=8, rngs=rngs)) is layers.DepthwiseConv
