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
from potts_jax import solver  # noqa: E402
from potts_jax import steps  # noqa: E402
from potts_jax import train  # noqa: E402

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
  for stage in c.stages:  # Dotted keys (train.with_overrides).
    assert set(stage) <= set(DEFAULTS), set(stage) - set(DEFAULTS)
    assert stage["loss.method"] in common.METHODS
    train.with_overrides(c, stage)
  assert c.input.batch_size % 4 == 0 or "runlocal" not in variant
  assert c.loss.method in common.METHODS
  assert c.energy.relaxation in common.RELAXATIONS
  assert c.energy.neighborhood in common.NEIGHBORHOODS
  assert c.total_steps > 0 and c.name
  # What training checks before it starts. The dense filter takes quadratic
  # relaxations only: the configs without a dense recipe (all but voc's)
  # keep P_CD there, which training rejects at once, naming the key.
  if (c.energy.neighborhood == "dense" and c.energy.relaxation not in
      ("bl", "q") and c.loss.method != "pce"):
    with pytest.raises(ValueError, match="config.energy.relaxation"):
      steps.check_config(c)
  else:
    steps.check_config(c)


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
  with pytest.raises(AttributeError):
    c.optim.learning_rate = 0.1
  with pytest.raises(AttributeError):
    c.lr = 0.1  # The old flat keys are gone.
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
                        "--config.optim.lr=0.01",
                        "--config.input.data_dir=/tmp/tfds",
                        "--config.model.width=0.5",
                        "--config.solver.warm_start=coarse",
                        "--config.energy.lattice_capacity=4096",
                        "--config.eval.pad_to=(64, 64)"])
  assert (c.optim.lr, c.input.data_dir, c.model.width, c.loss.method) == (
      0.01, "/tmp/tfds", 0.5, "pce")
  assert (c.solver.warm_start, c.energy.lattice_capacity,
          tuple(c.eval.pad_to)) == ("coarse", 4096, (64, 64))
  with pytest.raises((AttributeError, flags.Error), match="lrr"):
    _load_with_flags([f"--config={path}", "--config.optim.lrr=0.01"])
  with pytest.raises((AttributeError, flags.Error), match="solver_steps"):
    _load_with_flags([f"--config={path}", "--config.solver_steps=5"])
  with pytest.raises(Exception, match="unknown config variant"):
    _load_with_flags([f"--config={path}:nonsense"])


def test_voc_is_the_papers_recipe():
  c = voc.get_config()
  assert (c.input.dataset, c.input.dataset_config, c.input.train_split,
          c.eval.split) == ("voc_scribble", "xml", "train_aug", "val")
  assert c.input.num_classes == 21
  assert (c.model.backbone, c.model.output_stride) == ("mobilenet_v2", 16)
  assert c.model.pretrained_dir == "weights/mobilenet_v2"
  assert (c.input.batch_size, c.input.crop_size) == (12, 513)
  assert c.total_steps == 52_910 == math.ceil(60 * 10_582 / 12)
  o = c.optim
  assert (o.momentum, o.weight_decay, o.poly_power, o.head_lr_mult) == (
      0.9, 5e-4, 0.9, 10.0)
  e = c.energy
  assert (e.cross_entropy, e.relaxation, e.neighborhood) == ("cce", "cd",
                                                             "nn4")
  assert (e.eta, e.lam, e.sigma_rgb) == (0.3, 6.0, 9.0)
  assert (c.solver.num_steps, c.solver.step_size) == (200, 0.075)
  assert c.solver.method == "gd"
  assert not c.input.full_supervision and c.eval.scales == (1.0,)
  assert not c.eval.flip
  # Two stages: pCE at 0.007, then soft SL at 0.0007 from stage 1.
  # Stage 1 takes the base lr, so --config.optim.lr sets it.
  assert [dict(s) for s in c.stages] == [
      {"name": "stage1", "loss.method": "pce"},
      {"name": "stage2", "loss.method": "soft_sl", "optim.lr": 0.0007}]
  assert c.optim.lr == 0.007
  s2 = c.stages[1]
  assert s2["optim.lr"] == pytest.approx(c.optim.lr / 10)
  assert "init_from" not in s2  # train: stage k starts from stage k - 1.


