"""The configs load, use only known keys, and hold the paper's numbers.

Paper numbers checked here (appendix C and Tables 3-6 of shared/paper.md):
VOC train_aug 10,582 images, 21 classes, 60 epochs per stage, batch 12, crop
513, lr 0.007 (stage 1, pCE) and 0.0007 (stage 2), poly 0.9, eta 0.3,
lambda 6, sigma_rgb 9 on VOC and 3 on Cityscapes / ADE20k, H_CCE + P_CD on the
nearest neighbours, 200 solver steps of 0.075, DeepLabV3+ on MobileNetV2 (and
ResNet-101 for Tables 5-6), Cityscapes 19 classes / 2,975 images, ADE20k 150
classes / 20,210 images, block-wise supervision at 50%, single stage.
"""

import importlib.util
import math
import sys

from absl import flags
from ml_collections import config_flags
import ml_collections
import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO))
from configs import ade20k  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import camvid  # noqa: E402
from configs import cityscapes  # noqa: E402
from configs import common  # noqa: E402
from configs import voc  # noqa: E402
from configs import voc_r101  # noqa: E402

LOSS_VARIANTS = (
    [f"method={m}" for m in ("pce", "gd", "soft_sl", "hard_sl")]
    + [f"relaxation={r}" for r in ("bl", "q", "nq", "cce", "cd", "lq")]
    + [f"cross_entropy={h}" for h in ("ce", "rce", "cce")]
    + [f"neighborhood={n}" for n in ("nn4", "nn8", "dense")]
    + ["runlocal", "pretrained=false", "batch=16",
       "method=gd,relaxation=q,neighborhood=dense,runlocal"])
VOC_VARIANTS = LOSS_VARIANTS + [
    "stage=both", "stage=1", "stage=2", "length=0", "length=0.3",
    "length=0.5", "length=0.8", "length=1.0", "stage=1,length=0.5,runlocal"]
BLOCK_VARIANTS = LOSS_VARIANTS + [
    "stage=single", "stage=both", "stage=1", "stage=2", "block=10",
    "block=20", "block=50"]
CAMVID_VARIANTS = LOSS_VARIANTS + [
    "stage=both", "stage=1", "stage=2", "eval=val", "eval=test"]
CASES = ([(voc, v) for v in [""] + VOC_VARIANTS]
         + [(voc_r101, v) for v in ["", "runlocal", "stage=1", "batch=16",
                                    "stage=single"]]
         + [(cityscapes, v) for v in [""] + BLOCK_VARIANTS]
         + [(ade20k, v) for v in [""] + BLOCK_VARIANTS]
         + [(camvid, v) for v in [""] + CAMVID_VARIANTS])
MODULES = (voc, voc_r101, cityscapes, ade20k, camvid)


def _flat(d, prefix=""):
  """``{dotted key: value}`` of a (nested) ConfigDict or dict."""
  out = {}
  for key, value in d.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)) and key != "demo":
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


DEFAULTS = _flat(common.get_config())


@pytest.mark.parametrize("module,variant", CASES,
                         ids=[f"{m.__name__.split('.')[-1]}:{v}"
                              for m, v in CASES])
def test_loads_with_known_keys_only(module, variant):
  c = module.get_config(variant)
  flat = _flat(c)
  assert set(flat) == set(DEFAULTS), set(flat) ^ set(DEFAULTS)
  for key, value in flat.items():  # Same types as the defaults.
    default = DEFAULTS[key]
    if isinstance(default, bool) or isinstance(value, bool):
      assert type(value) is type(default), key
    elif isinstance(default, (int, float)):
      assert isinstance(value, (int, float)), key
    else:
      assert isinstance(value, type(default)), (key, value)
  for stage in c.stages:  # train._stage_configs adds them unlocked.
    assert set(stage) <= set(DEFAULTS), set(stage) - set(DEFAULTS)
    assert stage["method"] in voc.METHODS
  assert c.batch_size % 4 == 0 or "runlocal" not in variant
  assert c.method in voc.METHODS
  assert c.relaxation in voc.RELAXATIONS
  assert c.neighborhood in voc.NEIGHBORHOODS
  assert c.total_steps > 0 and c.name


