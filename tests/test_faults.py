"""potts_jax.faults (fault points, NaN/inf detection) and data faults.

The fault variable is parsed strictly (a typo must not silently disable a
crash test), a point fires exactly at its ``n``-th call with SIGKILL or the
given error, and :func:`potts_jax.faults.nonfinite_leaves` names arrays by
their path. An example that cannot be read or decoded, in a list source or
in a corrupted array_record file of a prepared TFDS dataset, stops the input
pipeline with an error naming the dataset, the split and the example.
"""

import os
import signal
import subprocess
import sys

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from potts_jax import faults
from potts_jax.data import augmentation
from potts_jax.data import pipeline
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _fresh_counts(monkeypatch):
  monkeypatch.delenv(faults.ENV, raising=False)
  faults.reset()
  yield
  faults.reset()


def test_the_variable_is_parsed_strictly():
  assert faults.parse("evaluation") == {"evaluation": 1}
  assert faults.parse(" train_step:3, stage_boundary ,") == {
      "train_step": 3, "stage_boundary": 1}
  for bad, message in (("evalution", "unknown point 'evalution'"),
                       ("evaluation:0", "positive integer"),
                       ("evaluation:x", "positive integer"),
                       ("train_step:-2", "positive integer")):
    with pytest.raises(ValueError, match=message) as error:
      faults.parse(bad)
    assert faults.ENV in str(error.value)
  with pytest.raises(ValueError, match="unknown fault point 'nowhere'"):
    faults.maybe_fail("nowhere")


def test_a_point_fires_at_its_nth_call_only(monkeypatch):
  faults.maybe_fail("train_step", RuntimeError("unset: never raised"))
  monkeypatch.setenv(faults.ENV, "evaluation,train_step:3")
  faults.reset()
  for _ in range(2):
    faults.maybe_fail("train_step", RuntimeError("boom"))
    faults.maybe_fail("stage_boundary", RuntimeError("not named"))
  with pytest.raises(RuntimeError, match="boom"):
    faults.maybe_fail("train_step", RuntimeError("boom"))
  faults.maybe_fail("train_step", RuntimeError("only the 3rd"))
  with pytest.raises(OSError):
    faults.maybe_fail("evaluation", OSError(28, "full"))
  monkeypatch.setenv(faults.ENV, "evalution")
  with pytest.raises(ValueError, match="unknown point"):
    faults.maybe_fail("evaluation")


def test_a_point_kills_the_process_with_sigkill():
  code = ("from potts_jax import faults\n"
          "for i in range(3):\n"
          "  print('call', i + 1, flush=True)\n"
          "  faults.maybe_fail('evaluation')\n"
          "print('survived')\n")
  env = dict(os.environ, **{faults.ENV: "evaluation:2"})
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == -signal.SIGKILL, done.stderr
  assert done.stdout.split() == ["call", "1", "call", "2"]
  assert f"killing process {done.stderr.split()[3]} at evaluation (call 2)" \
      in done.stderr
  env.pop(faults.ENV)
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0 and "survived" in done.stdout


def test_nonfinite_leaves_name_the_arrays():
  model = nnx.Sequential(nnx.Linear(2, 3, rngs=nnx.Rngs(0)),
                         nnx.BatchNorm(3, rngs=nnx.Rngs(0)))
  _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  tree = jax.tree.map(np.array, {"params": params, "batch_stats": stats,
                                 "step": np.int32(3),
                                 "half": jnp.ones(2, jnp.bfloat16)})
  assert faults.nonfinite_leaves(tree) == []
  tree["params"]["layers"][0]["kernel"].get_value()[0, 1] = np.nan
  tree["batch_stats"]["layers"][1]["var"].get_value()[:] = np.inf
  tree["half"] = jnp.array([1, np.inf], jnp.bfloat16)
  assert faults.nonfinite_leaves(tree) == [
      "batch_stats/layers/1/var (0 NaN, 3 inf of 3)",
      "half (0 NaN, 1 inf of 2)",
      "params/layers/0/kernel (1 NaN, 0 inf of 6)"]


# Examples that cannot be read.


def _example(name: str, size: int = 40) -> dict:
  return {"image": np.full((size, size, 3), 90, np.uint8),
          "mask": np.zeros((size, size), np.uint8),
          "scribbles": np.full((size, size), 255, np.uint8), "name": name}


def _batches(source, n=4):
  dataset = pipeline.train_dataset(source, crop_size=32, batch_size=2, seed=0,
                                   process_index=0, process_count=1)
  iterator = iter(dataset)
  return [next(iterator) for _ in range(n)]


def test_a_corrupted_example_of_a_list_source_is_named():
  source = [_example(f"img{i}") for i in range(6)]
  _batches(source)
  # An image that is still its encoded bytes (a decoder that failed
  # silently), and labels of another size.
  source[3] = dict(source[3], image=np.frombuffer(b"\x89PNG...", np.uint8))
  with pytest.raises(augmentation.ExampleError) as error:
    _batches(source)
  assert ("example 3 ('img3') of a list source of 6 examples is invalid: "
          "ValueError: example 'img3': image must be [H, W, 3] uint8") in str(
              error.value)
  source[3] = dict(_example("img3"), mask=np.zeros((5, 5), np.uint8))
  with pytest.raises(augmentation.ExampleError, match=r"example 3 \('img3'\)"
                     r".*mask must be"):
    _batches(source)


class _Split:
  """A source with a split whose example 2 cannot be decoded."""

  split = "train"

  def __len__(self):
    return 4

  def __getitem__(self, index):
    if index == 2:
      raise OSError("cannot identify image file <_io.BytesIO object>")
    return _example(str(index))


def test_a_decode_error_names_split_and_index():
  with pytest.raises(augmentation.ExampleError) as error:
    _batches(_Split())
  assert str(error.value) == (
      "cannot read example 2 of _Split of 4 examples, split 'train': "
      "OSError: cannot identify image file <_io.BytesIO object>")
  assert isinstance(error.value.__cause__, OSError)


def test_a_corrupted_array_record_names_dataset_split_and_index(tmp_path):
  from potts_jax.data.builders import demo_builder  # pylint: disable=g-import-not-at-top
  options = dict(height=32, width=32, num_classes=3, train_size=4,
                 val_size=2)
  demo_builder.prepare(tmp_path, **options)
  name = demo_builder.config_name(**options)
  (path,) = tmp_path.glob(f"demo/{name}/1.0.0/demo-train.array_record-*")
  data = bytearray(path.read_bytes())
  second_image = data.find(b"PNG", data.find(b"PNG") + 1)
  assert second_image > 0
  data[second_image + 60:second_image + 120] = bytes(
      b ^ 0x5A for b in data[second_image + 60:second_image + 120])
  path.write_bytes(bytes(data))
  source = demo_builder.load(tmp_path, name)["train"]
  failed = []
  for i in range(len(source)):
    try:
      augmentation.read_indexed(source, i)
    except augmentation.ExampleError as e:
      failed.append((i, str(e)))
  assert len(failed) == 1, failed
  index, message = failed[0]
  assert message.startswith(
      f"cannot read example {index} of dataset demo/{name}/1.0.0, split "
      f"'train', in {tmp_path}")
  assert "Corrupted" in message
  with pytest.raises(augmentation.ExampleError,
                     match=f"example {index} of dataset demo/{name}"):
    _batches(source)