def test_voc_variants():
  one = voc.get_config("stage=1")
  assert (one.stages, one.loss.method, one.optim.lr) == ((), "pce", 0.007)
  two = voc.get_config("stage=2,method=hard_sl,relaxation=q")
  assert (two.stages, two.loss.method, two.optim.lr,
          two.energy.relaxation) == ((), "hard_sl", 0.0007, "q")
  assert voc.get_config("method=gd").stages[1]["loss.method"] == "gd"
  # Table 5's "no pretrain": soft SL from ImageNet at the stage-1 lr.
  single = voc_r101.get_config("stage=single")
  assert (single.stages, single.loss.method, single.optim.lr) == (
      (), "soft_sl", 0.007)
  assert single.model.pretrained_dir == "weights/resnet101"
  assert not single.init_from
  assert voc.get_config("length=0.5").input.dataset_config == "xml_len0.5"
  assert voc.get_config("length=0").input.dataset_config == "xml_len0"
  with pytest.raises(ValueError, match="length"):
    voc.get_config("length=0.4")
  b16 = voc.get_config("batch=16")
  assert (b16.input.batch_size, b16.total_steps) == (
      16, math.ceil(60 * 10582 / 16))
  assert voc.get_config("pretrained=false").model.pretrained_dir == ""
  local = voc.get_config("runlocal")
  assert local.total_steps <= 5 and local.solver.num_steps <= 10
  assert local.input.crop_size < 100 and local.model.pretrained_dir == ""
  assert local.input.batch_size % 4 == 0 and len(local.stages) == 2


def test_resnet101_and_block_configs():
  r101 = voc_r101.get_config()
  assert (r101.model.backbone, r101.model.pretrained_dir) == (
      "resnet101", "weights/resnet101")
  assert [s.get("optim.lr", r101.optim.lr) for s in r101.stages] == [
      0.007, 0.0007]
  assert (r101.input.batch_size, r101.input.crop_size,
          r101.energy.sigma_rgb) == (12, 513, 9.0)
  for module, dataset, classes, images in (
      (cityscapes, "cityscapes_block", 19, 2_975),
      (ade20k, "ade20k_block", 150, 20_210)):
    c = module.get_config()
    assert (c.input.dataset, c.input.dataset_config, c.input.num_classes) == (
        dataset, "block50", classes)
    assert module.TRAIN_IMAGES == images
    assert c.energy.sigma_rgb == 3.0  # Paper: 3 for Cityscapes and ADE20k.
    assert (c.energy.eta, c.energy.lam) == (0.3, 6.0)
    assert (c.energy.cross_entropy, c.energy.relaxation,
            c.energy.neighborhood) == ("cce", "cd", "nn4")
    assert c.model.backbone == "resnet101" and c.input.batch_size == 12
    assert c.stages == () and c.loss.method == "soft_sl"  # Single stage.
    assert c.total_steps == math.ceil(module.EPOCHS * images / 12)
    assert module.get_config("block=20").input.dataset_config == "block20"
    both = module.get_config("stage=both")
    assert [s.get("optim.lr", both.optim.lr) for s in both.stages] == [
        c.optim.lr, pytest.approx(c.optim.lr / 10)]
  assert cityscapes.get_config().input.crop_size == 769
  assert ade20k.get_config().input.crop_size == 513


def test_camvid_reads_the_shared_folder():
  c = camvid.get_config()
  assert c.input.dataset == "folder" and c.input.num_classes == 11
  assert c.input.folder_root == str(REPO.parent / "shared" / "data" /
                                    "camvid")
  assert c.input.scribble_set == "synthetic"
  assert c.total_steps == math.ceil(60 * 367 / 12)
  assert [s.get("optim.lr", c.optim.lr) for s in c.stages] == [0.007, 0.0007]
  assert camvid.get_config("eval=val").eval.split == "val"
  c2 = _load_with_flags([f"--config={REPO / 'configs' / 'camvid.py'}",
                         "--config.input.folder_root=/data/camvid",
                         "--config.input.data_dir=/tmp/tfds"])
  assert (c2.input.folder_root, c2.input.data_dir) == ("/data/camvid",
                                                       "/tmp/tfds")


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
                   "--variant", "batch=16", "--", "--config.input.data_dir=/d")
  assert len(lines) == 1 + 6
  assert all(l.endswith("--config.input.data_dir=/d") for l in lines)
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
  from potts_jax import evaluation  # pylint: disable=g-import-not-at-top
  for module in (voc, voc_r101):
    c = module.get_config("")
    assert (c.eval.protocol, c.eval.crop_size, tuple(c.eval.pad_to)) == (
        "full", 513, (512, 512))
  # Their frames all have one size: full pads nothing, as before.
  assert camvid_small.get_config("").eval.protocol == "full"
  assert demo.get_config("").eval.protocol == "full"
  assert common.get_config().eval.protocol in evaluation.EVAL_PROTOCOLS