@pytest.mark.parametrize("module", MODULES)
def test_locked_unknown_variant_and_bad_values_raise(module):
  with pytest.raises(ValueError, match="unknown config variant 'metod'"):
    module.get_config("metod=gd")
  with pytest.raises(ValueError, match="method"):
    module.get_config("method=sgd")
  with pytest.raises(ValueError, match="relaxation"):
    module.get_config("relaxation=potts")
  with pytest.raises(ValueError, match="neighborhood"):
    module.get_config("neighborhood=nn6")
  with pytest.raises(ValueError, match="stage"):
    module.get_config("stage=3")
  c = module.get_config("")
  with pytest.raises(AttributeError):
    c.totl_steps = 10  # A typo in a config file fails.
  with pytest.raises(AttributeError):
    c.model.pretrained = "x"
  with pytest.raises(TypeError):
    c.total_steps = "many"


def _load_with_flags(argv):
  """``argv`` through ml_collections' config_flags, as main() parses it."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values,
                                  sys_argv=["main"] + argv)
  values(["main"] + argv)
  return values.config


def test_command_line_overrides():
  path = REPO / "configs" / "voc.py"
  c = _load_with_flags([f"--config={path}:stage=1,runlocal",
                        "--config.lr=0.01", "--config.data_dir=/tmp/tfds",
                        "--config.model.width=0.5"])
  assert (c.lr, c.data_dir, c.model.width, c.method) == (
      0.01, "/tmp/tfds", 0.5, "pce")
  with pytest.raises((AttributeError, flags.Error), match="lrr"):
    _load_with_flags([f"--config={path}", "--config.lrr=0.01"])
  with pytest.raises(Exception, match="unknown config variant"):
    _load_with_flags([f"--config={path}:nonsense"])


def test_voc_is_the_papers_recipe():
  c = voc.get_config()
  assert (c.dataset, c.dataset_config, c.train_split, c.eval_split) == (
      "voc_scribble", "xml", "train_aug", "val")
  assert c.num_classes == 21
  assert (c.model.backbone, c.model.output_stride) == ("mobilenet_v2", 16)
  assert c.model.pretrained_dir == "weights/mobilenet_v2"
  assert (c.batch_size, c.crop_size) == (12, 513)
  assert c.total_steps == 52_910 == math.ceil(60 * 10_582 / 12)
  assert (c.momentum, c.weight_decay, c.poly_power, c.head_lr_mult) == (
      0.9, 5e-4, 0.9, 10.0)
  assert (c.cross_entropy, c.relaxation, c.neighborhood) == ("cce", "cd",
                                                             "nn4")
  assert (c.eta, c.lam, c.sigma_rgb) == (0.3, 6.0, 9.0)
  assert (c.solver_steps, c.solver_step_size) == (200, 0.075)
  assert not c.full_supervision and c.eval_scales == (1.0,)
  assert not c.eval_flip
  # Two stages: pCE at 0.007, then soft SL at 0.0007 from stage 1.
  assert [dict(s) for s in c.stages] == [
      {"name": "stage1", "method": "pce", "lr": 0.007},
      {"name": "stage2", "method": "soft_sl", "lr": 0.0007}]
  s1, s2 = c.stages
  assert s2["lr"] == pytest.approx(s1["lr"] / 10)
  assert "init_from" not in s2  # train: stage k starts from stage k - 1.


def test_voc_variants():
  one = voc.get_config("stage=1")
  assert (one.stages, one.method, one.lr) == ((), "pce", 0.007)
  two = voc.get_config("stage=2,method=hard_sl,relaxation=q")
  assert (two.stages, two.method, two.lr, two.relaxation) == (
      (), "hard_sl", 0.0007, "q")
  assert voc.get_config("method=gd").stages[1]["method"] == "gd"
  # Table 5's "no pretrain": soft SL from ImageNet at the stage-1 lr.
  single = voc_r101.get_config("stage=single")
  assert (single.stages, single.method, single.lr) == ((), "soft_sl", 0.007)
  assert single.model.pretrained_dir == "weights/resnet101"
  assert not single.get("init_from")
  assert voc.get_config("length=0.5").dataset_config == "xml_len0.5"
  assert voc.get_config("length=0").dataset_config == "xml_len0"
  with pytest.raises(ValueError, match="length"):
    voc.get_config("length=0.4")
  b16 = voc.get_config("batch=16")
  assert (b16.batch_size, b16.total_steps) == (16, math.ceil(60 * 10582 / 16))
  assert voc.get_config("pretrained=false").model.pretrained_dir == ""
  local = voc.get_config("runlocal")
  assert local.total_steps <= 5 and local.solver_steps <= 10
  assert local.crop_size < 100 and local.model.pretrained_dir == ""
  assert local.batch_size % 4 == 0 and len(local.stages) == 2


def test_resnet101_and_block_configs():
  r101 = voc_r101.get_config()
  assert (r101.model.backbone, r101.model.pretrained_dir) == (
      "resnet101", "weights/resnet101")
  assert [s["lr"] for s in r101.stages] == [0.007, 0.0007]
  assert (r101.batch_size, r101.crop_size, r101.sigma_rgb) == (12, 513, 9.0)
  for module, dataset, classes, images in (
      (cityscapes, "cityscapes_block", 19, 2_975),
      (ade20k, "ade20k_block", 150, 20_210)):
    c = module.get_config()
    assert (c.dataset, c.dataset_config, c.num_classes) == (
        dataset, "block50", classes)
    assert module.TRAIN_IMAGES == images
    assert c.sigma_rgb == 3.0  # Paper: 3 for Cityscapes and ADE20k.
    assert (c.eta, c.lam) == (0.3, 6.0)
    assert (c.cross_entropy, c.relaxation, c.neighborhood) == (
        "cce", "cd", "nn4")
    assert c.model.backbone == "resnet101" and c.batch_size == 12
    assert c.stages == () and c.method == "soft_sl"  # Single stage.
    assert c.total_steps == math.ceil(module.EPOCHS * images / 12)
    assert module.get_config("block=20").dataset_config == "block20"
    both = module.get_config("stage=both")
    assert [s["lr"] for s in both.stages] == [c.lr, pytest.approx(c.lr / 10)]
  assert cityscapes.get_config().crop_size == 769


def test_camvid_reads_the_shared_folder():
  c = camvid.get_config()
  assert c.dataset == "folder" and c.num_classes == 11
  assert c.folder_root == str(REPO.parent / "shared" / "data" / "camvid")
  assert c.scribble_set == "synthetic"
  assert c.total_steps == math.ceil(60 * 367 / 12)
  assert [s["lr"] for s in c.stages] == [0.007, 0.0007]
  assert camvid.get_config("eval=val").eval_split == "val"
  c2 = _load_with_flags([f"--config={REPO / 'configs' / 'camvid.py'}",
                         "--config.folder_root=/data/camvid",
                         "--config.data_dir=/tmp/tfds"])
  assert (c2.folder_root, c2.data_dir) == ("/data/camvid", "/tmp/tfds")


@pytest.mark.parametrize("module,expected", [
    (voc, "71.22"), (voc_r101, "77.7"), (cityscapes, "72.4"),
    (ade20k, "39.7"), (camvid, "no number in the paper")])
def test_docstring_has_command_and_expected_result(module, expected):
  name = module.__name__.split(".")[-1]
  assert (f"python -m potts_jax.main --config=configs/{name}.py "
          "--workdir=DIR") in module.__doc__
  assert expected in module.__doc__


def _sweep():
  spec = importlib.util.spec_from_file_location(
      "sweep", REPO / "launch" / "sweep.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _dry_run(capsys, *argv):
  assert _sweep().main(list(argv)) == 0
  return capsys.readouterr().out.splitlines()


def test_sweep_dry_run_prints_the_grids(capsys):
  lines = _dry_run(capsys, "--root", "R")
  # Table 3: 6 relaxations x 5 lengths, Table 4: gd / hard / soft on nn4,
  # one stage 1 per length.
  assert len(lines) == 6 * 5 + 3 + 5 == len(set(lines))
  assert lines[0] == ("python -m potts_jax.main "
                      "--config=configs/voc.py:stage=1,length=1.0 "
                      "--workdir=R/stage1/len1")
  assert ("python -m potts_jax.main --config=configs/voc.py:stage=2,"
          "method=soft_sl,cross_entropy=cce,relaxation=cd,neighborhood=nn4,"
          "length=0.3 --workdir=R/table3/cd_len0.3 "
          "--config.init_from=R/stage1/len0.3") in lines
  assert lines[-1] == (
      "python -m potts_jax.main --config=configs/voc.py:stage=2,"
      "method=soft_sl,cross_entropy=cce,relaxation=q,neighborhood=nn4,"
      "length=1.0 --workdir=R/table4/soft_sl_nn4 "
      "--config.init_from=R/stage1/len1")
  stage1 = [i for i, l in enumerate(lines) if ":stage=1," in l]
  assert len(stage1) == 5
  for i, line in enumerate(lines):  # Every stage 2 after its stage 1.
    if "init_from=" in line:
      init = line.split("init_from=")[1].split()[0]
      assert any(f"--workdir={init}" in lines[j] for j in stage1 if j < i)
  for relaxation in ("bl", "q", "nq", "cce", "cd", "lq"):
    assert sum(f"relaxation={relaxation}," in l and "table3" in l
               for l in lines) == 5


def test_sweep_options(capsys):
  lines = _dry_run(capsys, "--root", "R", "--tables", "4", "--dense",
                   "--variant", "batch=16", "--", "--config.data_dir=/d")
  assert len(lines) == 1 + 6
  assert all(l.endswith("--config.data_dir=/d") for l in lines)
  assert all(",batch=16 " in l for l in lines)
  assert sum("neighborhood=dense" in l for l in lines) == 3
  assert len(_dry_run(capsys, "--tables", "3", "--lengths", "1.0,1")) == 7
  with pytest.raises(SystemExit):
    _sweep().main(["--relaxations", "potts"])


def test_sweep_run_skips_finished_and_stops_on_failure(tmp_path, capsys,
                                                       monkeypatch):
  sweep = _sweep()
  calls = []
  monkeypatch.setattr(sweep.subprocess, "call",
                      lambda cmd: calls.append(cmd) or 0)
  root = tmp_path / "runs"
  (root / "stage1" / "len1").mkdir(parents=True)
  (root / "stage1" / "len1" / "metrics.json").write_text("{}")
  args = ["--root", str(root), "--tables", "3", "--lengths", "1.0", "--run"]
  assert sweep.main(args) == 0
  assert len(calls) == 6  # stage 1 was done
  assert calls[0][0] == sys.executable
  assert "done, skipped" in capsys.readouterr().out
  calls.clear()
  monkeypatch.setattr(sweep.subprocess, "call",
                      lambda cmd: calls.append(cmd) or 3)
  assert sweep.main(args) == 3 and len(calls) == 1


def test_eval_protocols_are_set_explicitly():
  from configs import camvid_small  # pylint: disable=g-import-not-at-top
  from configs import demo  # pylint: disable=g-import-not-at-top
  from potts_jax import train  # pylint: disable=g-import-not-at-top
  for module in (voc, voc_r101):
    c = module.get_config("")
    assert (c.eval_protocol, c.eval_crop_size, tuple(c.eval_pad_to)) == (
        "full", 513, (512, 512))
  # Their frames all have one size: full pads nothing, as before.
  assert camvid_small.get_config("").eval_protocol == "full"
  assert demo.get_config("").eval_protocol == "full"
  assert common.get_config().eval_protocol in train.EVAL_PROTOCOLS


def test_voc_dense_is_the_papers_dn_self_labeling_loss():
  """neighborhood=dense: H_CCE + P_Q, σ_xy 100, σ_rgb 9, λ 6e-3 (the 4-NN
  λ 6 per unit of a pixel's affinity; voc.set_dense), runnable as is."""
  from potts_jax import solver_checks  # pylint: disable=g-import-not-at-top
  for variant in ("neighborhood=dense", "neighborhood=dense,relaxation=q",
                  "neighborhood=dense,stage=2,method=hard_sl"):
    c = voc.get_config(variant)
    assert (c.relaxation, c.cross_entropy, c.sigma_xy, c.sigma_rgb) == (
        "q", "cce", 100.0, 9.0), variant
    assert (c.lam, c.eta, c.dense_scale_factor) == (6e-3, 0.3, 0.5), variant
    solver_checks.check_options(c.relaxation, c.cross_entropy,
                                c.neighborhood, c.solver_steps, "auto")
  assert voc.get_config("neighborhood=dense,relaxation=bl").relaxation == "bl"
  assert voc.DENSE_LAM == 6e-3
  # The grid recipe is untouched.
  c = voc.get_config("")
  assert (c.relaxation, c.lam, c.dense_scale_factor) == ("cd", 6.0, 1.0)
