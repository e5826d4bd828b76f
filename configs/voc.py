r"""PASCAL VOC 2012 + ScribbleSup, DeepLabV3+ on MobileNetV2: the paper's recipe.

Paper appendix C: DeepLabV3+ (output stride 16) on an ImageNet-pretrained
MobileNetV2, batch 12, crop 513, SGD (momentum 0.9, weight decay 5e-4, poly
0.9, ASPP/decoder lr x10), two stages of 60 epochs each over the 10,582
``train_aug`` images (52,910 steps at batch 12): stage 1 partial CE on the
scribbles at lr 0.007, stage 2 soft self-labeling at lr 0.0007 initialised
from stage 1, with H_CCE + P_CD on the 4-neighbourhood, eta 0.3, lambda 6,
sigma_rgb 9, 200 solver steps of size 0.075. Evaluation: full image, single
scale, 21-class mIoU on the 1,449 ``val`` images.

Prerequisites: the ``voc_scribble`` dataset prepared in ``--config.data_dir``
(``python -m potts_jax.data.prepare --dataset=voc_scribble ...``; the run
stops with that command if it is missing) and the ImageNet backbone converted
into ``weights/mobilenet_v2`` (``--config.model.pretrained_dir``)::

  python -m potts_jax.pretrained convert --arch mobilenet_v2 \
      --src mobilenet_v2-b0353104.pth --dst weights/mobilenet_v2

Run (both stages, in ``DIR/stage1`` and ``DIR/stage2``)::

  python -m potts_jax.main --config=configs/voc.py --workdir=DIR

Variants (``--config=configs/voc.py:VARIANT,...``):

* ``method=pce|gd|soft_sl|hard_sl|hard_sl_gc``: the stage-2 method (paper
  Table 4; ``hard_sl_gc`` labels by graph cut on the host, nn4/nn8 only);
* ``relaxation=bl|q|nq|cce|cd|lq``, ``cross_entropy=ce|rce|cce|q``,
  ``neighborhood=nn4|nn8|dense``: the loss (Tables 3, 4, Figure 4);
* ``length=1.0|0.8|0.5|0.3|0``: the scribble length ratio (Table 3's columns;
  dataset configs ``xml`` and ``xml_len<ratio>``);
* ``stage=both|1|2``: both stages (default), stage 1 alone (pCE, lr 0.007),
  or stage 2 alone (lr 0.0007) from ``--config.init_from=STAGE1_DIR``; stage 2
  without ``init_from`` starts from ImageNet ("no pretrain" in Table 5);
* ``batch=N``: batch size, with ``total_steps`` recomputed for 60 epochs;
* ``pretrained=false``: no ImageNet weights;
* ``runlocal``: tiny network and images, a few steps (checks a set-up).

With ``stages`` the learning rates live in the stage list, so change them
with ``stage=1`` / ``stage=2`` runs and ``--config.lr``.

Expected (paper, val mIoU, MobileNetV2, full-length scribbles): 71.22 for the
default H_CCE + P_CD (Table 3; 71.12 nq, 71.05 q, 71.21 lq, 67.41 cce, 67.24
bl); Table 4 on nn4: gd 67.0, hard_sl 69.6 (69.8 with H_CCE + P_Q), soft_sl
71.1 (P_Q); on dense: gd 69.5, hard_sl 63.1, soft_sl 67.9. Shorter scribbles
(``length``): Table 3, e.g. P_CD 70.93 / 67.84 / 65.52 / 59.04 at 0.8 / 0.5 /
0.3 / 0.
"""

import math

import ml_collections

from configs import common

TRAIN_IMAGES = 10_582  # train_aug (VOC 2012 train + SBD), paper appendix C.
EPOCHS = 60  # per stage.
STAGE1_LR = 0.007
STAGE2_LR = 0.0007
LENGTHS = (0.0, 0.3, 0.5, 0.8, 1.0)  # Table 3's scribble length ratios.

# The names the steps, losses and solver accept (potts_jax.steps.METHODS,
# potts.NAMES, losses.NAMES, neighbourhoods), checked here so that a typo in a
# variant fails when the config loads rather than after the data is opened.
METHODS = ("pce", "gd", "soft_sl", "hard_sl", "hard_sl_gc")
RELAXATIONS = ("bl", "q", "nq", "cce", "cd", "lq")
CROSS_ENTROPIES = ("ce", "rce", "cce", "q")
NEIGHBORHOODS = ("nn4", "nn8", "dense")
STAGES = ("both", "1", "2")


def check_choice(name: str, value, choices) -> None:
  """Raises ValueError unless ``value`` is one of ``choices``."""
  if value not in choices:
    raise ValueError(f"config variant {name}={value!r}; expected one of "
                     f"{list(choices)}")