def test_voc_dense_is_the_papers_dn_self_labeling_loss():
  """neighborhood=dense: H_CCE + P_Q, σ_xy 100, σ_rgb 9, λ 6e-3 (the 4-NN
  λ 6 per unit of a pixel's affinity; voc.set_dense), runnable as is."""
  from potts_jax.solver import checks  # pylint: disable=g-import-not-at-top
  for variant in ("neighborhood=dense", "neighborhood=dense,relaxation=q",
                  "neighborhood=dense,stage=2,method=hard_sl"):
    e = voc.get_config(variant).energy
    assert (e.relaxation, e.cross_entropy, e.sigma_xy, e.sigma_rgb) == (
        "q", "cce", 100.0, 9.0), variant
    assert (e.lam, e.eta, e.scale_factor) == (6e-3, 0.3, 0.5), variant
    checks.check(*steps.energy_and_options(voc.get_config(variant)))
  assert voc.get_config(
      "neighborhood=dense,relaxation=bl").energy.relaxation == "bl"
  assert voc.DENSE_LAM == 6e-3
  # The grid recipe is untouched.
  e = voc.get_config("").energy
  assert (e.relaxation, e.lam, e.scale_factor) == ("cd", 6.0, 1.0)


def test_energy_and_solver_sections_are_the_solvers_defaults():
  """Each solver default is written once, in potts_jax/solver/options.py."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  c = common.get_config()
  energy, options = steps.energy_and_options(c)
  assert energy == dataclasses.replace(solver.EnergyParams(),
                                       lattice_capacity=0)
  assert options == dataclasses.replace(solver.SolverOptions(), warm_start="")
  assert set(c.solver) == set(solver.options.SOLVER_FIELDS) - {"optimizer"}
  assert set(c.energy) == set(solver.options.ENERGY_FIELDS)
  # What the solver runs on them: the same as on its own defaults.
  assert solver.checks.check(energy, options) == solver.checks.check(
      solver.EnergyParams(), solver.SolverOptions())


def test_stage_overrides_use_dotted_keys_and_reject_unknown_ones():
  c = voc.get_config("runlocal")
  stage = train.with_overrides(c, {"loss.method": "gd", "optim.lr": 0.5,
                                   "total_steps": 7})
  assert (stage.loss.method, stage.optim.lr, stage.total_steps) == (
      "gd", 0.5, 7)
  assert (c.loss.method, c.optim.lr) == ("pce", 0.007)  # A copy.
  with pytest.raises(AttributeError):
    stage.optim.lrr = 1.0  # Locked.
  with pytest.raises(ValueError, match="'method'.*did you mean 'loss.method'"):
    train.with_overrides(c, {"method": "gd"})
  with pytest.raises(ValueError, match="'optim.lrr'"):
    train.with_overrides(c, {"optim.lrr": 0.1})
  with pytest.raises(ValueError, match="'lr'.*'optim.lr'"):
    train.with_overrides(c, {"lr": 0.1})
  with c.unlocked():
    c.stages = ({"name": "s1", "optim.lr": 0.1},
                {"name": "s2", "solver.num_stepz": 3})
  with pytest.raises(ValueError, match="stage 's2'.*'solver.num_stepz'"):
    train.train_and_evaluate(c, "/nonexistent")


@pytest.mark.parametrize("key,value,match", [
    ("solver.warm_start", "fine", "config.solver.warm_start"),
    ("energy.lattice_capacity", -1, "config.energy.lattice_capacity"),
    ("solver.kernel", "cuda", "config.solver.kernel"),
    ("loss.normalization", "sum", "config.loss.normalization"),
])
def test_bad_solver_options_name_the_key_before_training(key, value, match):
  """train checks every stage first: stage 2's error before stage 1 runs."""
  c = voc.get_config("runlocal")
  section, name = key.split(".")
  with c.unlocked():
    c.stages = (c.stages[0], dict(c.stages[1], **{key: value}))
  with pytest.raises(ValueError, match=f"stage 'stage2': {match}"):
    train.train_and_evaluate(c, "/nonexistent")
  c = voc.get_config("runlocal,stage=2")
  c[section][name] = value
  with pytest.raises(ValueError, match=match):
    steps.check_config(c)


def test_configs_share_helpers_only_through_common():
  """No config imports another, but voc_r101 (a variant of voc)."""
  import re  # pylint: disable=g-import-not-at-top
  for path in sorted((REPO / "configs").glob("*.py")):
    imported = set(re.findall(r"^from configs import (\w+)",
                              path.read_text(), re.M))
    allowed = {"common"} | ({"voc"} if path.stem == "voc_r101" else set())
    assert imported <= allowed, (path.name, imported)