def steps_for(epochs: float, images: int, batch_size: int) -> int:
  """Optimiser steps of ``epochs`` passes over ``images`` at ``batch_size``."""
  return math.ceil(epochs * images / batch_size)


def set_loss(c: ml_collections.ConfigDict, arg: ml_collections.ConfigDict
             ) -> None:
  """The self-labeling loss of ``arg`` (checked) into ``c``."""
  check_choice("method", arg.method, METHODS)
  check_choice("relaxation", arg.relaxation, RELAXATIONS)
  check_choice("cross_entropy", arg.cross_entropy, CROSS_ENTROPIES)
  check_choice("neighborhood", arg.neighborhood, NEIGHBORHOODS)
  if arg.method == "hard_sl_gc" and arg.neighborhood == "dense":
    raise ValueError("method=hard_sl_gc cuts a grid graph: use "
                     "neighborhood=nn4 or nn8, not dense")
  c.method = arg.method
  c.relaxation = arg.relaxation
  c.cross_entropy = arg.cross_entropy
  c.neighborhood = arg.neighborhood


def set_runlocal(c: ml_collections.ConfigDict) -> None:
  """A tiny network on small crops for a few steps (the data stays)."""
  c.crop_size = 65
  c.batch_size = 4
  c.eval_batch_size = 4
  c.model.width = 0.35
  c.model.channels = 16
  c.model.low_level_channels = 8
  c.model.pretrained_dir = ""
  c.solver_steps = 5
  c.total_steps = 3
  c.log_every = 1
  c.checkpoint_every = 2
  c.image_every = 2
  c.worker_count = 0


def set_stages(c: ml_collections.ConfigDict, stage: str, method: str,
               lr1: float, lr2: float) -> None:
  """Stage 1 pCE at ``lr1``, stage 2 ``method`` at ``lr2`` (appendix C).

  Args:
    c: the config; its ``method`` is the stage-2 method.
    stage: ``both`` (``c.stages`` lists the two), ``1`` (pCE alone at
      ``lr1``), ``2`` (``method`` alone at ``lr2``, from ``init_from``) or
      ``single`` (``method`` alone at ``lr1``: Table 6's single stage).
    method: the stage-2 method.
    lr1, lr2: the stages' initial learning rates.
  """
  if stage == "both":
    c.method = "pce"
    c.lr = lr1
    c.stages = ({"name": "stage1", "method": "pce", "lr": lr1},
                {"name": "stage2", "method": method, "lr": lr2})
  elif stage == "1":
    c.method = "pce"
    c.lr = lr1
  elif stage == "2":
    c.method = method
    c.lr = lr2
  elif stage == "single":
    c.method = method
    c.lr = lr1
  else:
    raise ValueError(f"config variant stage={stage!r}; expected both, 1, 2 "
                     "or single")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  arg = common.parse_arg(
      arg, method="soft_sl", relaxation="cd", cross_entropy="cce",
      neighborhood="nn4", stage="both", length=1.0, batch=12,
      pretrained=True, runlocal=False)
  check_choice("stage", arg.stage, STAGES)
  check_choice("length", arg.length, LENGTHS)
  c = common.get_config()
  c.lock()  # A key that common.get_config() lacks is an error.

  c.dataset = "voc_scribble"
  c.dataset_config = "xml" if arg.length == 1.0 else f"xml_len{arg.length:g}"
  c.num_classes = 21
  c.train_split = "train_aug"
  c.eval_split = "val"
  c.crop_size = 513
  c.scale_range = (0.5, 2.0)
  c.flip = True
  c.blur_prob = 0.5  # rloss's RandomGaussianBlur.
  c.eval_batch_size = 4
  # VOC images are at most 500 x 500: one shape for the whole val split (one
  # compilation, and equal host batches on multi-host runs).
  c.eval_pad_to = (512, 512)

  c.model.backbone = "mobilenet_v2"
  c.model.width = 1.0
  c.model.output_stride = 16
  c.model.pretrained_dir = "weights/mobilenet_v2" if arg.pretrained else ""

  c.batch_size = arg.batch
  c.total_steps = steps_for(EPOCHS, TRAIN_IMAGES, arg.batch)
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.poly_power = 0.9
  c.head_lr_mult = 10.0

  set_loss(c, arg)
  c.eta = 0.3
  c.lam = 6.0
  c.sigma_rgb = 9.0
  c.solver_steps = 200
  c.solver_step_size = 0.075

  c.log_every = 50
  c.checkpoint_every = 1000
  c.eval_every = 0
  c.name = (f"voc_{arg.method}_{arg.cross_entropy}_{arg.relaxation}_"
            f"{arg.neighborhood}_len{arg.length:g}")
  if arg.runlocal:
    set_runlocal(c)

  set_stages(c, arg.stage, arg.method, STAGE1_LR, STAGE2_LR)
  if arg.stage == "1":
    c.name = f"voc_pce_len{arg.length:g}"
  return c
